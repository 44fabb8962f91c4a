"""The world map (geosurge.eval.plots.world_map): land from global-land-mask, predictions, truth, the links."""

import numpy as np
import pytest
from PIL import Image

from geosurge.eval.plots import LAND_MASK_STEP, world_map
from geosurge.geo.land_mask import land_grid


def test_land_grid_is_the_package_mask_north_up():
    grid = land_grid(LAND_MASK_STEP)
    assert grid.shape == (720, 1440)  # 0.25°
    def at(lat, lon):
        return grid[int((90 - lat) * 4), int((lon + 180) * 4)]
    assert at(48.85, 2.35) and at(-25.0, 134.0) and at(40.0, -100.0)  # Paris, central Australia, Kansas
    assert not at(0.0, -30.0) and not at(-40.0, -120.0) and not at(30.0, 160.0)  # Atlantic, Pacific
    assert 0.25 < grid.mean() < 0.36  # land share of the equirectangular grid (Antarctica is stretched)


def test_world_map_draws_predictions_truth_and_links(tmp_path):
    path = world_map(tmp_path / "maps" / "m.png", [48.8, -33.9, -17.0], [2.3, 151.2, 178.0],
                     true_lat=[51.5, -37.8, -14.0], true_lon=[-0.1, 145.0, -171.0], labels=["a", "", "c"], title="t")
    assert path == tmp_path / "maps" / "m.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > 900
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    def share(rgb):
        return (np.abs(pixels - np.array(rgb)).sum(1) < 60).mean()
    assert share((0xC5, 0x1B, 0x7D)) > 0  # prediction markers
    assert share((0x1B, 0x78, 0x37)) > 0  # truth markers
    assert share((0xCF, 0xCA, 0xBB)) > 0.1 and share((0xDC, 0xE9, 0xF5)) > 0.2  # land and sea

    only_predictions = world_map(tmp_path / "p.png", [10.0], [20.0])
    with Image.open(only_predictions) as png:
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    assert share((0x1B, 0x78, 0x37)) == 0  # no truth given, none drawn


def test_world_map_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        world_map(tmp_path / "x.png", [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one coordinate per prediction"):
        world_map(tmp_path / "x.png", [1.0], [1.0], true_lat=[1.0, 2.0], true_lon=[1.0, 2.0])
    with pytest.raises(ValueError, match="labels"):
        world_map(tmp_path / "x.png", [1.0], [1.0], labels=["a", "b"])
