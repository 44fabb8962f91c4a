"""Training-split augmentation of model batches (never applied to val/eval): shifts by whole label-grid cells and
mild colour jitter. No horizontal flip on purpose (see `AugmentConfig`)."""

from __future__ import annotations

import numpy as np
import ray

from geosurge.config import AugmentConfig


def augmented(ds: ray.data.Dataset, config: AugmentConfig) -> ray.data.Dataset:
    """`ds` (model batches) with augmentation applied when `config.enabled`."""
    if not config.enabled:
        return ds
    return ds.map_batches(augment_batch, fn_kwargs={"config": config}, batch_format="numpy")


def augment_batch(
    batch: dict[str, np.ndarray], config: AugmentConfig, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Ray Data UDF for the training split: a random shift by whole label-grid cells, applied identically to the
    image and its label map (edges replicated), then colour jitter (brightness, contrast, saturation) per image.

    Every call draws fresh randomness (OS entropy unless `rng` is given), so each epoch sees new augmentations."""
    rng = rng or np.random.default_rng()
    image, label_map = batch["image"], batch["label_map"]
    n, height, width = image.shape[:3]
    grid_h, grid_w = label_map.shape[1:]
    out = dict(batch)
    if config.max_shift_cells > 0:
        s = config.max_shift_cells
        shifts = rng.integers(-s, s + 1, size=(n, 2))  # (rows, cols) in label cells
        shifted_images, shifted_maps = np.empty_like(image), np.empty_like(label_map)
        for i, (dy, dx) in enumerate(shifts):
            # output cell j shows input cell j - d; pixels move by whole cells (exact when the image size is a
            # multiple of the grid, as ingest makes it), so every label stays over its own patch
            rows = np.clip(np.arange(height) - dy * height // grid_h, 0, height - 1)
            cols = np.clip(np.arange(width) - dx * width // grid_w, 0, width - 1)
            shifted_images[i] = image[i][rows][:, cols]
            label_rows = np.clip(np.arange(grid_h) - dy, 0, grid_h - 1)
            label_cols = np.clip(np.arange(grid_w) - dx, 0, grid_w - 1)
            shifted_maps[i] = label_map[i][label_rows][:, label_cols]
        image, out["label_map"] = shifted_images, shifted_maps
    if config.brightness or config.contrast or config.saturation:
        x = image.astype(np.float32)

        def factors(amount: float) -> np.ndarray:
            return rng.uniform(1 - amount, 1 + amount, size=(n, 1, 1, 1)).astype(np.float32)

        x *= factors(config.brightness)
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)  # [n, H, W]
        mean = gray.mean(axis=(1, 2)).reshape(n, 1, 1, 1)
        x = (x - mean) * factors(config.contrast) + mean
        gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        x = (x - gray) * factors(config.saturation) + gray
        image = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    out["image"] = image
    return out
