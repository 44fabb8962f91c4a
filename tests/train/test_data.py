"""Shard rows → model batches: images, label maps, geocells at every level, and scene labels when present."""

import numpy as np
import pyarrow as pa

from geosurge.config import AugmentConfig
from geosurge.data.images import encode_jpeg
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.train.data import augment_batch, to_model_batch


def _shard_rows(scene3=None) -> pa.Table:
    rows = {
        "image_id": ["a", "b"],
        "lat": [48.85, 40.71],
        "lon": [2.35, -74.0],
        "image": [encode_jpeg(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)],
        "label_map": [bytes([2] * 4), bytes([1] * 4)],
        "label_grid": [2, 2],
    }
    if scene3 is not None:
        rows["scene3"] = scene3
    return pa.table(rows)


def test_batch_has_images_label_maps_and_cells_at_every_level():
    rng = np.random.default_rng(0)
    lat = np.r_[rng.normal(48.85, 1, 200), rng.normal(40.71, 1, 200)]
    lon = np.r_[rng.normal(2.35, 1, 200), rng.normal(-74.0, 1, 200)]
    hierarchy = GeocellHierarchy.build(lat, lon, (300, 100), 5)
    out = to_model_batch(_shard_rows(), hierarchy)
    assert out["image"].shape == (2, 8, 8, 3) and out["image"].dtype == np.uint8
    assert out["label_map"].tolist() == [[[2, 2], [2, 2]], [[1, 1], [1, 1]]]
    assert (out["cells"] == hierarchy.assign(out["lat"], out["lon"])).all()
    assert "scene" not in out


def test_scene_labels_pass_through_with_missing_ones_marked_unknown():
    out = to_model_batch(_shard_rows(scene3=pa.array([2, None], pa.int64())))
    assert out["scene"].tolist() == [2, -1]


def _patch_coded_batch(n: int = 64, size: int = 16, grid: int = 4) -> dict[str, np.ndarray]:
    """Images whose every label-grid cell is one flat colour that encodes the cell's label (label × 10)."""
    labels = np.arange(grid * grid, dtype=np.uint8).reshape(grid, grid)
    label_map = np.broadcast_to(labels, (n, grid, grid)).copy()
    patch = size // grid
    image = np.repeat(np.repeat(label_map * 10, patch, axis=1), patch, axis=2)[..., None].repeat(3, axis=3)
    return {"image": image, "label_map": label_map, "lat": np.zeros(n), "lon": np.zeros(n),
            "cells": np.zeros((n, 2), np.int64)}


def test_shift_moves_image_and_label_map_together_by_whole_cells():
    batch = _patch_coded_batch()
    out = augment_batch(batch, AugmentConfig(max_shift_cells=1, brightness=0, contrast=0, saturation=0),
                        np.random.default_rng(0))
    patch = 16 // 4
    # every output patch is still one flat colour, and it is the colour of the label the map says is there
    expected = np.repeat(np.repeat(out["label_map"] * 10, patch, axis=1), patch, axis=2)
    assert (out["image"] == expected[..., None]).all()
    shifted = (out["label_map"] != batch["label_map"]).any(axis=(1, 2))
    assert 0.5 < shifted.mean() < 1  # most images moved (8 of 9 shifts do), some did not
    assert (out["cells"] == batch["cells"]).all() and out["image"].dtype == np.uint8


def test_colour_jitter_changes_pixels_but_never_labels_and_off_means_untouched():
    rng = np.random.default_rng(1)
    batch = {"image": rng.integers(40, 200, (8, 16, 16, 3), dtype=np.uint8),
             "label_map": rng.integers(0, 150, (8, 4, 4), dtype=np.uint8)}
    out = augment_batch(batch, AugmentConfig(max_shift_cells=0, brightness=0.3, contrast=0.3, saturation=0.3), rng)
    assert (out["label_map"] == batch["label_map"]).all()
    change = np.abs(out["image"].astype(int) - batch["image"]).mean(axis=(1, 2, 3))
    assert (change > 1).all() and (change < 80).all()
    same = augment_batch(batch, AugmentConfig(max_shift_cells=0, brightness=0, contrast=0, saturation=0), rng)
    assert (same["image"] == batch["image"]).all()


def test_cells_precomputed_at_ingest_are_used_without_a_hierarchy():
    rows = _shard_rows().append_column("cells", pa.array([[0, 3], [1, 7]], pa.list_(pa.int64())))
    assert to_model_batch(rows)["cells"].tolist() == [[0, 3], [1, 7]]
