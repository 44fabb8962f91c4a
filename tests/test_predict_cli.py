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
