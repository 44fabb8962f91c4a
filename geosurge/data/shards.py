"""Reading shards as model batches: decode JPEG bytes and label maps and attach geocell labels for every level.
Training and evaluation both read shards through here."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from geosurge import storage
from geosurge.data.images import decode_jpeg
from geosurge.geo.geocells import GeocellHierarchy


def read_split(shards_uri: str, split: str, s3: storage.S3Config | None = None) -> ray.data.Dataset:
    """`split` of the shards as a Ray Data dataset: for work spread over the cluster (training's streaming split)."""
    fs, path = storage.resolve(shards_uri, s3)
    ds = ray.data.read_parquet(path, filesystem=fs)
    return ds.filter(expr=f"split == '{split}'")


def split_batches(shards_uri: str, split: str, s3: storage.S3Config | None = None, batch_size: int = 64,
                  columns: list[str] | None = None) -> Iterator[pa.Table]:
    """`split` of the shards streamed into this process as tables of at most `batch_size` rows, in file order.

    For work done in this process (evaluating a split in the driver, an input example): a Ray Data execution
    would add seconds of task start-up and bring every row back here anyway. One shard file is read ahead at a
    time, so memory stays near one file's row group plus a batch."""
    import pyarrow.dataset as pads

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    fs, path = storage.resolve(shards_uri, s3)
    scanner = pads.dataset(path, filesystem=fs, format="parquet").scanner(
        columns=columns, filter=pc.field("split") == split, batch_size=batch_size, fragment_readahead=1,
        batch_readahead=1)
    pending: list[pa.RecordBatch] = []
    rows = 0
    for record_batch in scanner.to_batches():  # the scanner's batches may be smaller than asked: regroup them
        if record_batch.num_rows == 0:
            continue
        pending.append(record_batch)
        rows += record_batch.num_rows
        while rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_size)
            rest = table.slice(batch_size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


def model_dataset(
    shards_uri: str, split: str, hierarchy: GeocellHierarchy, s3: storage.S3Config | None = None
) -> ray.data.Dataset:
    """The streamed model batches of `split` (what a trainer consumes; training adds augmentation on top)."""
    return read_split(shards_uri, split, s3).map_batches(
        to_model_batch, fn_kwargs={"hierarchy": hierarchy}, batch_format="pyarrow"
    )


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
        out["cells"] = hierarchy.assign(lat, lon, nearest=False)  # -1 where the point's cell was dropped: ignored
    elif "cells" in batch.column_names:
        out["cells"] = np.stack(batch.column("cells").to_numpy(zero_copy_only=False)).astype(np.int64)
    return out


def decoded_bytes_per_row(image_size: int, label_grid: int, levels: int) -> int:
    """Bytes of one `to_model_batch` row: uint8 image and label map, float64 lat/lon, int64 cells and scene."""
    return image_size * image_size * 3 + label_grid * label_grid + 8 * (2 + levels + 1)


def split_rows(shards_uri: str, split: str, s3: storage.S3Config | None = None) -> int:
    """Rows of `split` in the shards, counted from the `split` column alone (no image bytes are read)."""
    import pyarrow.dataset as pads

    fs, path = storage.resolve(shards_uri, s3)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows(filter=pc.field("split") == split)
