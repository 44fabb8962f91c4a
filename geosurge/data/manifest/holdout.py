"""A validation split for data that has none (MP-16, img2dataset tables, our columns without `split`).

A row goes to `val` when a hash of its image id falls under `data.val_fraction`, else to `train`. The hash
(BLAKE2b of the id's UTF-8 bytes) is the same on every machine, Python version and rerun, and needs nothing but
the row itself, so the streaming readers (ingest, the geocell coordinates) agree on every row without a
coordination step, and a manifest that grows keeps every old row in its split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HOLDOUT_SPLIT = "val"
TRAIN_SPLIT = "train"
# formats whose sources carry no split at all (their readers say `train`): every row is assigned by the hash
NO_SPLIT_FORMATS = ("mp16",)


def holdout_unit(image_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each id's place in [0, 1), uniform over ids: the first 8 bytes of its BLAKE2b hash. Null ids map to 1.0
    (never held out; validation quarantines them anyway)."""
    out = np.empty(len(image_ids), np.float64)
    for i, image_id in enumerate(image_ids.to_pylist()):
        if image_id is None:
            out[i] = 1.0
            continue
        digest = hashlib.blake2b(str(image_id).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def assign_holdout(table: pa.Table, fraction: float, every_row: bool) -> pa.Table:
    """`table` with its `split` column set by the id hash: for every row (a source with no splits of its own),
    or only where `split` is null. Rows that carry a split keep it."""
    if fraction <= 0 or table.num_rows == 0:
        return table
    held_out = holdout_unit(table.column("image_id")) < fraction
    hashed = pa.array(np.where(held_out, HOLDOUT_SPLIT, TRAIN_SPLIT), pa.string())
    index = table.column_names.index("split")
    split = hashed if every_row else pc.coalesce(table.column("split"), hashed)
    return table.set_column(index, "split", split)


def train_where_unsplit(table: pa.Table) -> pa.Table:
    """`table` with every row still without a split in `train` (after any hold-out)."""
    index = table.column_names.index("split")
    return table.set_column(index, "split", pc.fill_null(table.column("split"), TRAIN_SPLIT))
