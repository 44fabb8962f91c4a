"""The ingest stage on Ray Data: manifest → fetch bytes → validate/decode/resize → segment → Parquet shards.

Built for manifests of millions of rows in a bucket: no stage holds the manifest in the driver, and a run that
is killed resumes where it stopped.

1. **Plan and stage** (Ray tasks, one per manifest file): each file (Parquet or CSV, local or s3://; a folder of
   them is one manifest; our columns or a public CSV as published: MP-16, Im2GPS3k, YFCC4k, see
   `ingest.manifest_format` / `ingest.images_root`; a public file's swapped LAT/LON header is decided on its
   head and applied to every batch, and reported) is streamed once into staged Parquet chunks of `shard_rows`
   rows named `<file stem>-<hash of its URI>-<chunk:05d>`, and the ids of the rows that pass the manifest checks go to
   hash buckets. The driver keeps only the plan: chunk names and their row counts (`_plans/<manifest>.json`).
2. **Duplicate ids** (Ray tasks, one per bucket): every id of a bucket is in one task, so it sees all copies of
   an id; the first valid occurrence (by file, then row) is kept and the others are listed, by chunk and row,
   in `_staging/<manifest>/duplicates.parquet`.
3. **Ingest** (Ray Data, streaming): one input row per pending chunk → a fetch task validates the chunk
   (manifest.validate_rows, with the global duplicate list), fetches and decodes its images on a thread pool of
   `fetch_concurrency` (retries with backoff, counted) → the segmentation actor pool labels the rows that
   decoded → a writer task writes the chunk's shard rows and quarantine rows, each as one Parquet file named
   after the chunk (atomically), and sends a one-line summary back to the driver for progress.
4. **Reconcile** from what was written (Parquet footers and the quarantine `reason` column): rows in = shard
   rows + quarantined, by reason; raise if not.

Resume: at start-up the rows already written for each chunk are counted (shards + quarantine). A chunk whose
rows are all there is skipped; a partial chunk's files are deleted and the chunk is redone. So a rerun of a
finished manifest rewrites nothing, a killed run finishes without duplicating or losing a row, and a second
manifest ingested into the same output lands beside the first (its chunks have other names). `overwrite=True`
clears the output first. A change to the settings that shape the output (image size, label grid, segmenter,
shard rows, geocells) makes that manifest's chunks be redone.

Shard rows: image_id, uri, lat, lon, split (+ any manifest label columns), image (JPEG bytes at `image_size`),
label_map (uint8 bytes, label_grid × label_grid ADE20K ids), label_grid, and `cells` (list<int64>, the cell at
every level) when a geocell hierarchy is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from geosurge import storage
from geosurge.config import IngestConfig
from geosurge.data.images import (
    ImageRejected,
    ImageSpec,
    decode_image,
    decode_jpeg,
    decode_label_map,
    encode_jpeg,
)
from geosurge.data.manifest import (
    DECODE_STAGE,
    FETCH_STAGE,
    QUARANTINE_SCHEMA,
    batch_warnings,
    is_parquet_name,
    iter_manifest_batches,
    list_manifest_files,
    manifest_columns,
    manifest_row_ok,
    parquet_row_count,
    plan_manifest_reading,
    resolve_manifest_format,
    validate_rows,
)
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.segmentation.segmenter import (
    GEOWORLD_SEGMENTER,
    GROUND_TRUTH_SEGMENTER,
    NO_SEGMENTER,
    RANDOM_SEGMENTER,
    Segmenter,
)

log = logging.getLogger(__name__)

STATUS_COLUMNS = ["stage", "reason", "detail"]
# Bookkeeping columns that travel with rows through the stage and never reach a shard.
CHUNK, ROW, ORDER, RETRIES = "_chunk", "_row", "_order", "_retries"
_INTERNAL = [CHUNK, ROW, ORDER, RETRIES]
_ORDER_BITS = 40  # _order = file index << 40 | row in file: a stable global order over a manifest's files
_ID_BUCKETS = 32  # duplicate search: ids are split into this many hash buckets, one task each
_ID_FLUSH_ROWS = 1 << 16  # staging: valid ids held before they go to their buckets (a few MB)


@dataclass
class IngestResult:
    shards_uri: str
    quarantine_uri: str
    rows_in: int
    shard_rows: int
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    segmenter: str = ""
    segmenter_is_random: bool = False
    seconds: float = 0.0
    manifest_uri: str = ""
    chunks: int = 0  # chunks of this manifest
    chunks_resumed: int = 0  # chunks found complete from an earlier run and skipped
    fetch_retries: int = 0  # retries this run took (reads and writes), over all rows
    rows_processed: int = 0  # rows this run fetched/validated (the rest were already written)
    manifest_format: str = ""  # geosurge, mp16, im2gps3k or yfcc4k (comma-separated when files differ)
    warnings: list[str] = field(default_factory=list)  # from reading the manifest, e.g. a swapped LAT/LON header

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.shard_rows + self.quarantined

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined_by_reason.items())) or "none"
        status = "reconciles" if self.reconciles else "DOES NOT RECONCILE"
        resumed = f", {self.chunks_resumed}/{self.chunks} chunks already done" if self.chunks_resumed else ""
        line = (
            f"ingest: {self.rows_in} in = {self.shard_rows} in shards + {self.quarantined} quarantined "
            f"({reasons}) — {status}; {self.fetch_retries} retries{resumed}; {self.seconds:.1f} s"
        )
        return "\n".join([line, *(f"ingest: warning: {w}" for w in self.warnings)])

    def to_dict(self) -> dict:
        return {**asdict(self), "quarantined": self.quarantined, "reconciles": self.reconciles}


# --------------------------------------------------------------------------------------------- naming


def _policy(config: IngestConfig) -> storage.RetryPolicy:
    return storage.RetryPolicy(retries=config.fetch_retries, backoff_s=config.fetch_backoff_s,
                               max_backoff_s=config.fetch_max_backoff_s, timeout_s=config.fetch_timeout_s)


def _canonical(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.abspath(uri.removeprefix("file://"))


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


def _chunk_of_file(name: str) -> str | None:
    """`<chunk>_<part>.parquet` → chunk; None for anything else (temporary files, other writers)."""
    if name.startswith(".") or not name.endswith(".parquet") or "_" not in name:
        return None
    return name[: -len(".parquet")].rsplit("_", 1)[0]


def _output_fingerprint(config: IngestConfig, hierarchy: GeocellHierarchy | None) -> str:
    """What shapes a shard row: a change means this manifest's chunks are stale and get redone."""
    shape = {k: getattr(config, k) for k in ("image_size", "label_grid", "segmenter", "max_image_pixels", "shard_rows")}
    # How a public-format manifest is read shapes each row's uri; only set values count, so plans made before
    # these settings existed stay valid.
    shape.update({k: getattr(config, k) for k in ("manifest_format", "images_root")
                  if getattr(config, k) not in ("auto", None)})
    shape["cells"] = repr(hierarchy) if hierarchy is not None else None
    return hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- planning


