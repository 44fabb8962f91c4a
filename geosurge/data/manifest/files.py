"""Raw access to one manifest file (Parquet or CSV, optionally compressed), before any column logic."""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from geosurge.storage import S3Config, is_s3, resolve

# --------------------------------------------------------------------------------------------- reading


def _is_parquet(fs: pafs.FileSystem, path: str) -> bool:
    if path.lower().endswith((".parquet", ".pq")):
        return True
    return fs.get_file_info(path).type == pafs.FileType.Directory  # a folder of Parquet files (Ray output)


def _check_exists(fs: pafs.FileSystem, path: str, uri: str) -> None:
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"manifest not found: {uri}")


def _csv_head(fs: pafs.FileSystem, path: str, size: int = 1 << 16) -> pa.Table:
    """The first rows of a CSV (everything types as text), enough for the header and a look at the ids."""
    with fs.open_input_stream(path, compression="detect") as f:
        head = f.read(size)
    if len(head) == size and b"\n" in head:
        head = head[: head.rfind(b"\n") + 1]  # drop the cut-off last line
    if not head.strip():
        raise ValueError("manifest CSV is empty (no header line)")
    names = pacsv.read_csv(pa.BufferReader(head.split(b"\n", 1)[0] + b"\n")).column_names
    return pacsv.read_csv(
        pa.BufferReader(head), convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names})
    )


def _read_raw(uri: str, s3: S3Config | None, text_columns: tuple[str, ...]) -> pa.Table:
    """Parquet or CSV (optionally compressed). CSV columns named in `text_columns` (any case) are read as text:
    ids must not turn into integers, and coordinates are parsed by us so one bad cell cannot fail the file."""
    fs, path = resolve(uri, s3)
    _check_exists(fs, path, uri)
    if _is_parquet(fs, path):
        return pq.read_table(path, filesystem=fs)
    names = _csv_head(fs, path).column_names
    wanted = {c.lower() for c in text_columns}
    types = {c: pa.string() for c in names if c.lower() in wanted}
    with fs.open_input_stream(path, compression="detect") as f:
        return pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types=types))


def _head(uri: str, s3: S3Config | None) -> pa.Table:
    """The first rows of a manifest: enough to see its columns and a few ids."""
    fs, path = resolve(uri, s3)
    _check_exists(fs, path, uri)
    if _is_parquet(fs, path):
        return pads.dataset(path, filesystem=fs, format="parquet").head(100)
    return _csv_head(fs, path)


def _parent_uri(uri: str) -> str:
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.dirname(uri.rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))
