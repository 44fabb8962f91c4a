"""What an ingest output holds: which chunks are done (resume), the rows written by reason (reconcile, from Parquet
footers and the quarantine `reason` column), clearing, and reading the quarantine back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from geosurge import storage
from geosurge.data.manifest import QUARANTINE_SCHEMA
from geosurge.layout import IngestLayout


def clear(uri: str, s3: storage.S3Config | None) -> None:
    fs, path = storage.resolve(uri, s3)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(path)
    fs.create_dir(path, recursive=True)


def part_name(chunk: str, first_row: int) -> str:
    """A chunk's file in shards/ or quarantine/: `<chunk>_<first row:05d>.parquet` (so a retried task rewrites
    the same file)."""
    return f"{chunk}_{first_row:05d}.parquet"


def _chunk_of_file(name: str) -> str | None:
    """`<chunk>_<part>.parquet` → chunk; None for anything else (temporary files, other writers)."""
    if name.startswith(".") or not name.endswith(".parquet") or "_" not in name:
        return None
    return name[: -len(".parquet")].rsplit("_", 1)[0]


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


def delete_chunks(chunks: dict[str, int], layout: IngestLayout, s3: storage.S3Config | None) -> None:
    """Delete every file these chunks have in shards and quarantine."""
    for uri in (layout.shards, layout.quarantine):
        fs, _ = storage.resolve(uri, s3)
        for paths in _chunk_files(uri, chunks, s3).values():
            for p in paths:
                fs.delete_file(p)


def pending_chunks(chunks: dict[str, int], layout: IngestLayout, s3: storage.S3Config | None,
                   threads: int) -> list[str]:
    """Chunks still to do. Complete chunks (every row in shards or quarantine) are kept; a partial chunk's files
    are deleted so that it is redone whole."""
    fs, _ = storage.resolve(layout.shards, s3)
    by_chunk: dict[str, list[str]] = {}
    for uri in (layout.shards, layout.quarantine):
        for name, paths in _chunk_files(uri, chunks, s3).items():
            by_chunk.setdefault(name, []).extend(paths)
    counted = _footer_rows(fs, [p for paths in by_chunk.values() for p in paths], threads)
    pending = []
    for name, rows in chunks.items():
        paths = by_chunk.get(name, [])
        if sum(counted[p] for p in paths) == rows:
            continue
        for p in paths:
            fs.delete_file(p)
        pending.append(name)
    return pending


def count_written(chunks: dict[str, int], layout: IngestLayout, s3: storage.S3Config | None,
                  threads: int) -> tuple[int, dict[str, int]]:
    """(shard rows, quarantined rows by reason) of these chunks, from the files themselves."""
    fs, _ = storage.resolve(layout.shards, s3)
    shard_paths = [p for paths in _chunk_files(layout.shards, chunks, s3).values() for p in paths]
    shard_rows = sum(_footer_rows(fs, shard_paths, threads).values())
    quarantine_paths = [p for paths in _chunk_files(layout.quarantine, chunks, s3).values() for p in paths]

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


def read_quarantine(quarantine_uri: str, s3: storage.S3Config | None = None) -> pa.Table:
    """All quarantined rows of an ingest (every stage), as one table in QUARANTINE_SCHEMA."""
    fs, path = storage.resolve(quarantine_uri, s3)
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
             if i.path.endswith(".parquet") and not i.base_name.startswith(".")]
    if not files:
        return QUARANTINE_SCHEMA.empty_table()
    return pads.dataset(files, filesystem=fs, format="parquet").to_table().cast(QUARANTINE_SCHEMA)