@ray.remote(max_retries=3, retry_exceptions=[OSError])
def _stage_file(uri: str, file_index: int, staging_uri: str, shard_rows: int, buckets: int,
                s3: storage.S3Config | None, policy: storage.RetryPolicy, fmt: str = "geosurge",
                images_root: str | None = None) -> dict:
    """Stream one manifest file into staged chunks (in our columns whatever its format: the LAT/LON swap is
    decided on the file's head, then applied to every batch), and the ids of its valid rows into hash buckets."""
    tag = source_tag(uri)
    reading = plan_manifest_reading(uri, fmt, images_root, s3)
    messages = list(reading.warnings)
    fs, staging_path = storage.resolve(staging_uri, s3)
    writers: dict[int, pq.ParquetWriter] = {}
    streams = []
    id_schema = pa.schema([("image_id", pa.string()), (ORDER, pa.int64()), (CHUNK, pa.string()), (ROW, pa.int64())])
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
                path = f"{staging_path}/ids/{tag}-b{b:03d}.parquet"
                fs.create_dir(posixpath.dirname(path), recursive=True)
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
            storage.write_parquet(batch, storage.join(staging_uri, "chunks", f"{name}.parquet"), s3, policy)
            valid = batch.filter(pa.array(manifest_row_ok(batch))).select(id_schema.names).cast(id_schema)
            if valid.num_rows:
                held_ids.append(valid)
                held_rows += valid.num_rows
            if held_rows >= _ID_FLUSH_ROWS:
                write_ids()
                held_rows = 0
            chunks.append([name, n])
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
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(n)))  # index of each row's first copy
    order = ids.column(ORDER).to_numpy()
    kept = order[run_start[same]]
    kept_row = (kept & ((1 << _ORDER_BITS) - 1)).astype(str)
    where = ([f" of {file_names[f]}" for f in kept >> _ORDER_BITS] if len(file_names) > 1 else [""] * len(kept))
    dup_ids = id_col.filter(pa.array(same)).to_pylist()
    detail = [f"image_id '{i}' already kept at row {r}{w}" for i, r, w in zip(dup_ids, kept_row, where)]
    return pa.table({CHUNK: ids.column(CHUNK).filter(pa.array(same)), ROW: ids.column(ROW).filter(pa.array(same)),
                     "detail": pa.array(detail, pa.string())}, schema=schema)


