"""Plan and stage a manifest (Ray tasks): its files are streamed once into staged chunks, the ids of their valid
rows go to hash buckets, one task per bucket finds the duplicate ids. The driver keeps only the plan: chunk names
and their row counts."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from geosurge import storage
from geosurge.config import IngestConfig
from geosurge.data.ingest.resume import clear
from geosurge.data.manifest import (
    batch_warnings,
    is_parquet_name,
    iter_manifest_batches,
    list_manifest_files,
    manifest_row_ok,
    parquet_row_count,
    plan_manifest_reading,
    resolve_images_root,
    resolve_manifest_format,
)
from geosurge.layout import IngestLayout

if TYPE_CHECKING:  # the staging tasks import this module: scipy/h3 only where a hierarchy is used
    from geosurge.geo.geocells import GeocellHierarchy

# Bookkeeping columns that travel with rows through the stage and never reach a shard.
CHUNK, ROW, ORDER, RETRIES = "_chunk", "_row", "_order", "_retries"
_ORDER_BITS = 40  # _order = file index << 40 | row in file: a stable global order over a manifest's files
_ID_BUCKETS = 32  # duplicate search: ids are split into this many hash buckets, one task each
_ID_FLUSH_ROWS = 1 << 16  # staging: valid ids held before they go to their buckets (a few MB)
_IN_SHARDS = -1  # the _order of an id already in the output's shards (from an earlier manifest): before every row
_ID_SCHEMA = pa.schema([("image_id", pa.string()), (ORDER, pa.int64()), (CHUNK, pa.string()), (ROW, pa.int64())])


def _digest(table: pa.Table) -> str:
    """A digest of a table's content (its Arrow IPC bytes)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha1(sink.getvalue().to_pybytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- naming


def _canonical(uri: str) -> str:
    # the manifest package's one root resolution (URLs kept, local paths absolute); file:// still becomes a plain
    # path here, so chunk names and staged uris stay what they were
    return resolve_images_root(uri.removeprefix("file://"))


def _stem(uri: str) -> str:
    name = posixpath.basename(uri.rstrip("/"))
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    stem = os.path.splitext(name)[0] or "manifest"
    return "".join(c if c.isalnum() or c in "-." else "-" for c in stem)


def source_tag(uri: str) -> str:
    """Chunk-name prefix of one manifest file: its stem and a hash of where it lives (GeoWorld names every
    manifest manifest.parquet; two of them in one output must not share chunk names)."""
    return f"{_stem(uri)}-{hashlib.sha1(_canonical(uri).encode()).hexdigest()[:8]}"


def chunk_name(tag: str, index: int) -> str:
    return f"{tag}-{index:05d}"


def output_fingerprint(config: IngestConfig, hierarchy: GeocellHierarchy | None, val_fraction: float = 0.0) -> str:
    """What shapes a shard row: a change means this manifest's chunks are stale and get redone."""
    shape = {k: getattr(config, k) for k in ("image_size", "label_grid", "segmenter", "max_image_pixels", "shard_rows")}
    # How a public-format manifest is read shapes each row's uri; only set values count, so plans made before
    # these settings existed stay valid.
    shape.update({k: getattr(config, k) for k in ("manifest_format", "images_root")
                  if getattr(config, k) not in ("auto", None)})
    # "ignore-dropped": labels are -1 where a point's cell was dropped (they were moved to the nearest cell before)
    shape["cells"] = f"{hierarchy!r} ignore-dropped" if hierarchy is not None else None
    if config.allowed_uri_prefixes:  # which rows are bad_uri (only when set: older plans stay valid)
        shape["allowed_uri_prefixes"] = list(config.allowed_uri_prefixes)
    if val_fraction:  # which rows become `val` (only when a hold-out is asked for: older plans stay valid)
        shape["val_fraction"] = val_fraction
    return hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- planning


