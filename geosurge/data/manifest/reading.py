"""Reading a manifest whole (`read_manifest`: any format, validated) or streaming it batch by batch
(`plan_manifest_reading` once per file, then `iter_manifest_batches`)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from geosurge.data.manifest.files import (
    _check_exists,
    _csv_head,
    _head,
    _parent_uri,
    _read_raw,
)
from geosurge.data.manifest.gws15k import GWS15K, conform_gws15k_batch, gws15k_columns, read_gws15k
from geosurge.data.manifest.holdout import NO_SPLIT_FORMATS, assign_holdout, train_where_unsplit
from geosurge.data.manifest.img2dataset import (
    IMG2DATASET,
    conform_img2dataset_batch,
    img2dataset_columns,
    read_img2dataset,
)
from geosurge.data.manifest.public import (
    _PUBLIC_FORMATS,
    _public_columns,
    conform_places365_batch,
    latlon_swap_warning,
    read_places365_csv,
)
from geosurge.data.manifest.roots import resolve_images_root
from geosurge.data.manifest.schema import (
    FORMATS,
    QUARANTINE_SCHEMA,
    REASONS,
    REQUIRED_COLUMNS,
    ManifestReport,
    _array,
    _as_string,
    _conform,
    _coord_column,
    _require_columns,
    _table_warnings,
    _with_warnings,
)
from geosurge.data.manifest.validate import manifest_row_ok, validate_manifest
from geosurge.storage import S3Config, is_s3, join, resolve

# --------------------------------------------------------------------------------------------- reading


def detect_format(uri: str, s3: S3Config | None = None) -> str:
    """One of FORMATS, from the columns (our names -> 'geosurge'; IMG_ID/LAT/LON -> a public format; a `url`
    column without `uri` -> 'img2dataset').

    Among the public formats the file name decides when it names the set (mp16, im2gps, yfcc); otherwise ids
    that are relative paths mean MP-16, an AUTHOR column means Im2GPS3k, and anything else reads as YFCC4k.
    Im2GPS, YFCC26k and GWS15k share their header with one of those, so they are never guessed: name them.
    """
    head = _head(uri, s3)
    cols = head.column_names
    lower = {c.lower() for c in cols}
    if {"image_id", "uri"} <= set(cols):
        return "geosurge"
    if "img_id" not in lower and "url" in lower and "uri" not in lower:  # checked after IMG_ID: as before for those
        return IMG2DATASET
    if "img_id" not in lower:
        raise ValueError(
            f"cannot tell the manifest format of {uri}: expected our columns {list(REQUIRED_COLUMNS)}, the "
            f"public IMG_ID/LAT/LON columns or an img2dataset url column; found columns: {cols}"
        )
    base = posixpath.basename(uri.rstrip("/")).lower()
    for hint, fmt in (("mp16", "mp16"), ("mp-16", "mp16"), ("im2gps", "im2gps3k"), ("yfcc", "yfcc4k")):
        if hint in base:
            return fmt
    img = head.column(next(c for c in cols if c.lower() == "img_id"))
    if pc.any(pc.match_substring(_as_string(img), "/")).as_py():
        return "mp16"
    return "im2gps3k" if "author" in lower else "yfcc4k"


def read_geosurge(uri: str, s3: S3Config | None = None) -> pa.Table:
    """Our own format (Parquet or CSV with the MANIFEST_SCHEMA column names) -> manifest table, before validation."""
    raw = _read_raw(uri, s3, ("image_id", "uri", "lat", "lon", "split"))
    _require_columns(raw.column_names, REQUIRED_COLUMNS, f"manifest {uri}")
    replace = {
        "image_id": _as_string(raw.column("image_id")),
        "uri": _as_string(raw.column("uri")),
        "lat": _coord_column(raw.column("lat")),
        "lon": _coord_column(raw.column("lon")),
    }
    if "split" in raw.column_names:  # an empty CSV cell means "no split", not a split named ""
        split = _as_string(raw.column("split"))
        replace["split"] = pc.if_else(pc.fill_null(pc.equal(split, ""), False), pa.scalar(None, pa.string()), split)
    return _with_warnings(_conform(raw, replace), _table_warnings(raw))


def read_manifest(
    uri: str,
    format: str = "auto",
    images_root: str | None = None,
    s3: S3Config | None = None,
    validate: bool = True,
) -> tuple[pa.Table, pa.Table, ManifestReport]:
    """Read any supported manifest and validate it: (clean manifest, quarantine, report).

    `format`: 'auto' (see `detect_format`) or one of FORMATS. With `validate=False` the table comes back as
    read, with an empty quarantine and a report that counts every row as kept.
    """
    fmt = detect_format(uri, s3) if format == "auto" else format
    if fmt == "geosurge":
        table = read_geosurge(uri, s3)
    elif fmt in _PUBLIC_FORMATS:
        table = read_places365_csv(uri, fmt, images_root, s3)
    elif fmt == IMG2DATASET:
        table = read_img2dataset(uri, images_root, s3)
    elif fmt == GWS15K:
        table = read_gws15k(uri, images_root, s3)
    else:
        raise ValueError(f"unknown manifest format {format!r}; expected 'auto' or one of {FORMATS}")
    if validate:
        return validate_manifest(table)
    counts = {r: 0 for r in REASONS}
    report = ManifestReport(table.num_rows, table.num_rows, counts, _table_warnings(table))
    return table, QUARANTINE_SCHEMA.empty_table(), report


# --------------------------------------------------------------------------------------------- streaming

MANIFEST_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".csv.bz2", ".csv.zst")


def is_manifest_name(name: str) -> bool:
    """Whether a file name is one a manifest folder (or retraining's incoming/) is read from: by suffix, any case."""
    return name.lower().endswith(MANIFEST_SUFFIXES)


def is_parquet_name(uri: str) -> bool:
    return uri.lower().endswith((".parquet", ".pq"))


def list_manifest_files(uri: str, s3: S3Config | None = None) -> list[str]:
    """The files of a manifest, sorted: the file itself, or every Parquet/CSV file under a folder (names that
    start with '.' or '_' are skipped, as Parquet readers do). URIs keep the spelling of `uri`."""
    fs, path = resolve(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"manifest not found: {uri}")
    if info.type == pafs.FileType.File:
        return [uri]
    found = []
    for item in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        rel = posixpath.relpath(item.path, path) if is_s3(uri) else os.path.relpath(item.path, path)
        parts = rel.replace(os.sep, "/").split("/")
        if item.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in parts):
            continue
        if is_manifest_name(item.base_name):
            found.append(join(uri, *parts))
    if not found:
        raise FileNotFoundError(f"manifest folder {uri} holds no Parquet or CSV file")
    return sorted(found)


