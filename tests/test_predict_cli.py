"""`geosurge predict`, run as a user runs it (the console script), against a model in a real MLflow registry."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.tracking.registry_helpers import (
    photo_bytes,
    register_tiny,
    tiny_config,
    tracking_uri,
)

GEOSURGE = str(Path(sys.executable).with_name("geosurge"))
ROW = re.compile(r"^\s+(\d+)\s+(-?\d+\.\d{4})\s+(-?\d+\.\d{4})\s+(\S+)\s+(.+), ([A-Z]{2}) \((\d+) km away\)$")


def geosurge(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([GEOSURGE, *args], check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def champion(mlflow_server, tmp_path_factory):
    """A tiny random-init model registered as `geosurge` with the alias `champion` (the command's default)."""
    config = tiny_config(tmp_path_factory.mktemp("cli_model"), mlflow_server, ["tracking.alias=champion"])
    model_uri, _ = register_tiny(config)
    assert model_uri == "models:/geosurge@champion"
    return mlflow_server


@pytest.mark.slow
def test_predict_prints_top_k_places_and_draws_a_map(champion, tmp_path):
    import mlflow

    photos = [tmp_path / "harbour.jpg", tmp_path / "street.png"]
    photos[0].write_bytes(photo_bytes(11))
    Image.open(io.BytesIO(photo_bytes(12))).save(photos[1])  # a PNG too
    out = geosurge("predict", *map(str, photos), "--tracking-uri", champion, "--k", "3",
                   "--map", str(tmp_path / "map.png"))
    assert out.returncode == 0, out.stderr[-3000:]

    blocks = out.stdout.split(f"{photos[1]}\n")
    assert blocks[0].startswith(f"{photos[0]}\n") and len(blocks) == 2
    with tracking_uri(champion):  # what the command printed is what the registered model answers
        expected = mlflow.pyfunc.load_model("models:/geosurge@champion").predict(
            [p.read_bytes() for p in photos], params={"k": 3})
    for block, prediction in zip(blocks, expected):
        rows = [ROW.match(line) for line in block.splitlines() if ROW.match(line)]
        assert [int(r.group(1)) for r in rows] == [1, 2, 3]
        for row, c in zip(rows, prediction.top_k):
            assert (float(row.group(2)), float(row.group(3))) == (round(c.lat, 4), round(c.lon, 4))
            assert row.group(5).startswith(c.place.name) and row.group(6) == c.place.country_code

    assert f"map: {tmp_path / 'map.png'}" in out.stdout
    with Image.open(tmp_path / "map.png") as png:
        assert png.format == "PNG" and png.width > 800 and png.height > 400


def test_missing_and_non_image_photos_are_named(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a photo")
    out = geosurge("predict", str(tmp_path / "nowhere.jpg"), str(tmp_path / "notes.jpg"), timeout=120)
    assert out.returncode == 2
    assert f"{tmp_path / 'nowhere.jpg'}: no such file" in out.stderr
    assert f"{tmp_path / 'notes.jpg'}: not a usable image (not_an_image" in out.stderr
    assert out.stdout == ""


def test_an_unknown_model_is_a_clear_error(mlflow_server, tmp_path):
    (tmp_path / "p.jpg").write_bytes(photo_bytes(1))
    out = geosurge("predict", str(tmp_path / "p.jpg"), "--model", "models:/no_such_model@champion",
                   "--tracking-uri", mlflow_server, timeout=300)
    assert out.returncode == 2
    assert "cannot load model 'models:/no_such_model@champion'" in out.stderr
    assert f"from tracking URI {mlflow_server}" in out.stderr
    assert re.search(r"name=no_such_model not found", out.stderr)  # MLflow's own reason follows


def test_k_must_be_positive(tmp_path):
    out = geosurge("predict", "x.jpg", "--k", "0", timeout=120)
    assert out.returncode == 2 and "must be at least 1" in out.stderr


@pytest.mark.slow
def test_the_map_draws_the_belief_and_the_truth(champion, tmp_path):
    import numpy as np

    from tests.eval.test_belief_map import TRUTH_RED, YELLOW, share

    photo = tmp_path / "harbour.jpg"
    photo.write_bytes(photo_bytes(11))
    out = geosurge("predict", str(photo), "--tracking-uri", champion, "--k", "3", "--truth=-33.8568,151.2153",
                   "--map", str(tmp_path / "belief.png"))
    assert out.returncode == 0, out.stderr[-3000:]
    (top,) = [ROW.match(line) for line in out.stdout.splitlines() if ROW.match(line) and ROW.match(line).group(1) == "1"]
    from geosurge.geo.distance import haversine_km

    error = float(haversine_km(float(top.group(2)), float(top.group(3)), -33.8568, 151.2153))
    assert f"truth -33.8568, 151.2153: the top place is {error:,.0f} km from it" in out.stdout
    with Image.open(tmp_path / "belief.png") as png:
        rgb = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    assert share(rgb, TRUTH_RED) > 0 and share(rgb, YELLOW) > 0  # the star, and the likeliest cells


def test_truth_must_be_one_coordinate_per_photo(tmp_path):
    (tmp_path / "p.jpg").write_bytes(photo_bytes(1))
    out = geosurge("predict", str(tmp_path / "p.jpg"), "--truth", "95,0", timeout=120)
    assert out.returncode == 2 and "latitude must be in [-90, 90]" in out.stderr
    out = geosurge("predict", str(tmp_path / "p.jpg"), "--truth", "1,2", "--truth", "3,4", timeout=120)
    assert out.returncode == 2 and "--truth is given 2 time(s) for 1 photo(s)" in out.stderr


@pytest.mark.slow
def test_unreadable_photos_are_reported_and_the_rest_still_predicted(champion, tmp_path):
    good = tmp_path / "harbour.jpg"
    good.write_bytes(photo_bytes(11))
    (tmp_path / "notes.jpg").write_text("not a photo")
    out = geosurge("predict", str(tmp_path / "nowhere.jpg"), str(good), str(tmp_path / "notes.jpg"),
                   "--tracking-uri", champion, "--k", "2")
    assert out.returncode == 1, out.stderr[-3000:]  # some photos failed, the others were predicted
    missing, unreadable = out.stderr.splitlines()
    assert missing == f"geosurge predict: error: {tmp_path / 'nowhere.jpg'}: no such file"
    assert unreadable.startswith(f"geosurge predict: error: {tmp_path / 'notes.jpg'}: not a usable image (not_an_image")
    assert out.stdout.startswith(f"{good}\n")
    assert [int(m.group(1)) for m in map(ROW.match, out.stdout.splitlines()) if m] == [1, 2]
