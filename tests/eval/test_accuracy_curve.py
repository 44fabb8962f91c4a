"""The accuracy-against-distance figure: a valid PNG, one curve per model, errors checked."""

import numpy as np
import pytest
from PIL import Image

from geosurge.eval.plots import accuracy_curve

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_writes_a_png_with_one_curve_per_model(tmp_path):
    rng = np.random.default_rng(0)
    one = accuracy_curve(tmp_path / "one.png", rng.lognormal(6, 2, 50))
    two = accuracy_curve(tmp_path / "two.png", {"challenger v2": rng.lognormal(5, 2, 80),
                                                "champion v1": rng.lognormal(8, 1, 80)}, title="t")
    for path in (one, two):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 400 and img.height > 250
    # a second curve adds pixels of a second colour: the two figures differ
    assert np.asarray(Image.open(one).convert("RGB")).tobytes() != np.asarray(Image.open(two).convert("RGB")).tobytes()


@pytest.mark.parametrize("errors", [[], [1.0, np.nan], {}])
def test_rejects_empty_or_non_finite_errors(tmp_path, errors):
    with pytest.raises(ValueError):
        accuracy_curve(tmp_path / "x.png", errors)