@ray.remote(max_retries=3, retry_exceptions=[OSError])
def _write_duplicates(uri: str, s3: storage.S3Config | None, policy: storage.RetryPolicy, *tables: pa.Table) -> int:
    """One table of every duplicate row of the manifest, sorted by chunk so each chunk reads only its part."""
    table = pa.concat_tables(tables).sort_by([(CHUNK, "ascending"), (ROW, "ascending")])
    fs, path = storage.resolve(uri, s3)

    def write() -> None:
        if not storage.is_s3(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with fs.open_output_stream(path) as f:
            pq.write_table(table, f, row_group_size=8192)  # row-group statistics let a chunk skip the rest

    storage.with_retries(write, policy, uri)
    return table.num_rows


@dataclass
class _Plan:
    manifest_uri: str
    files: list[str]
    fingerprint: str
    chunks: dict[str, int]  # chunk name → rows, in manifest order
    duplicates: int = 0
    rows: int = 0
    stamps: list[list] = field(default_factory=list)  # [size, mtime] per file: a changed manifest is planned again
    formats: list[str] = field(default_factory=list)  # per file: geosurge, mp16, im2gps3k or yfcc4k
    warnings: list[str] = field(default_factory=list)  # what reading the files showed (e.g. a swapped LAT/LON)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def _plan(manifest_uri: str, output_uri: str, tag: str, fingerprint: str, config: IngestConfig,
          s3: storage.S3Config | None, policy: storage.RetryPolicy) -> _Plan:
    """Stage the manifest into chunks and find its duplicate ids (Ray tasks); the driver keeps chunk counts.

    Each file's format comes from its header here (a bad format or missing column fails before any task runs);
    everything that reads rows (the LAT/LON swap decision on the head, the batches) runs in the file's task."""
    files = list_manifest_files(manifest_uri, s3)
    formats = [resolve_manifest_format(uri, config.manifest_format, s3) for uri in files]
    images_root = _canonical(config.images_root) if config.images_root else None
    staging_uri = storage.join(output_uri, "_staging", tag)
    _clear(staging_uri, s3)
    staged = ray.get([_stage_file.remote(uri, i, staging_uri, config.shard_rows, _ID_BUCKETS, s3, policy, fmt,
                                         images_root)
                      for i, (uri, fmt) in enumerate(zip(files, formats))])
    for uri, got in zip(files, staged):
        if is_parquet_name(uri) and got["rows"] != parquet_row_count(uri, s3):  # from the footer: a cross-check
            raise RuntimeError(f"staging read {got['rows']} rows of {uri}, its footer says otherwise")
    fs, staging_path = storage.resolve(staging_uri, s3)
    bucket_files: dict[int, list[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(f"{staging_path}/ids", allow_not_found=True)):
        bucket = int(info.base_name.rsplit("-b", 1)[1].split(".")[0])
        bucket_files.setdefault(bucket, []).append(storage.join(staging_uri, "ids", info.base_name))
    names = [posixpath.basename(uri) for uri in files]
    found = [_find_duplicates.remote(sorted(v), names, s3) for _, v in sorted(bucket_files.items())]
    duplicates = ray.get(_write_duplicates.remote(storage.join(staging_uri, "duplicates.parquet"), s3, policy, *found))
    chunks = {name: rows for got in staged for name, rows in got["chunks"]}
    messages = [m for got in staged for m in got["warnings"]]
    plan = _Plan(manifest_uri, files, fingerprint, chunks, duplicates, sum(chunks.values()), _stamps(files, s3),
                 [got["format"] for got in staged], messages)
    storage.write_bytes(storage.join(output_uri, "_plans", f"{tag}.json"), plan.to_json(), s3)
    return plan


def _stamps(files: list[str], s3: storage.S3Config | None) -> list[list]:
    stamps = []
    for uri in files:
        fs, path = storage.resolve(uri, s3)
        info = fs.get_file_info(path)
        stamps.append([info.size, info.mtime.isoformat() if info.mtime else None])
    return stamps


def _load_plan(output_uri: str, tag: str, s3: storage.S3Config | None) -> _Plan | None:
    uri = storage.join(output_uri, "_plans", f"{tag}.json")
    if not storage.exists(uri, s3):
        return None
    return _Plan(**json.loads(storage.read_bytes(uri, s3)))


# --------------------------------------------------------------------------------------------- the Ray Data stages


def fetch_decode_chunks(batch: pa.Table, staging_uri: str, has_duplicates: bool, spec: ImageSpec,
                        s3: storage.S3Config | None, policy: storage.RetryPolicy, concurrency: int,
                        label_grid: int | None = None) -> pa.Table:
    """Ray Data UDF, one input row per chunk: read the staged chunk, validate it (manifest checks + the global
    duplicate list), fetch and decode the images of the valid rows on `concurrency` threads.

    Every row of the chunk comes out, with `image` (and with `label_grid`, the ground-truth `label_map` read from
    `label_uri`), `stage`/`reason`/`detail` (null when the row is fine) and `_retries`."""
    fetcher = storage.Fetcher(s3, policy, pool_size=concurrency)
    out = []
    for name in batch.column("chunk").to_pylist():
        staged, chunk_retries = storage.with_retries(
            lambda name=name: _read_parquet(storage.join(staging_uri, "chunks", f"{name}.parquet"), s3), policy, name)
        known = pa.nulls(staged.num_rows, pa.string())
        if has_duplicates:
            dups, more = storage.with_retries(lambda name=name: _chunk_duplicates(staging_uri, name, s3), policy, name)
            chunk_retries += more
            if dups.num_rows:
                detail = np.full(staged.num_rows, None, dtype=object)
                detail[dups.column(ROW).to_numpy()] = dups.column("detail").to_numpy(zero_copy_only=False)
                known = pa.array(detail, pa.string())
        rows = _fetch_rows(validate_rows(staged, known_duplicates=known), fetcher, spec, concurrency, label_grid)
        if chunk_retries and rows.num_rows:  # the chunk's own reads: counted on its first row
            retries = rows.column(RETRIES).to_numpy().copy()
            retries[0] += chunk_retries
            rows = rows.set_column(rows.schema.get_field_index(RETRIES), RETRIES, pa.array(retries, pa.int32()))
        out.append(rows)
    return pa.concat_tables(out, promote_options="permissive")


def _read_parquet(uri: str, s3: storage.S3Config | None) -> pa.Table:
    fs, path = storage.resolve(uri, s3)
    return pq.read_table(path, filesystem=fs)


def _chunk_duplicates(staging_uri: str, name: str, s3: storage.S3Config | None) -> pa.Table:
    fs, path = storage.resolve(storage.join(staging_uri, "duplicates.parquet"), s3)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(filter=pc.field(CHUNK) == name)


def _fetch_rows(rows: pa.Table, fetcher: storage.Fetcher, spec: ImageSpec, concurrency: int,
                label_grid: int | None) -> pa.Table:
    n = rows.num_rows
    reasons = rows.column("reason").to_pylist()
    stages, details = rows.column("stage").to_pylist(), rows.column("detail").to_pylist()
    uris = rows.column("uri").to_pylist()
    label_uris = rows.column("label_uri").to_pylist() if label_grid else [None] * n
    images: list[bytes | None] = [None] * n
    label_maps: list[bytes | None] = [None] * n
    retries = [0] * n

    def one(i: int) -> None:
        try:
            data, retries[i] = fetcher.read(uris[i])
            images[i] = encode_jpeg(decode_image(data, spec))
            if label_grid:
                data, more = fetcher.read(label_uris[i])
                retries[i] += more
                label_maps[i] = decode_label_map(data, spec, label_grid).tobytes()
        except storage.FetchFailed as e:
            reasons[i], details[i], stages[i] = e.reason, e.detail, FETCH_STAGE
            retries[i] += e.retries
            images[i] = None
        except ImageRejected as e:
            reasons[i], details[i], stages[i] = e.reason, e.detail, DECODE_STAGE
            images[i] = None

    todo = [i for i in range(n) if reasons[i] is None]
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(todo)))) as pool:
            list(pool.map(one, todo))
    rows = rows.drop_columns(STATUS_COLUMNS).append_column("image", pa.array(images, pa.binary()))
    if label_grid:
        grid = pa.array([label_grid if m is not None else None for m in label_maps], pa.int32())
        rows = rows.append_column("label_map", pa.array(label_maps, pa.binary())).append_column("label_grid", grid)
    return (rows.append_column("stage", pa.array(stages, pa.string()))
            .append_column("reason", pa.array(reasons, pa.string()))
            .append_column("detail", pa.array(details, pa.string()))
            .append_column(RETRIES, pa.array(retries, pa.int32())))