@ray.remote(max_retries=3, retry_exceptions=[OSError])
def _stage_file(uri: str, file_index: int, layout: IngestLayout, staging_tag: str, shard_rows: int, buckets: int,
                s3: storage.S3Config | None, policy: storage.RetryPolicy, fmt: str = "geosurge",
                images_root: str | None = None, val_fraction: float = 0.0,
                allowed_prefixes: tuple[str, ...] = ()) -> dict:
    """Stream one manifest file into staged chunks (in our columns whatever its format: the LAT/LON swap is
    decided on the file's head, then applied to every batch), and the ids of its valid rows into hash buckets.
    `staging_tag` names the manifest's staging folder; the file's own tag names its chunks."""
    tag = source_tag(uri)
    reading = plan_manifest_reading(uri, fmt, images_root, s3, val_fraction=val_fraction)
    messages = list(reading.warnings)
    fs, ids_path = storage.resolve(layout.staged_ids(staging_tag), s3)
    writers: dict[int, pq.ParquetWriter] = {}
    streams = []
    id_schema = _ID_SCHEMA
    chunks: list[list] = []
    offset = 0
    # Valid ids wait here until there are enough for sizeable row groups: one row group per chunk and bucket
    # would keep ~600 MiB of footer metadata in this task for MP-16's 4.72 M rows.
    held_ids: list[pa.Table] = []
    held_rows = 0

    def write_ids() -> None:
        valid = pa.concat_tables(held_ids)
        hashes = pd.util.hash_array(valid.column("image_id").to_numpy(zero_copy_only=False))
        bucket_of = (hashes % np.uint64(buckets)).astype(np.int64)
        for b in np.unique(bucket_of):
            if b not in writers:
                path = f"{ids_path}/{tag}-b{b:03d}.parquet"
                storage.make_parent(fs, path, s3)
                streams.append(fs.open_output_stream(path))
                writers[b] = pq.ParquetWriter(streams[-1], id_schema)
            writers[b].write_table(valid.filter(pa.array(bucket_of == b)))
        held_ids.clear()

    try:
        for index, batch in enumerate(iter_manifest_batches(uri, shard_rows, s3, reading)):
            messages += [m for m in batch_warnings(batch) if m not in messages]
            batch = batch.replace_schema_metadata(None)
            name = chunk_name(tag, index)
            n = batch.num_rows
            rows = np.arange(n, dtype=np.int64)
            batch = (batch.append_column(CHUNK, pa.array([name] * n, pa.string()))
                     .append_column(ROW, pa.array(rows))
                     .append_column(ORDER, pa.array((np.int64(file_index) << _ORDER_BITS) + offset + rows)))
            storage.write_parquet(batch, layout.staged_chunk(staging_tag, name), s3, policy)
            valid = batch.filter(pa.array(manifest_row_ok(batch, allowed_prefixes))).select(id_schema.names)
            valid = valid.cast(id_schema)
            if valid.num_rows:
                held_ids.append(valid)
                held_rows += valid.num_rows
            if held_rows >= _ID_FLUSH_ROWS:
                write_ids()
                held_rows = 0
            chunks.append([name, n, _digest(batch)])
            offset += n
        if held_rows:
            write_ids()
    finally:
        for writer in writers.values():
            writer.close()
        for stream in streams:
            stream.close()
    return {"uri": uri, "tag": tag, "rows": offset, "chunks": chunks, "format": reading.format,
            "warnings": messages}


