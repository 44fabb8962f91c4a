"""Pictures of belief (geosurge.eval.plots.belief_map, error_region_map) and the beliefs behind them
(GeoLocator.beliefs_bytes): colours are read back from the PNG at the map coordinates where they must be."""

import h3
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import LogNorm
from PIL import Image

from geosurge.eval.plots import BELIEF_DECADES, BeliefPanel, belief_map, error_region_map

YELLOW, TEAL, PURPLE = (0xFD, 0xE7, 0x25), (0x21, 0x91, 0x8C), (0x44, 0x01, 0x54)  # viridis at 1, 0.5, 0
TRUTH_RED = (0xD7, 0x19, 0x1C)


class MapPixels:
    """A saved single-panel world map, read back: `at(lat, lon)` is the RGB pixel there. The map's frame is found
    from its land and sea colours (the equirectangular axes span -180..180, -90..90)."""

    def __init__(self, path, land, sea):
        with Image.open(path) as png:
            self.rgb = np.asarray(png.convert("RGB")).astype(int)
        base = np.zeros(self.rgb.shape[:2], bool)
        for colour in (land, sea):
            base |= (np.abs(self.rgb - np.array(colour)).sum(-1) < 6)
        rows, cols = np.flatnonzero(base.any(1)), np.flatnonzero(base.any(0))
        self.top, self.bottom, self.left, self.right = rows[0], rows[-1], cols[0], cols[-1]

    def at(self, lat, lon):
        x = self.left + (lon + 180) / 360 * (self.right - self.left)
        y = self.top + (90 - lat) / 180 * (self.bottom - self.top)
        return tuple(self.rgb[round(y), round(x)])

    def map_area(self):
        return self.rgb[self.top:self.bottom + 1, self.left:self.right + 1].reshape(-1, 3)


def near(pixel, colour, tol=40):
    return int(np.abs(np.array(pixel) - np.array(colour)).sum()) < tol


def share(pixels, colour, tol=40):
    return float((np.abs(pixels - np.array(colour)).sum(-1) < tol).mean())


def belief_pixels(path):
    return MapPixels(path, land=(0xE6, 0xE2, 0xD6), sea=(0xF3, 0xF6, 0xF9))


def test_cells_are_coloured_by_log_probability_and_faint_ones_left_out(tmp_path):
    places = {"best": (20.0, -40.0), "middle": (-30.0, 60.0), "faint": (40.0, 100.0), "top2": (-50.0, -100.0)}
    cells = [h3.latlng_to_cell(lat, lon, 0) for lat, lon in places.values()]
    centres = np.array([h3.cell_to_latlng(c) for c in cells])
    mid = 10.0 ** -(BELIEF_DECADES / 2)  # the middle of the colour scale
    prob = np.array([0.5, 0.5 * mid, 0.5 * 10.0 ** -(BELIEF_DECADES + 2), 0.01])
    path = belief_map(tmp_path / "b.png", BeliefPanel(centres[:, 0], centres[:, 1], prob, cells, top_k=1,
                                                       true_lat=-60.0, true_lon=150.0, title="photo"))
    px = belief_pixels(path)
    # 4 degrees off the centre: the top-1 marker sits on the best cell's centre
    assert near(px.at(centres[0, 0] + 4, centres[0, 1] + 4), YELLOW)
    assert near(px.at(centres[1, 0] + 4, centres[1, 1] + 4), TEAL)
    faint = px.at(centres[2, 0], centres[2, 1])
    assert near(faint, (0xE6, 0xE2, 0xD6), 6) or near(faint, (0xF3, 0xF6, 0xF9), 6)  # below the scale: not drawn
    # the top-1 marker: white beside its number
    assert near(px.at(centres[0, 0], centres[0, 1] + 1.8), (255, 255, 255))
    assert not near(px.at(centres[3, 0], centres[3, 1] + 1.8), (255, 255, 255))  # top_k=1: the second is not marked
    assert near(px.at(-60.0, 150.0), TRUTH_RED, 60)
    assert share(px.map_area(), PURPLE) == 0  # nothing at the bottom of the scale was drawn


def test_a_cell_across_the_antimeridian_is_drawn_on_both_edges(tmp_path):
    cell = h3.latlng_to_cell(14.0, 179.9, 0)  # spans about 172°E to 175.5°W
    ring = np.asarray(h3.cell_to_boundary(cell))
    assert (ring[:, 1] > 0).any() and (ring[:, 1] < 0).any()  # the test needs a cell that crosses
    path = belief_map(tmp_path / "a.png", BeliefPanel([14.0], [179.9], [1.0], [cell], top_k=0))
    px = belief_pixels(path)
    assert near(px.at(14.0, 177.0), YELLOW) and near(px.at(14.0, -178.0), YELLOW)
    assert not near(px.at(14.0, 0.0), YELLOW)  # not smeared across the map


