"""Shards → model batches: decode JPEG bytes and label maps, attach geocell labels for every level, and (training
split only) augment images and label maps together."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from geosurge.config import AugmentConfig
from geosurge.data import storage
from geosurge.data.images import decode_jpeg
from geosurge.geo.geocells import GeocellHierarchy


def read_split(shards_uri: str, split: str, s3: storage.S3Config | None = None) -> ray.data.Dataset:
    fs, path = storage.resolve(shards_uri, s3)
    ds = ray.data.read_parquet(path, filesystem=fs)
    return ds.filter(expr=f"split == '{split}'")


def model_dataset(
    shards_uri: str,
    split: str,
    hierarchy: GeocellHierarchy,
    s3: storage.S3Config | None = None,
    augment: AugmentConfig | None = None,
) -> ray.data.Dataset:
    """The streamed batches a trainer consumes for `split`; `augment` (training split only) when given and enabled."""
    ds = read_split(shards_uri, split, s3).map_batches(
        to_model_batch, fn_kwargs={"hierarchy": hierarchy}, batch_format="pyarrow"
    )
    if augment is not None and augment.enabled:
        ds = ds.map_batches(augment_batch, fn_kwargs={"config": augment}, batch_format="numpy")
    return ds


def to_model_batch(batch: pa.Table, hierarchy: GeocellHierarchy | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF: shard rows → {image uint8 [B,H,W,3], label_map uint8 [B,g,g], lat, lon, cells int64 [B,L]}
    (+ `scene` int64 [B] when the data set carries Places365 scene labels).

    `cells` come from `hierarchy.assign`; without a hierarchy, from the shards' own `cells` column when they have
    one (cells precomputed at ingest belong to the hierarchy ingest used, so an explicit hierarchy wins)."""
    grids = batch.column("label_grid").to_numpy()
    grid = int(grids[0])
    if not (grids == grid).all():
        raise ValueError(f"one batch mixes label grids {sorted(set(grids.tolist()))}: ingest with one label_grid")
    lat = batch.column("lat").to_numpy()
    lon = batch.column("lon").to_numpy()
    out = {
        "image": np.stack([decode_jpeg(b) for b in batch.column("image").to_pylist()]),
        "label_map": np.stack(
            [np.frombuffer(b, np.uint8).reshape(grid, grid) for b in batch.column("label_map").to_pylist()]
        ),
        "lat": lat,
        "lon": lon,
    }
    if "scene3" in batch.column_names:
        # Places365 3-way scene labels (S3_Label: 0 indoor, 1 natural, 2 urban) where the data set has them;
        # -1 marks a row without one, and models that use scenes derive it from the label map instead.
        out["scene"] = pc.fill_null(batch.column("scene3").cast(pa.int64()), -1).to_numpy()
    if hierarchy is not None:
        out["cells"] = hierarchy.assign(lat, lon)
    elif "cells" in batch.column_names:
        out["cells"] = np.stack(batch.column("cells").to_numpy(zero_copy_only=False)).astype(np.int64)
    return out


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


def split_rows(shards_uri: str, split: str, s3: storage.S3Config | None = None) -> int:
    """Rows of `split` in the shards, counted from the `split` column alone (no image bytes are read)."""
    import pyarrow.dataset as pads

    fs, path = storage.resolve(shards_uri, s3)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows(filter=pc.field("split") == split)