class SegmentLabelMaps:
    """Ray Data actor: one segmentation model per actor, label maps for the rows of a block that decoded (the
    others pass through untouched), `batch_size` images at a time."""

    def __init__(self, segmenter: str, grid: int, batch_size: int = 32):
        self.segmenter = Segmenter(segmenter, grid)
        self.grid = grid
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = np.flatnonzero(batch.column("reason").is_null().to_numpy(zero_copy_only=False))
        images = batch.column("image").to_pylist()
        maps: list[bytes | None] = [None] * batch.num_rows
        for start in range(0, len(ok), self.batch_size):
            idx = ok[start:start + self.batch_size]
            labels = self.segmenter.label_maps(np.stack([decode_jpeg(images[i]) for i in idx]))
            for i, m in zip(idx, labels):
                maps[i] = m.tobytes()
        grid = pa.array([self.grid if m is not None else None for m in maps], pa.int32())
        return batch.append_column("label_map", pa.array(maps, pa.binary())).append_column("label_grid", grid)


def write_chunk_parts(batch: pa.Table, shards_uri: str, quarantine_uri: str, s3: storage.S3Config | None,
                      policy: storage.RetryPolicy, hierarchy: GeocellHierarchy | None = None) -> pa.Table:
    """Ray Data UDF: write each chunk's rows of this block, shard rows and quarantine rows, one Parquet file each,
    named `<chunk>_<first row:05d>.parquet` (so a retried task rewrites the same file). Returns one summary row
    per chunk for the driver's progress and retry count."""
    summary = []
    chunks = batch.column(CHUNK)
    for name in pc.unique(chunks).to_pylist():
        rows = batch.filter(pc.equal(chunks, name))
        part = f"{name}_{pc.min(rows.column(ROW)).as_py():05d}.parquet"
        failed = pc.is_valid(rows.column("reason"))
        retries = int(pc.sum(rows.column(RETRIES)).as_py() or 0)
        ok = rows.filter(pc.invert(failed))
        if ok.num_rows:
            ok = ok.drop_columns([c for c in [*STATUS_COLUMNS, *_INTERNAL] if c in ok.column_names])
            if hierarchy is not None:
                cells = hierarchy.assign(ok.column("lat").to_numpy(), ok.column("lon").to_numpy())
                offsets = pa.array(np.arange(0, cells.size + 1, cells.shape[1], dtype=np.int32))
                ok = ok.append_column("cells", pa.ListArray.from_arrays(offsets, pa.array(cells.ravel(), pa.int64())))
            retries += storage.write_parquet(ok, storage.join(shards_uri, part), s3, policy)
        bad = rows.filter(failed)
        reasons: dict[str, int] = {}
        if bad.num_rows:
            bad = bad.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
            retries += storage.write_parquet(bad, storage.join(quarantine_uri, part), s3, policy)
            reasons = dict(zip(*np.unique(bad.column("reason").to_numpy(zero_copy_only=False), return_counts=True)))
        summary.append({"chunk": name, "rows": rows.num_rows, "shard_rows": ok.num_rows, "retries": retries,
                        "reasons": json.dumps({str(k): int(v) for k, v in reasons.items()})})
    return pa.Table.from_pylist(summary, schema=pa.schema([("chunk", pa.string()), ("rows", pa.int64()),
                                                           ("shard_rows", pa.int64()), ("retries", pa.int64()),
                                                           ("reasons", pa.string())]))


