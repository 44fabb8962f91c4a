"""The per-chunk Ray Data stages: fetch (a thread pool per task) + decode (the task's own thread), segment (an actor
pool), write."""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from geosurge import storage
from geosurge.data.images import (
    ImageRejected,
    ImageSpec,
    decode_image,
    decode_jpeg,
    decode_label_map,
    encode_jpeg,
)
from geosurge.data.ingest.plan import CHUNK, ORDER, RETRIES, ROW
from geosurge.data.ingest.resume import part_name
from geosurge.data.manifest import (
    DECODE_STAGE,
    FETCH_STAGE,
    QUARANTINE_SCHEMA,
    validate_rows,
)
from geosurge.layout import IngestLayout

if TYPE_CHECKING:  # every fetch/write worker imports this module: scipy/h3 and torch only where they are used
    from geosurge.geo.geocells import GeocellHierarchy

STATUS_COLUMNS = ["stage", "reason", "detail"]
_INTERNAL = [CHUNK, ROW, ORDER, RETRIES]
_FETCHERS: dict[tuple, storage.Fetcher] = {}
_FETCHERS_LOCK = threading.Lock()


def worker_fetcher(s3: storage.S3Config | None, policy: storage.RetryPolicy, concurrency: int,
                   max_bytes: int | None) -> storage.Fetcher:
    """This worker process's Fetcher for these settings: its keep-alive connections (and S3 client) serve every
    chunk the process fetches, where one per task would open `concurrency` new connections per chunk."""
    key = (dataclasses.astuple(s3) if s3 else None, policy, concurrency, max_bytes)
    with _FETCHERS_LOCK:
        if key not in _FETCHERS:
            if len(_FETCHERS) >= 4:  # a process serving several ingests with other settings: keep it bounded
                _FETCHERS.clear()
            _FETCHERS[key] = storage.Fetcher(s3, policy, pool_size=concurrency, max_bytes=max_bytes)
        return _FETCHERS[key]


def fetch_decode_chunks(batch: pa.Table, layout: IngestLayout, tag: str, has_duplicates: bool, spec: ImageSpec,
                        s3: storage.S3Config | None, policy: storage.RetryPolicy, concurrency: int,
                        label_grid: int | None = None, max_bytes: int | None = storage.DEFAULT_MAX_IMAGE_BYTES,
                        allowed_prefixes: tuple[str, ...] = (), chunk_timeout_s: float | None = None) -> pa.Table:
    """Ray Data UDF, one input row per chunk: read the staged chunk (of the manifest staged under `tag`),
    validate it (manifest checks + the global duplicate list), fetch the images of the valid rows on `concurrency`
    threads and decode them on this one.

    Every row of the chunk comes out, with `image` (and with `label_grid`, the ground-truth `label_map` read from
    `label_uri`), `stage`/`reason`/`detail` (null when the row is fine) and `_retries`. No read takes more than
    `max_bytes` (too_large); rows not fetched and decoded within `chunk_timeout_s` are quarantined as `timeout`."""
    fetcher = worker_fetcher(s3, policy, concurrency, max_bytes)
    out = []
    for name in batch.column("chunk").to_pylist():
        staged, chunk_retries = storage.with_retries(
            lambda name=name: _read_parquet(layout.staged_chunk(tag, name), s3), policy, name)
        known = pa.nulls(staged.num_rows, pa.string())
        if has_duplicates:
            dups, more = storage.with_retries(lambda name=name: _chunk_duplicates(layout.duplicates(tag), name, s3),
                                              policy, name)
            chunk_retries += more
            if dups.num_rows:
                detail = np.full(staged.num_rows, None, dtype=object)
                detail[dups.column(ROW).to_numpy()] = dups.column("detail").to_numpy(zero_copy_only=False)
                known = pa.array(detail, pa.string())
        rows = _fetch_rows(validate_rows(staged, known_duplicates=known, allowed_prefixes=allowed_prefixes), fetcher,
                           spec, concurrency, label_grid, chunk_timeout_s)
        if chunk_retries and rows.num_rows:  # the chunk's own reads: counted on its first row
            retries = rows.column(RETRIES).to_numpy().copy()
            retries[0] += chunk_retries
            rows = rows.set_column(rows.schema.get_field_index(RETRIES), RETRIES, pa.array(retries, pa.int32()))
        out.append(rows)
    return pa.concat_tables(out, promote_options="permissive")


def _read_parquet(uri: str, s3: storage.S3Config | None) -> pa.Table:
    fs, path = storage.resolve(uri, s3)
    return pq.read_table(path, filesystem=fs)


def _chunk_duplicates(duplicates_uri: str, name: str, s3: storage.S3Config | None) -> pa.Table:
    fs, path = storage.resolve(duplicates_uri, s3)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(filter=pc.field(CHUNK) == name)


