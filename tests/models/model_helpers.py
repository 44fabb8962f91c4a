"""What the model tests share: a tiny ViT, a small three-level hierarchy, random batches in the pipeline's format.

Imported as `tests.models.model_helpers`, so other test packages' helpers can use it too.
"""

import numpy as np
import torch

from geosurge.geo.geocells import GeocellHierarchy

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}


def small_hierarchy() -> GeocellHierarchy:
    """Three levels over 1,500 points around five cities."""
    rng = np.random.default_rng(0)
    centres = np.array([[48.8, 2.3], [40.7, -74.0], [35.7, 139.7], [-33.9, 151.2], [-23.5, -46.6]])
    pts = centres[rng.integers(0, len(centres), 1500)] + rng.normal(0, 3, (1500, 2))
    return GeocellHierarchy.build(pts[:, 0], pts[:, 1], (400, 150, 40), 5)


def random_batch(h: GeocellHierarchy, n: int = 6, grid: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch as the trainer feeds it: uint8 images [n,32,32,3], label maps [n,grid,grid], lat/lon at finest
    cell coordinates, and those points' cells at every level."""
    rng = np.random.default_rng(seed)
    lat, lon = h.cell_coordinates(h.num_levels - 1)
    idx = rng.integers(0, len(lat), n)
    return {
        "image": torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
        "label_map": torch.from_numpy(rng.integers(0, 150, (n, grid, grid), dtype=np.uint8)),
        "lat": torch.from_numpy(lat[idx]),
        "lon": torch.from_numpy(lon[idx]),
        "cells": torch.from_numpy(h.assign(lat[idx], lon[idx], nearest=True)),  # a cell at every level
    }