# --------------------------------------------------------------------------------------------- what was written


def _clear(uri: str, s3: storage.S3Config | None) -> None:
    fs, path = storage.resolve(uri, s3)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(path)
    fs.create_dir(path, recursive=True)


def _chunk_files(uri: str, chunks: dict[str, int], s3: storage.S3Config | None) -> dict[str, list[str]]:
    """chunk → its files (paths on the filesystem) in one output folder; stale temporary files are removed."""
    fs, path = storage.resolve(uri, s3)
    files: dict[str, list[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        if info.base_name.startswith(".") and info.base_name.endswith(".tmp"):
            fs.delete_file(info.path)  # left by a killed writer; never read
            continue
        name = _chunk_of_file(info.base_name)
        if name in chunks:
            files.setdefault(name, []).append(info.path)
    return files


def _footer_rows(fs: pafs.FileSystem, paths: list[str], threads: int) -> dict[str, int]:
    def rows(path: str) -> int:
        return pq.read_metadata(path, filesystem=fs).num_rows

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return dict(zip(paths, pool.map(rows, paths)))


def _resume(plan: _Plan, shards_uri: str, quarantine_uri: str, s3: storage.S3Config | None,
            threads: int) -> list[str]:
    """Chunks still to do. Complete chunks (every row in shards or quarantine) are kept; a partial chunk's files
    are deleted so that it is redone whole."""
    fs, _ = storage.resolve(shards_uri, s3)
    by_chunk: dict[str, list[str]] = {}
    for uri in (shards_uri, quarantine_uri):
        for name, paths in _chunk_files(uri, plan.chunks, s3).items():
            by_chunk.setdefault(name, []).extend(paths)
    counted = _footer_rows(fs, [p for paths in by_chunk.values() for p in paths], threads)
    pending = []
    for name, rows in plan.chunks.items():
        paths = by_chunk.get(name, [])
        if sum(counted[p] for p in paths) == rows:
            continue
        for p in paths:
            fs.delete_file(p)
        pending.append(name)
    return pending


def _reconcile(plan: _Plan, shards_uri: str, quarantine_uri: str, s3: storage.S3Config | None,
               threads: int) -> tuple[int, dict[str, int]]:
    """(shard rows, quarantined rows by reason) of this manifest's chunks, from the files themselves."""
    fs, _ = storage.resolve(shards_uri, s3)
    shard_paths = [p for paths in _chunk_files(shards_uri, plan.chunks, s3).values() for p in paths]
    shard_rows = sum(_footer_rows(fs, shard_paths, threads).values())
    quarantine_paths = [p for paths in _chunk_files(quarantine_uri, plan.chunks, s3).values() for p in paths]

    def reasons(path: str) -> dict[str, int]:
        column = pq.read_table(path, filesystem=fs, columns=["reason"]).column("reason").to_numpy(zero_copy_only=False)
        values, counts = np.unique(column.astype(str), return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))

    by_reason: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for counts in pool.map(reasons, quarantine_paths):
            for reason, count in counts.items():
                by_reason[reason] = by_reason.get(reason, 0) + int(count)
    return shard_rows, by_reason


# --------------------------------------------------------------------------------------------- the stage


def ingest(
    manifest_uri: str,
    output_uri: str,
    config: IngestConfig,
    s3: storage.S3Config | None = None,
    hierarchy: GeocellHierarchy | None = None,
    overwrite: bool = False,
) -> IngestResult:
    """Run the ingest stage on a manifest (a Parquet/CSV file or a folder of them, local or s3://); writes
    `<output_uri>/shards/` and `<output_uri>/quarantine/` (Parquet) and `<output_uri>/ingest_report.json`.

    The manifest may be in our columns or a public format as published (`config.manifest_format`, default
    'auto' from the header; public image uris = `config.images_root` (default: the CSV's folder) / IMG_ID;
    Places365 labels land in `scene3/16/365`). Reading warnings (a swapped LAT/LON header) are logged and kept in
    the result and the report.

    Resumes by default (see the module docstring); `overwrite=True` clears the output first. With `hierarchy`,
    shard rows get `cells` (list<int64>, the cell id at every level)."""
    start = time.time()
    policy = _policy(config)
    threads = max(1, config.fetch_concurrency)
    shards_uri = storage.join(output_uri, "shards")
    quarantine_uri = storage.join(output_uri, "quarantine")
    if overwrite and storage.exists(output_uri, s3):
        _clear(output_uri, s3)
    for uri in (shards_uri, quarantine_uri):
        storage.ensure_dir(uri, s3)

    if config.segmenter == GEOWORLD_SEGMENTER:
        raise ValueError("ingest.segmenter=geoworld names no model: workflows/full_pipeline.py trains the GeoWorld "
                         "segmenter first and ingests with its checkpoint folder; pass a folder or hub id here")
    ground_truth = config.segmenter == GROUND_TRUTH_SEGMENTER
    tag = source_tag(manifest_uri)
    staging_uri = storage.join(output_uri, "_staging", tag)
    fingerprint = _output_fingerprint(config, hierarchy)
    if ground_truth:
        _require_label_uri(manifest_uri, s3)
    # Driver-side storage calls retry like the tasks' do: an outage may begin at any moment.
    driver_retries = [0]

    def retrying(action):
        result, retries = storage.with_retries(action, policy, output_uri)
        driver_retries[0] += retries
        return result

    plan = retrying(lambda: _load_plan(output_uri, tag, s3))
    if plan is not None and plan.fingerprint != fingerprint:
        log.warning("ingest: settings changed since %s was ingested into %s: redoing its chunks", manifest_uri,
                    output_uri)
        for uri in (shards_uri, quarantine_uri):
            fs, _ = storage.resolve(uri, s3)
            for paths in _chunk_files(uri, plan.chunks, s3).values():
                for p in paths:
                    fs.delete_file(p)
        plan = None
    if plan is not None and retrying(lambda: _stamps(list_manifest_files(manifest_uri, s3), s3)) != plan.stamps:
        # Same chunk names, so chunks whose rows are all written stay; a grown last chunk and new ones are done.
        log.warning("ingest: %s changed since it was planned: planning it again", manifest_uri)
        plan = _plan(manifest_uri, output_uri, tag, fingerprint, config, s3, policy)
    planned_now = plan is None
    if plan is None:
        plan = _plan(manifest_uri, output_uri, tag, fingerprint, config, s3, policy)
    pending = retrying(lambda: _resume(plan, shards_uri, quarantine_uri, s3, threads))
    staged = retrying(lambda: storage.exists(storage.join(staging_uri, "duplicates.parquet"), s3))
    if pending and not planned_now and not staged:
        plan = _plan(manifest_uri, output_uri, tag, fingerprint, config, s3, policy)  # staged chunks were cleaned up
        pending = retrying(lambda: _resume(plan, shards_uri, quarantine_uri, s3, threads))
    total_pending = sum(plan.chunks[c] for c in pending)
    manifest_format = ",".join(dict.fromkeys(plan.formats))
    print(f"ingest: {manifest_uri}: {manifest_format or 'geosurge'} manifest, {plan.rows} rows in {len(plan.chunks)} "
          f"chunks, {plan.duplicates} duplicate ids; {len(plan.chunks) - len(pending)} chunks already done, "
          f"{len(pending)} to do ({total_pending} rows)", flush=True)
    for message in plan.warnings:
        log.warning("ingest: %s", message)
        print(f"ingest: warning: {message}", flush=True)

    retries, done_rows = 0, 0
    if pending:
        spec = ImageSpec(size=config.image_size, max_pixels=config.max_image_pixels)
        ds = ray.data.from_items([{"chunk": c} for c in pending], override_num_blocks=len(pending)).map_batches(
            fetch_decode_chunks,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"staging_uri": staging_uri, "has_duplicates": plan.duplicates > 0, "spec": spec, "s3": s3,
                       "policy": policy, "concurrency": config.fetch_concurrency,
                       "label_grid": config.label_grid if ground_truth else None},
            max_retries=3,  # also keeps this I/O stage out of the segmentation actors (different remote args)
        )
        if not ground_truth and config.segmenter != NO_SEGMENTER:
            ds = ds.map_batches(
                SegmentLabelMaps,
                fn_constructor_args=(config.segmenter, config.label_grid, config.segment_batch_size),
                batch_size=None,  # a whole chunk per call, so each chunk is written as one shard file
                batch_format="pyarrow",
                compute=ActorPoolStrategy(size=config.segment_actors),
                num_gpus=config.gpus_per_segment_actor,
            )
        ds = ds.map_batches(
            write_chunk_parts,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"shards_uri": shards_uri, "quarantine_uri": quarantine_uri, "s3": s3, "policy": policy,
                       "hierarchy": hierarchy},
        )
        t0 = last = time.time()
        for row in ds.iter_rows():
            done_rows += row["rows"]
            retries += row["retries"]
            now = time.time()
            if now - last >= config.progress_interval_s:
                last = now
                print(f"ingest: {done_rows}/{total_pending} rows ({100 * done_rows / max(1, total_pending):.0f}%), "
                      f"{done_rows / (now - t0):.0f} images/s, {retries} retries", flush=True)

    # Reconcile from what was written, not from what we think we wrote.
    shard_rows, by_reason = retrying(lambda: _reconcile(plan, shards_uri, quarantine_uri, s3, threads))
    result = IngestResult(
        shards_uri=shards_uri,
        quarantine_uri=quarantine_uri,
        rows_in=plan.rows,
        shard_rows=shard_rows,
        quarantined_by_reason=by_reason,
        segmenter=config.segmenter,
        segmenter_is_random=config.segmenter == RANDOM_SEGMENTER,
        seconds=time.time() - start,
        manifest_uri=manifest_uri,
        chunks=len(plan.chunks),
        chunks_resumed=len(plan.chunks) - len(pending),
        fetch_retries=retries + driver_retries[0],
        rows_processed=done_rows,
        manifest_format=manifest_format,
        warnings=list(plan.warnings),
    )
    report = json.dumps(result.to_dict(), indent=2).encode()
    retrying(lambda: storage.write_bytes(storage.join(output_uri, "ingest_report.json"), report, s3))
    print(result.summary(), flush=True)
    if not result.reconciles:
        raise RuntimeError(f"ingest lost records: {result.summary()}")
    fs, path = storage.resolve(staging_uri, s3)
    if fs.get_file_info(f"{path}/duplicates.parquet").type == pafs.FileType.File:
        fs.delete_file(f"{path}/duplicates.parquet")  # first: its absence tells a rerun to stage again
    fs.delete_dir_contents(path, missing_dir_ok=True)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:  # on S3 a folder with no marker object is gone with its last object
        pass  # the plan keeps the chunk counts; a later rerun that needs rows stages again
    return result


def _require_label_uri(manifest_uri: str, s3: storage.S3Config | None) -> None:
    for uri in list_manifest_files(manifest_uri, s3):
        if "label_uri" not in manifest_columns(uri, s3):
            raise ValueError(f"ingest.segmenter=ground_truth reads each row's label_uri; {uri} has none")


def read_quarantine(quarantine_uri: str, s3: storage.S3Config | None = None) -> pa.Table:
    """All quarantined rows of an ingest (every stage), as one table in QUARANTINE_SCHEMA."""
    fs, path = storage.resolve(quarantine_uri, s3)
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
             if i.path.endswith(".parquet") and not i.base_name.startswith(".")]
    if not files:
        return QUARANTINE_SCHEMA.empty_table()
    return pads.dataset(files, filesystem=fs, format="parquet").to_table().cast(QUARANTINE_SCHEMA)