def parquet_row_count(uri: str, s3: S3Config | None = None) -> int:
    """Rows of a Parquet file, from its footer (no row is read)."""
    fs, path = resolve(uri, s3)
    return pq.read_metadata(path, filesystem=fs).num_rows


def conform_geosurge_batch(batch: pa.Table) -> pa.Table:
    """`read_geosurge` for one batch: ids and uris as text, empty split cells as null. Coordinates stay as
    read (numbers or text); `validate_rows` parses them and quotes the ones that are not numbers."""
    _require_columns(batch.column_names, REQUIRED_COLUMNS, "manifest")
    replace = {"image_id": _as_string(batch.column("image_id")), "uri": _as_string(batch.column("uri")),
               "lat": _array(batch.column("lat")), "lon": _array(batch.column("lon"))}
    if "split" in batch.column_names:
        split = _as_string(batch.column("split"))
        replace["split"] = pc.if_else(pc.fill_null(pc.equal(split, ""), False), pa.scalar(None, pa.string()), split)
    return _conform(batch, replace)


def _iter_raw_batches(uri: str, rows: int, s3: S3Config | None = None) -> Iterator[pa.Table]:
    """Stream one manifest file (Parquet or CSV, optionally compressed) as tables of exactly `rows` rows (the last
    one shorter), as stored: CSV cells are all text; memory stays at a few batches."""
    fs, path = resolve(uri, s3)
    _check_exists(fs, path, uri)
    parquet = is_parquet_name(path)
    with (fs.open_input_file(path) if parquet else fs.open_input_stream(path, compression="detect")) as f:
        if parquet:
            reader = pq.ParquetFile(f)
            batches = reader.iter_batches(batch_size=min(rows, 65_536))
        else:
            names = _csv_head(fs, path).column_names
            csv = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 22),
                                 convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names}))
            batches = iter(csv)
        pending: list[pa.RecordBatch] = []
        held = 0
        for batch in batches:
            pending.append(batch)
            held += batch.num_rows
            while held >= rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, rows).combine_chunks()
                rest = table.slice(rows)
                pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield pa.Table.from_batches(pending).combine_chunks()