@ray.remote(max_retries=3, retry_exceptions=[OSError])
def _stage_shard_ids(layout: IngestLayout, staging_tag: str, own_tags: list[str], buckets: int,
                     s3: storage.S3Config | None) -> int:
    """The ids already in the output's shards, written by other manifests (not this one's own chunks: a rerun
    resumes them), into the id buckets with _order `_IN_SHARDS`: a later copy of one is a duplicate_id. Returns how
    many ids."""
    fs, shards = storage.resolve(layout.shards, s3)
    _, ids_path = storage.resolve(layout.staged_ids(staging_tag), s3)
    files = [i for i in fs.get_file_info(pafs.FileSelector(shards, allow_not_found=True))
             if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
             and not i.base_name.startswith(tuple(f"{t}-" for t in own_tags))]
    tables = [pq.read_table(i.path, filesystem=fs, columns=["image_id"]) for i in files]
    if not tables:
        return 0
    ids = pa.concat_tables(tables).column("image_id").combine_chunks().cast(pa.string())
    n = len(ids)
    table = pa.table({"image_id": ids, ORDER: pa.array(np.full(n, _IN_SHARDS, np.int64)),
                      CHUNK: pa.array([""] * n, pa.string()), ROW: pa.array(np.full(n, -1, np.int64))},
                     schema=_ID_SCHEMA)
    bucket_of = (pd.util.hash_array(ids.to_numpy(zero_copy_only=False)) % np.uint64(buckets)).astype(np.int64)
    fs.create_dir(ids_path, recursive=True)
    for b in np.unique(bucket_of):
        with fs.open_output_stream(f"{ids_path}/in-shards-b{b:03d}.parquet") as f:
            pq.write_table(table.filter(pa.array(bucket_of == b)), f)
    return n


@ray.remote(max_retries=3, retry_exceptions=[OSError])
def _find_duplicates(bucket_files: list[str], file_names: list[str], s3: storage.S3Config | None) -> pa.Table:
    """Within one id bucket: every valid row whose id was already seen earlier (by _order), with the detail."""
    schema = pa.schema([(CHUNK, pa.string()), (ROW, pa.int64()), ("detail", pa.string())])
    tables = []
    for uri in bucket_files:
        fs, path = storage.resolve(uri, s3)
        tables.append(pq.read_table(path, filesystem=fs))
    if not tables:
        return schema.empty_table()
    ids = pa.concat_tables(tables).sort_by([("image_id", "ascending"), (ORDER, "ascending")])
    n = ids.num_rows
    id_col = ids.column("image_id").combine_chunks()
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = pc.equal(id_col.slice(1), id_col.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    if not same.any():
        return schema.empty_table()
    same &= ids.column(ORDER).to_numpy() >= 0  # copies among the output's earlier shards are not ours to list
    if not same.any():
        return schema.empty_table()
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(n)))  # index of each row's first copy
    order = ids.column(ORDER).to_numpy()
    kept = order[run_start[same]]
    kept_row = (kept & ((1 << _ORDER_BITS) - 1)).astype(str)
    where = ([f" of {file_names[f]}" for f in kept >> _ORDER_BITS] if len(file_names) > 1 else [""] * len(kept))
    dup_ids = id_col.filter(pa.array(same)).to_pylist()
    detail = [f"image_id '{i}' is already in the output's shards (an earlier manifest)" if k == _IN_SHARDS
              else f"image_id '{i}' already kept at row {r}{w}" for i, k, r, w in zip(dup_ids, kept, kept_row, where)]
    return pa.table({CHUNK: ids.column(CHUNK).filter(pa.array(same)), ROW: ids.column(ROW).filter(pa.array(same)),
                     "detail": pa.array(detail, pa.string())}, schema=schema)