def _fetch_rows(rows: pa.Table, fetcher: storage.Fetcher, spec: ImageSpec, concurrency: int,
                label_grid: int | None, timeout_s: float | None = None) -> pa.Table:
    """Fetch and decode the rows not already quarantined. Reads run on `concurrency` threads, so that their waits
    (HTTP, S3, a network filesystem) overlap; decoding and encoding run here, on the task's own thread, one image
    at a time, with at most 2 × `concurrency` fetched images waiting. A fetch task holds one CPU: when the threads
    also decoded, up to 16 of them contended for that one core (profile: a fifth of the workers' time waiting on
    the pool's lock, and on local disk 2 threads beat 16 by 1.2×; now the thread count makes no difference there)."""
    n = rows.num_rows
    reasons = rows.column("reason").to_pylist()
    stages, details = rows.column("stage").to_pylist(), rows.column("detail").to_pylist()
    uris = rows.column("uri").to_pylist()
    label_uris = rows.column("label_uri").to_pylist() if label_grid else [None] * n
    images: list[bytes | None] = [None] * n
    label_maps: list[bytes | None] = [None] * n
    retries = [0] * n
    fetched: queue.SimpleQueue = queue.SimpleQueue()

    def read(i: int) -> None:  # on a fetch thread: bytes (or the error) for the decoding thread
        try:
            fetched.put((i, *_read_row(fetcher, uris[i], label_uris[i] if label_grid else None)))
        except BaseException as e:  # a bug, not a bad row: raised on the task's thread, which fails the task
            fetched.put((i, e, None, 0))

    def decode(i: int, image: bytes | BaseException, label: bytes | BaseException | None, took: int) -> None:
        retries[i] = took
        try:
            if isinstance(image, BaseException):
                raise image
            images[i] = encode_jpeg(decode_image(image, spec))
            if label_grid:
                if isinstance(label, BaseException):
                    raise label
                label_maps[i] = decode_label_map(label, spec, label_grid).tobytes()
        except storage.FetchFailed as e:
            reasons[i], details[i], stages[i], images[i] = e.reason, e.detail, FETCH_STAGE, None
        except ImageRejected as e:
            reasons[i], details[i], stages[i], images[i] = e.reason, e.detail, DECODE_STAGE, None

    todo = [i for i in range(n) if reasons[i] is None]
    decoded: set[int] = set()
    if todo:
        threads = max(1, min(concurrency, len(todo)))
        queued, in_flight = iter(todo), 0
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pool = ThreadPoolExecutor(max_workers=threads)
        try:
            for i in itertools.islice(queued, 2 * threads):
                pool.submit(read, i)
                in_flight += 1
            while in_flight:
                try:
                    item = fetched.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                in_flight -= 1
                following = next(queued, None)
                if following is not None:
                    pool.submit(read, following)
                    in_flight += 1
                decode(*item)
                decoded.add(item[0])
                if deadline is not None and time.monotonic() > deadline:
                    break
        finally:
            # a chunk's total time is bounded too: what is not done by then is quarantined and its thread left
            # behind (each read has its own deadline, so it ends soon; it only puts into a queue nobody reads)
            pool.shutdown(wait=False, cancel_futures=True)
    for i in todo:
        if i not in decoded:
            images[i] = label_maps[i] = None
            reasons[i], stages[i] = storage.TIMEOUT, FETCH_STAGE
            details[i] = f"{storage.redact_uri(uris[i])}: not fetched and decoded within chunk_timeout_s={timeout_s}"
    rows = rows.drop_columns(STATUS_COLUMNS).append_column("image", pa.array(images, pa.binary()))
    if label_grid:
        grid = pa.array([label_grid if m is not None else None for m in label_maps], pa.int32())
        rows = rows.append_column("label_map", pa.array(label_maps, pa.binary())).append_column("label_grid", grid)
    return (rows.append_column("stage", pa.array(stages, pa.string()))
            .append_column("reason", pa.array(reasons, pa.string()))
            .append_column("detail", pa.array(details, pa.string()))
            .append_column(RETRIES, pa.array(retries, pa.int32())))


def _read_row(fetcher: storage.Fetcher, uri: str, label_uri: str | None) -> tuple:
    """(image bytes or FetchFailed, label bytes or FetchFailed or None, retries): a failed read is handed on, not
    raised, so the row's image is still decoded first, and a row whose image is bad says so even when its label
    map is missing too."""
    try:
        image, took = fetcher.read(uri)
    except storage.FetchFailed as e:
        return e, None, e.retries
    if label_uri is None:
        return image, None, took
    try:
        label, more = fetcher.read(label_uri)
    except storage.FetchFailed as e:
        return image, e, took + e.retries
    return image, label, took + more


class SegmentLabelMaps:
    """Ray Data actor: one segmentation model per actor, label maps for the rows of a block that decoded (the
    others pass through untouched), `batch_size` images at a time."""

    def __init__(self, segmenter: str, grid: int, batch_size: int = 32, s3: storage.S3Config | None = None):
        from geosurge.segmentation.segmenter import Segmenter  # torch: in the segmentation actors only

        self.segmenter = Segmenter(segmenter, grid, s3=s3)  # s3: a segmenter folder staged in the bucket
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
    named by `part_name` (`<chunk>_<first row:05d>.parquet`, so a retried task rewrites the same file). Returns one
    summary row per chunk for the driver's progress and retry count."""
    summary = []
    chunks = batch.column(CHUNK)
    for name in pc.unique(chunks).to_pylist():
        rows = batch.filter(pc.equal(chunks, name))
        part = part_name(name, pc.min(rows.column(ROW)).as_py())
        failed = pc.is_valid(rows.column("reason"))
        retries = int(pc.sum(rows.column(RETRIES)).as_py() or 0)
        ok = rows.filter(pc.invert(failed))
        if ok.num_rows:
            ok = ok.drop_columns([c for c in [*STATUS_COLUMNS, *_INTERNAL] if c in ok.column_names])
            if hierarchy is not None:
                # training labels: -1 (IGNORE_CELL) where the build dropped the point's cell, never a far cell
                cells = hierarchy.assign(ok.column("lat").to_numpy(), ok.column("lon").to_numpy(), nearest=False)
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