SWAP_SAMPLE_ROWS = 100_000  # rows at the head of a public file that decide whether its LAT/LON names are swapped


@dataclass(frozen=True)
class ManifestReading:
    """How every streamed batch of one manifest file becomes manifest columns, decided once from the file's head
    (`plan_manifest_reading`) and applied to each batch alike (`conform`). Small and picklable: it travels to
    the Ray task that streams the file."""

    uri: str
    format: str  # one of FORMATS
    images_root: str | None = None  # formats other than ours: where relative ids/urls are joined (resolved)
    latlon_swapped: bool = False  # public formats: the columns named LAT and LON hold lon and lat
    warnings: tuple[str, ...] = ()  # what the head showed (a swapped header), for the caller's report
    val_fraction: float = 0.0  # rows with no split of their own: this share goes to `val` by id hash (holdout.py)

    def conform(self, batch: pa.Table) -> pa.Table:
        """One raw batch -> manifest columns, before validation (see `batch_warnings` for label problems)."""
        table = self._conform(batch)
        # MP-16 has no splits at all (its reader says "train"); img2dataset tables and our own columns may leave
        # `split` empty: those rows are held out by id hash
        table = assign_holdout(table, self.val_fraction, every_row=self.format in NO_SPLIT_FORMATS)
        return train_where_unsplit(table) if self.format == IMG2DATASET else table  # the rest trains

    def _conform(self, batch: pa.Table) -> pa.Table:
        if self.format == "geosurge":
            return conform_geosurge_batch(batch)
        assert self.images_root is not None
        if self.format == IMG2DATASET:
            return conform_img2dataset_batch(batch, self.images_root, self.uri)
        if self.format == GWS15K:
            return conform_gws15k_batch(batch, self.images_root, self.uri)
        return conform_places365_batch(batch, self.format, self.images_root, self.latlon_swapped, self.uri)


def batch_warnings(table: pa.Table) -> list[str]:
    """Problems a reader or `ManifestReading.conform` found in a table (e.g. labels kept as text)."""
    return _table_warnings(table)


def manifest_columns(uri: str, s3: S3Config | None = None) -> list[str]:
    """Column names of one manifest file, from its Parquet footer or its CSV header."""
    fs, path = resolve(uri, s3)
    _check_exists(fs, path, uri)
    if is_parquet_name(path):
        return pq.read_schema(path, filesystem=fs).names
    return _csv_head(fs, path).column_names


def resolve_manifest_format(uri: str, format: str = "auto", s3: S3Config | None = None) -> str:
    """The format of one manifest file ('auto': `detect_format`), its required columns checked on the header."""
    if format not in ("auto", *FORMATS):
        raise ValueError(f"unknown manifest format {format!r}; expected 'auto' or one of {FORMATS}")
    fmt = detect_format(uri, s3) if format == "auto" else format
    names = manifest_columns(uri, s3)
    if fmt == "geosurge":
        _require_columns(names, REQUIRED_COLUMNS, f"manifest {uri}")
    elif fmt == IMG2DATASET:
        img2dataset_columns(names, uri)
    elif fmt == GWS15K:
        gws15k_columns(names, uri)
    else:
        _public_columns(names, fmt, uri)
    return fmt