def test_gallery_points_and_several_images(tmp_path):
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 70, 5000), rng.uniform(-180, 180, 5000)
    prob = np.exp(-((lat - 10) ** 2 + (lon - 20) ** 2) / 200)
    path = belief_map(tmp_path / "g.png", [BeliefPanel(lat, lon, prob / prob.sum(), None, title=str(i))
                                           for i in range(3)])
    with Image.open(path) as png:
        rgb = np.asarray(png.convert("RGB")).astype(int)
        assert png.width > 1800 and png.height > 1000  # two columns, two rows of maps
    assert share(rgb.reshape(-1, 3), YELLOW) > 0 and share(rgb.reshape(-1, 3), TEAL) > 0


def test_belief_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="one lat, lon and probability"):
        belief_map(tmp_path / "x.png", BeliefPanel([1.0, 2.0], [1.0], [0.5, 0.5]))
    with pytest.raises(ValueError, match="cells for"):
        belief_map(tmp_path / "x.png", BeliefPanel([1.0], [1.0], [1.0], ["8a2a1072b59ffff", "8a2a1072b59ffff"]))
    with pytest.raises(ValueError, match="not all zero"):
        belief_map(tmp_path / "x.png", BeliefPanel([1.0], [1.0], [0.0]))
    with pytest.raises(ValueError, match="both true_lat and true_lon"):
        belief_map(tmp_path / "x.png", BeliefPanel([1.0], [1.0], [1.0], true_lat=3.0))
    with pytest.raises(ValueError, match="at least one panel"):
        belief_map(tmp_path / "x.png", [])


def test_error_region_map_colours_each_region_by_its_median(tmp_path):
    # two regions: near Paris the errors are 5, 10, 400 km (median 10); near Sydney 3000 and 9000 (median 6000)
    lat = [48.8, 48.9, 49.0, -33.9, -33.8]
    lon = [2.3, 2.4, 2.2, 151.2, 151.1]
    errors = [5.0, 400.0, 10.0, 3000.0, 9000.0]
    path = error_region_map(tmp_path / "r.png", lat, lon, errors)
    px = MapPixels(path, land=(0xCF, 0xCA, 0xBB), sea=(0xDC, 0xE9, 0xF5))
    norm, cmap = LogNorm(1.0, 20_037.5), plt.get_cmap("RdYlGn_r")

    def expected(median, under):  # alpha 0.85 over the base map
        return 0.85 * np.array(cmap(norm(median))[:3]) * 255 + 0.15 * np.array(under)

    paris = h3.cell_to_latlng(h3.latlng_to_cell(48.8, 2.3, 0))
    sydney = h3.cell_to_latlng(h3.latlng_to_cell(-33.9, 151.2, 0))
    at_paris, at_sydney = px.at(paris[0] + 5, paris[1]), px.at(sydney[0] + 5, sydney[1])  # beside the counts
    assert any(near(at_paris, expected(10.0, u), 30) for u in ((0xCF, 0xCA, 0xBB), (0xDC, 0xE9, 0xF5)))
    assert any(near(at_sydney, expected(6000.0, u), 30) for u in ((0xCF, 0xCA, 0xBB), (0xDC, 0xE9, 0xF5)))
    assert near(px.at(10.0, -110.0), (0xDC, 0xE9, 0xF5), 6)  # no image there: the plain sea
    with pytest.raises(ValueError, match="one lat, lon and error per image"):
        error_region_map(tmp_path / "x.png", [1.0], [1.0, 2.0], [3.0])


def test_a_locator_belief_holds_every_candidate_and_its_best_are_the_top_k(tmp_path):
    from geosurge.models import create_model
    from geosurge.segmentation.segmenter import Segmenter
    from geosurge.serving import GeoLocator, write_bundle
    from tests.models.model_helpers import small_hierarchy
    from tests.tracking.registry_helpers import photo_bytes, tiny_config

    config = tiny_config(tmp_path, "sqlite:///unused.db")
    hierarchy = small_hierarchy()
    torch.manual_seed(0)
    state = create_model(config.model, hierarchy).state_dict()
    bundle = write_bundle(tmp_path / "bundle", state, config, hierarchy, Segmenter("random", config.ingest.label_grid))
    locator = GeoLocator.from_artifacts(bundle)
    photos = [photo_bytes(1), photo_bytes(2)]
    beliefs = locator.beliefs_bytes(photos)
    predictions = locator.predict_bytes(photos, k=3)
    finest = hierarchy.num_cells[-1]
    for belief, prediction in zip(beliefs, predictions):
        assert len(belief.prob) == len(belief.lat) == len(belief.cell) == len(set(belief.cell)) == finest
        assert (np.diff(belief.prob) <= 0).all() and (belief.prob > 0).all()
        assert belief.cell[:3] == prediction.cell
        np.testing.assert_allclose(belief.prob[:3], prediction.score, rtol=1e-5)
        np.testing.assert_allclose(belief.lat[:3], prediction.lat, rtol=1e-6)
    assert beliefs[0].cell != beliefs[1].cell or not np.allclose(beliefs[0].prob, beliefs[1].prob)
