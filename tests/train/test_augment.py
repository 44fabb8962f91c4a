"""Training-split augmentation: image and label map shift together by whole cells; colour jitter never touches labels."""

import numpy as np

from geosurge.config import AugmentConfig
from geosurge.train.augment import augment_batch


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