@ray.remote(max_retries=3, retry_exceptions=[OSError])
def _write_duplicates(uri: str, s3: storage.S3Config | None, policy: storage.RetryPolicy,
                      *tables: pa.Table) -> tuple[int, dict[str, str]]:
    """One table of every duplicate row of the manifest, sorted by chunk so each chunk reads only its part; (its
    rows, a digest of each chunk's duplicate rows: part of what the chunk's output depends on)."""
    table = pa.concat_tables(tables).sort_by([(CHUNK, "ascending"), (ROW, "ascending")])
    fs, path = storage.resolve(uri, s3)

    def write() -> None:
        if not storage.is_s3(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with fs.open_output_stream(path) as f:
            pq.write_table(table, f, row_group_size=8192)  # row-group statistics let a chunk skip the rest

    storage.with_retries(write, policy, uri)
    names = table.column(CHUNK).to_numpy(zero_copy_only=False)
    starts = np.sort(np.unique(names, return_index=True)[1])  # sorted by chunk: each chunk's rows are one slice
    ends = np.append(starts[1:], len(names)).astype(np.int64)
    chunk_digests = {str(names[a]): _digest(table.slice(int(a), int(b - a))) for a, b in zip(starts, ends)}
    return table.num_rows, chunk_digests


@dataclass
class Plan:
    manifest_uri: str
    files: list[str]
    fingerprint: str
    chunks: dict[str, int]  # chunk name → rows, in manifest order
    duplicates: int = 0
    rows: int = 0
    stamps: list[list] = field(default_factory=list)  # [size, mtime] per file: a changed manifest is planned again
    formats: list[str] = field(default_factory=list)  # per file: geosurge, mp16, im2gps3k or yfcc4k
    warnings: list[str] = field(default_factory=list)  # what reading the files showed (e.g. a swapped LAT/LON)
    # chunk name → digest of its staged rows and its duplicate list: an edited row changes it, so resume redoes it
    digests: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def make_plan(manifest_uri: str, layout: IngestLayout, tag: str, fingerprint: str, config: IngestConfig,
              s3: storage.S3Config | None, policy: storage.RetryPolicy, val_fraction: float = 0.0) -> Plan:
    """Stage the manifest into chunks and find its duplicate ids (Ray tasks); the driver keeps chunk counts.

    Each file's format comes from its header here (a bad format or missing column fails before any task runs);
    everything that reads rows (the LAT/LON swap decision on the head, the batches) runs in the file's task."""
    files = list_manifest_files(manifest_uri, s3)
    formats = [resolve_manifest_format(uri, config.manifest_format, s3) for uri in files]
    images_root = _canonical(config.images_root) if config.images_root else None
    clear(layout.staging(tag), s3)
    prefixes = tuple(config.allowed_uri_prefixes)
    in_shards = _stage_shard_ids.remote(layout, tag, [source_tag(f) for f in files], _ID_BUCKETS, s3)
    staged = ray.get([_stage_file.remote(uri, i, layout, tag, config.shard_rows, _ID_BUCKETS, s3, policy, fmt,
                                         images_root, val_fraction, prefixes)
                      for i, (uri, fmt) in enumerate(zip(files, formats))])
    ray.get(in_shards)
    for uri, got in zip(files, staged):
        if is_parquet_name(uri) and got["rows"] != parquet_row_count(uri, s3):  # from the footer: a cross-check
            raise RuntimeError(f"staging read {got['rows']} rows of {uri}, its footer says otherwise")
    fs, ids_path = storage.resolve(layout.staged_ids(tag), s3)
    bucket_files: dict[int, list[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(ids_path, allow_not_found=True)):
        bucket = int(info.base_name.rsplit("-b", 1)[1].split(".")[0])
        bucket_files.setdefault(bucket, []).append(storage.join(layout.staged_ids(tag), info.base_name))
    names = [posixpath.basename(uri) for uri in files]
    found = [_find_duplicates.remote(sorted(v), names, s3) for _, v in sorted(bucket_files.items())]
    duplicates, duplicate_digests = ray.get(_write_duplicates.remote(layout.duplicates(tag), s3, policy, *found))
    chunks = {name: rows for got in staged for name, rows, _ in got["chunks"]}
    digests = {name: f"{digest}-{duplicate_digests.get(name, '')}" for got in staged for name, _, digest in got["chunks"]}
    messages = [m for got in staged for m in got["warnings"]]
    plan = Plan(manifest_uri, files, fingerprint, chunks, duplicates, sum(chunks.values()), file_stamps(files, s3),
                [got["format"] for got in staged], messages, digests)
    storage.write_bytes(layout.plan(tag), plan.to_json(), s3)
    return plan


def file_stamps(files: list[str], s3: storage.S3Config | None) -> list[list]:
    stamps = []
    for uri in files:
        fs, path = storage.resolve(uri, s3)
        info = fs.get_file_info(path)
        stamps.append([info.size, info.mtime.isoformat() if info.mtime else None])
    return stamps


def load_plan(layout: IngestLayout, tag: str, s3: storage.S3Config | None) -> Plan | None:
    uri = layout.plan(tag)
    if not storage.exists(uri, s3):
        return None
    return Plan(**json.loads(storage.read_bytes(uri, s3)))