def plan_manifest_reading(uri: str, format: str = "auto", images_root: str | None = None,
                          s3: S3Config | None = None, sample_rows: int = SWAP_SAMPLE_ROWS,
                          val_fraction: float = 0.0) -> ManifestReading:
    """Decide how to stream one manifest file: its format ('auto' or one of FORMATS) and, for the other formats,
    the images root (`resolve_images_root`; default: the folder holding the file, for MP-16 too) and, for the
    public formats, whether the LAT/LON header names are swapped, judged on the first `sample_rows` rows (memory
    stays bounded on a 4.72 M-row MP-16 file). `val_fraction`: see `ManifestReading`."""
    fmt = resolve_manifest_format(uri, format, s3)
    if fmt == "geosurge":
        return ManifestReading(uri, fmt, val_fraction=val_fraction)
    root = resolve_images_root(images_root) if images_root is not None else _parent_uri(uri)
    if fmt in (IMG2DATASET, GWS15K):  # our own coordinate names: no swapped header to look for
        return ManifestReading(uri, fmt, root, val_fraction=val_fraction)
    head = next(_iter_raw_batches(uri, sample_rows, s3), None)
    messages: tuple[str, ...] = ()
    if head is not None:
        sample = f" on the first {head.num_rows} rows"
        swap = latlon_swap_warning(head, fmt, uri, sample)
        messages = (swap,) if swap else ()
    return ManifestReading(uri, fmt, root, bool(messages), messages, val_fraction)


def iter_manifest_batches(uri: str, rows: int, s3: S3Config | None = None,
                          reading: ManifestReading | None = None) -> Iterator[pa.Table]:
    """Stream one manifest file (Parquet or CSV, optionally compressed) as tables of exactly `rows` rows (the last
    one shorter), conformed by `reading` (default: our format, `conform_geosurge_batch`); memory stays at a few
    batches. For a public format, pass `plan_manifest_reading(uri, ...)`: it is decided once, from the head.

    CSV cells are all read as text: a streaming reader cannot go back when a later block disagrees with the
    types it inferred from the first one (label and probability columns are cast per batch where they parse)."""
    reading = reading or ManifestReading(uri, "geosurge")
    for batch in _iter_raw_batches(uri, rows, s3):
        yield reading.conform(batch)


def manifest_coordinates(uri: str, split: str | None = None, s3: S3Config | None = None,
                         batch_rows: int = 200_000, format: str = "geosurge", images_root: str | None = None,
                         val_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) float64 arrays of the manifest's valid rows (of `split`, when given), streamed batch by batch:
    what the geocell hierarchy is built from, without holding the manifest's other columns. Rows with bad
    coordinates or ids are left out as ingest quarantines them; a duplicated id counts once per copy. The
    manifest is read as ingest reads it (`format`, `images_root`, `val_fraction`), so both agree on every
    row's split."""
    lats, lons = [], []
    for file_uri in list_manifest_files(uri, s3):
        reading = plan_manifest_reading(file_uri, format, images_root, s3, val_fraction=val_fraction)
        for batch in iter_manifest_batches(file_uri, batch_rows, s3, reading):
            keep = manifest_row_ok(batch)
            if split is not None:
                keep &= (batch.column("split").to_numpy(zero_copy_only=False) == split)
            lats.append(batch.column("lat").to_numpy(zero_copy_only=False)[keep].astype(np.float64))
            lons.append(batch.column("lon").to_numpy(zero_copy_only=False)[keep].astype(np.float64))
    if not lats:
        return np.empty(0), np.empty(0)
    return np.concatenate(lats), np.concatenate(lons)
