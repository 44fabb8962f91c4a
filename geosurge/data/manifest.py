"""Image-set manifests: one schema for every image set, readers for the public formats, and validation.

A manifest is a table with one row per image: `image_id`, `uri`, `lat`, `lon`, an optional `split`, the optional
Places365 scene labels (`scene3`, `scene16`, `scene365`) and any extra columns, passed through unchanged.

Validation never drops a record silently: every input row ends up either in the clean manifest or in the
quarantine table (`QUARANTINE_SCHEMA`) with a reason code and a human-readable detail, and
`ManifestReport.reconciles` checks that the counts add up.

Readers (all go through `geosurge.data.storage.resolve`, so local paths, file:// and s3:// all work):

* our own format: Parquet or CSV with the schema's column names (`read_geosurge`);
* MP-16 `mp16_places365.csv` (`read_mp16`): `IMG_ID` is a relative path such as `34/8d/9055806529.jpg`;
* Im2GPS3k `im2gps3k_places365.csv` (`read_im2gps3k`) and YFCC4k `yfcc4k_places365.csv` (`read_yfcc4k`).

One published copy of the Im2GPS3k CSV swaps the LAT and LON header names while the values stay lat,lon; the
public-format readers detect that (`check_latlon_swap`), fix it and say so.
"""

from __future__ import annotations

import json
import os
import posixpath
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from geosurge.data.storage import S3Config, is_s3, join, resolve

# --------------------------------------------------------------------------------------------- schemas

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "uri", "lat", "lon")
LABEL_COLUMNS: tuple[str, ...] = ("scene3", "scene16", "scene365")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=True),
        pa.field("scene3", pa.int64(), nullable=True),  # Places365 S3_Label (indoor / natural / urban)
        pa.field("scene16", pa.int64(), nullable=True),  # Places365 S16_Label
        pa.field("scene365", pa.int64(), nullable=True),  # Places365 S365_Label
    ]
)
"""Core manifest columns. The label columns appear only when the source has them; extra columns follow."""

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)

STAGE = "manifest"
BAD_COORDINATES = "bad_coordinates"
DUPLICATE_ID = "duplicate_id"
MISSING_ID = "missing_id"
MISSING_URI = "missing_uri"
# Order = priority: a row gets the first reason that applies, so each row is quarantined exactly once.
REASONS: tuple[str, ...] = (MISSING_ID, MISSING_URI, BAD_COORDINATES, DUPLICATE_ID)

FORMATS: tuple[str, ...] = ("geosurge", "mp16", "im2gps3k", "yfcc4k")
_PUBLIC_FORMATS = ("mp16", "im2gps3k", "yfcc4k")
_PUBLIC_LABELS = {"s3_label": "scene3", "s16_label": "scene16", "s365_label": "scene365"}
# Reader warnings travel with the table in its schema metadata, so validate_manifest can report them.
_WARNINGS_KEY = b"geosurge.manifest.warnings"

# Swap detection thresholds (see check_latlon_swap).
_SWAP_RANGE_SHARE = 0.01  # share of a column beyond +-90 that counts as "meaningful"
_SWAP_RANGE_MIN_ROWS = 5  # ...and never fewer rows than this
_SWAP_LAND_MARGIN = 0.30  # land-share gain the swapped reading needs when ranges cannot decide
_SWAP_LAND_MIN_SHARE = 0.50  # ...and the swapped reading must itself look like photos (mostly land)
_SWAP_LAND_VETO = 0.10  # land-share loss of the swapped reading that vetoes a range-based swap
_SWAP_LAND_MIN_ROWS = 20  # fewer rows than this: the land share is too noisy to act on


# --------------------------------------------------------------------------------------------- report


@dataclass
class ManifestReport:
    """What validation did: rows in and out, quarantined rows per reason, and warnings."""

    rows_in: int
    rows_out: int
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        """Total quarantined rows."""
        return sum(self.quarantined_by_reason.values())

    @property
    def reconciles(self) -> bool:
        """True when every input row is accounted for: rows_in == rows_out + quarantined."""
        return self.rows_in == self.rows_out + self.quarantined

    def summary(self) -> str:
        """One line of counts, then one line per warning."""
        reasons = ", ".join(f"{r}={n}" for r, n in self.quarantined_by_reason.items() if n)
        line = (
            f"manifest: {self.rows_in} rows in, {self.rows_out} kept, {self.quarantined} quarantined"
            + (f" ({reasons})" if reasons else "")
            + ("; counts reconcile" if self.reconciles else "; COUNTS DO NOT RECONCILE")
        )
        return "\n".join([line, *(f"warning: {w}" for w in self.warnings)])


# --------------------------------------------------------------------------------------------- helpers


def _require_columns(found: list[str], required: tuple[str, ...] | list[str], what: str) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise ValueError(f"{what} is missing required column(s) {missing}; found columns: {list(found)}")


def _array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _as_string(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = _array(col)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr if arr.type == pa.string() else pc.cast(arr, pa.string())


def _table_warnings(table: pa.Table) -> list[str]:
    meta = table.schema.metadata or {}
    return list(json.loads(meta[_WARNINGS_KEY])) if _WARNINGS_KEY in meta else []


def _with_warnings(table: pa.Table, messages: list[str]) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.pop(_WARNINGS_KEY, None)
    if messages:
        meta[_WARNINGS_KEY] = json.dumps(messages).encode()
    return table.replace_schema_metadata(meta or None)


class _Coords(NamedTuple):
    values: np.ndarray  # float64, NaN where missing or unparseable
    missing: np.ndarray  # null or empty text
    unparsed: np.ndarray  # text that is not a number
    raw: pa.Array | None  # the trimmed text, when the column is text


def _coords(col: pa.ChunkedArray | pa.Array) -> _Coords:
    """Numeric view of a coordinate column that may be numeric or text (CSV cells we could not parse)."""
    arr = _array(col)
    n = len(arr)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        trimmed = pc.utf8_trim_whitespace(arr)
        empty = pc.fill_null(pc.equal(trimmed, ""), True)
        missing = empty.to_numpy(zero_copy_only=False)
        text = pc.if_else(empty, pa.scalar(None, arr.type), trimmed)
        try:
            values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
            unparsed = np.zeros(n, dtype=bool)
        except pa.ArrowInvalid:
            # Some cell is not a number: parse the rest anyway and flag those cells (no row is dropped here).
            values = pd.to_numeric(pd.Series(text.to_numpy(zero_copy_only=False)), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            nan_text = pc.fill_null(pc.match_substring_regex(pc.utf8_lower(text), r"^[+-]?nan$"), False)
            unparsed = ~missing & np.isnan(values) & ~nan_text.to_numpy(zero_copy_only=False)
        return _Coords(values.astype(np.float64, copy=False), missing, unparsed, text)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_null(arr.type)
            or pa.types.is_decimal(arr.type)):
        raise TypeError(f"coordinate column has type {arr.type}; expected a number or text")
    floats = pc.cast(arr, pa.float64())
    missing = arr.is_null().to_numpy(zero_copy_only=False)
    values = floats.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return _Coords(values, missing, np.zeros(n, dtype=bool), None)


def _coord_column(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """float64 column, or the (trimmed) text when some cells are not numbers, so validation can quote them."""
    c = _coords(col)
    if c.raw is not None and c.unparsed.any():
        return pc.cast(c.raw, pa.string())
    return pa.array(c.values, type=pa.float64(), mask=c.missing)


def _int_labels(col: pa.ChunkedArray, name: str, messages: list[str]) -> pa.ChunkedArray | pa.Array:
    try:
        return pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        messages.append(f"column {name!r} is not integer Places365 labels ({col.type}); kept as it is")
        return col


def _fmt_float(values: np.ndarray) -> pa.Array:
    """Numbers as text the way Python prints floats ('91.0', 'inf', 'nan')."""
    text = pc.cast(pa.array(values, type=pa.float64()), pa.string())
    integral = pc.match_substring_regex(text, r"^-?\d+$")
    return pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _coord_detail(name: str, c: _Coords, idx: np.ndarray, lo: int, hi: int) -> pa.Array:
    """Why the coordinate `name` of rows `idx` is bad (null where it is fine)."""
    v = c.values[idx]
    missing, unparsed = c.missing[idx], c.unparsed[idx]
    with np.errstate(invalid="ignore"):
        out = np.isfinite(v) & ((v < lo) | (v > hi))
    raw = pc.cast(c.raw.take(pa.array(idx)), pa.string()) if c.raw is not None else pa.nulls(len(idx), pa.string())
    text = _fmt_float(v)
    conds = [missing, unparsed, ~missing & ~unparsed & np.isnan(v), np.isinf(v), out]
    choices = [
        pa.array([f"{name} is missing"] * len(idx), pa.string()),
        _join(f"{name}='", raw, "' is not a number"),
        pa.array([f"{name}=nan is not a number"] * len(idx), pa.string()),
        _join(f"{name}=", text, " is not finite"),
        _join(f"{name}=", text, f" out of [{lo}, {hi}]"),
    ]
    struct = pc.make_struct(*[pa.array(x) for x in conds], field_names=[str(i) for i in range(len(conds))])
    return pc.case_when(struct, *choices)


# --------------------------------------------------------------------------------------------- validation


def validate_manifest(table: pa.Table) -> tuple[pa.Table, pa.Table, ManifestReport]:
    """Split a manifest into (clean manifest, quarantine, report); vectorised, no loop over rows.

    Each row gets at most one reason, the first that applies: `missing_id` (null/empty image_id),
    `missing_uri`, `bad_coordinates` (missing, not a number, not finite, lat outside [-90, 90] or lon outside
    [-180, 180]), `duplicate_id` (the first valid occurrence of an id is kept, later ones are quarantined).
    `lat`/`lon` may be numbers or text (text that is not a number is quarantined and quoted in the detail).
    Raises ValueError naming the missing and found columns when a required column is absent.
    """
    _require_columns(table.column_names, REQUIRED_COLUMNS, "manifest")
    messages = _table_warnings(table)
    n = table.num_rows

    ids = _as_string(table.column("image_id"))
    uris = _as_string(table.column("uri"))
    id_null = ids.is_null().to_numpy(zero_copy_only=False)
    uri_null = uris.is_null().to_numpy(zero_copy_only=False)
    id_blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True).to_numpy(zero_copy_only=False)
    uri_blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(uris), ""), True).to_numpy(zero_copy_only=False)
    lat, lon = _coords(table.column("lat")), _coords(table.column("lon"))
    with np.errstate(invalid="ignore"):
        lat_ok = np.isfinite(lat.values) & (np.abs(lat.values) <= 90.0)
        lon_ok = np.isfinite(lon.values) & (np.abs(lon.values) <= 180.0)

    # reason[i] = 1 + index into REASONS, 0 = keep
    reason = np.zeros(n, dtype=np.int8)
    for code, bad in ((MISSING_ID, id_blank), (MISSING_URI, uri_blank), (BAD_COORDINATES, ~(lat_ok & lon_ok))):
        reason[(reason == 0) & bad] = REASONS.index(code) + 1

    # Duplicates among rows that passed the other checks, so a bad first copy does not shadow a good one.
    candidates = np.flatnonzero(reason == 0)
    first_row = np.full(n, -1, dtype=np.int64)
    if len(candidates):
        codes = pc.dictionary_encode(ids.take(pa.array(candidates))).indices.to_numpy(zero_copy_only=False)
        _, first_pos = np.unique(codes, return_index=True)  # np.unique returns the first index of each value
        first_of = candidates[first_pos[codes]]
        dup = first_of != candidates
        reason[candidates[dup]] = REASONS.index(DUPLICATE_ID) + 1
        first_row[candidates] = first_of

    lat_col = pa.array(lat.values, type=pa.float64(), mask=np.isnan(lat.values))
    lon_col = pa.array(lon.values, type=pa.float64(), mask=np.isnan(lon.values))

    # Quarantine: one sub-table per reason, then back into input order.
    parts, row_index = [], []
    counts: dict[str, int] = {}
    for k, code in enumerate(REASONS, start=1):
        idx = np.flatnonzero(reason == k)
        counts[code] = int(len(idx))
        if not len(idx):
            continue
        take = pa.array(idx)
        qid = ids.take(take)
        if code == MISSING_ID:
            detail = pc.if_else(pa.array(id_null[idx]), "image_id is null", "image_id is empty")
        elif code == MISSING_URI:
            detail = pc.if_else(pa.array(uri_null[idx]), "uri is null", "uri is empty")
        elif code == BAD_COORDINATES:
            detail = pc.binary_join_element_wise(
                _coord_detail("lat", lat, idx, -90, 90), _coord_detail("lon", lon, idx, -180, 180), "; ",
                null_handling="skip",
            )
        else:
            detail = _join("image_id '", qid, "' already kept at row ",
                           pc.cast(pa.array(first_row[idx]), pa.string()))
        parts.append(
            pa.Table.from_arrays(
                [qid, uris.take(take), lat_col.take(take), lon_col.take(take),
                 pa.array([STAGE] * len(idx), pa.string()), pa.array([code] * len(idx), pa.string()),
                 pc.cast(detail, pa.string())],
                schema=QUARANTINE_SCHEMA,
            )
        )
        row_index.append(idx)
    if parts:
        order = np.argsort(np.concatenate(row_index), kind="stable")
        quarantine = pa.concat_tables(parts).take(pa.array(order))
    else:
        quarantine = QUARANTINE_SCHEMA.empty_table()

    keep = pa.array(reason == 0)
    clean = _conform(table, {"image_id": ids, "uri": uris, "lat": lat_col, "lon": lon_col}).filter(keep)
    clean = clean.cast(_strict_schema(clean.schema))
    report = ManifestReport(rows_in=n, rows_out=clean.num_rows, quarantined_by_reason=counts, warnings=messages)
    if not report.reconciles:  # an internal error, not a data problem: fail loudly rather than lose rows
        raise AssertionError(f"manifest validation lost rows: {report.summary()}")
    return clean, quarantine, report


def _conform(table: pa.Table, replace: dict[str, pa.Array]) -> pa.Table:
    """Core columns in schema order (split added as nulls when absent), then extras unchanged; no metadata."""
    cols: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in MANIFEST_SCHEMA:
        if f.name in replace:
            cols[f.name] = replace[f.name]
        elif f.name in table.column_names:
            col = table.column(f.name)
            try:
                cols[f.name] = col if col.type == f.type else pc.cast(col, f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if f.name not in LABEL_COLUMNS:
                    raise
                cols[f.name] = col  # a label column we cannot read as integers passes through as it is
        elif f.name == "split":
            cols[f.name] = pa.nulls(table.num_rows, pa.string())
    for name in table.column_names:
        if name not in cols:
            cols[name] = table.column(name)
    return pa.table(cols)


def _strict_schema(schema: pa.Schema) -> pa.Schema:
    core = {f.name: f for f in MANIFEST_SCHEMA}
    return pa.schema([core[f.name] if f.name in core and core[f.name].type == f.type else f for f in schema])


# --------------------------------------------------------------------------------------------- swap check


@dataclass(frozen=True)
class SwapCheck:
    """Outcome of `check_latlon_swap`: whether the LAT/LON header names are swapped, how it was decided, why."""

    swapped: bool
    method: str  # "ranges", "land" or "undecided"
    detail: str


def check_latlon_swap(named_lat: np.ndarray, named_lon: np.ndarray) -> SwapCheck:
    """Decide whether the columns named LAT and LON hold longitudes and latitudes instead.

    Ranges first: if a meaningful share (>1%, and at least 5 rows) of the column named LAT lies beyond +-90
    while the column named LON almost never does, the names are swapped; if the column named LON often lies
    beyond +-90, they are not. A handful of out-of-range rows decides nothing: those rows are quarantined.
    When ranges cannot decide, the land share decides (see below).
    """
    a = np.asarray(named_lat, dtype=np.float64)
    b = np.asarray(named_lon, dtype=np.float64)
    fin = np.isfinite(a) & np.isfinite(b)
    n = int(fin.sum())
    if n == 0:
        return SwapCheck(False, "undecided", "no row has two finite coordinates")
    with np.errstate(invalid="ignore"):
        a_out, b_out = fin & (np.abs(a) > 90), fin & (np.abs(b) > 90)
        both = fin & (np.abs(a) <= 90) & (np.abs(b) <= 90)
    share_a, share_b = a_out.sum() / n, b_out.sum() / n

    # Photos are overwhelmingly on land (Flickr sets: well over 90% on a 1 km land mask, coastal shots being
    # most of the rest). Reading a pair the wrong way round moves it to a different place on the globe, which
    # for most of the inhabited world is sea, so the land share of the wrong reading collapses. Only rows that
    # both readings allow (|values| <= 90) can be compared.
    def land() -> tuple[float, float, str] | None:
        if both.sum() < _SWAP_LAND_MIN_ROWS:
            return None
        from global_land_mask import globe  # imported lazily: loads a ~1 km global grid

        named = float(globe.is_land(a[both], b[both]).mean())
        swapped = float(globe.is_land(b[both], a[both]).mean())
        txt = f"; land share as named {named:.0%}, swapped {swapped:.0%} over {int(both.sum())} rows"
        return named, swapped, txt

    ranges_txt = f"{share_a:.1%} of LAT and {share_b:.1%} of LON values lie beyond +-90"

    if share_b > _SWAP_RANGE_SHARE and b_out.sum() >= _SWAP_RANGE_MIN_ROWS:
        return SwapCheck(False, "ranges", ranges_txt + ": LON holds longitudes")
    if (share_a > _SWAP_RANGE_SHARE and a_out.sum() >= _SWAP_RANGE_MIN_ROWS
            and share_b <= 0.1 * share_a):
        # A set of bad rows with |lat| > 90 in an otherwise correct file could look like this; the land share
        # tells them apart, so it may veto the swap.
        lnd = land()
        if lnd is not None and lnd[1] < lnd[0] - _SWAP_LAND_VETO:
            return SwapCheck(False, "land", ranges_txt + ", but the swapped reading puts fewer rows on land" + lnd[2])
        return SwapCheck(True, "ranges", ranges_txt + (lnd[2] if lnd else ""))
    lnd = land()
    if lnd is None:
        return SwapCheck(False, "undecided", ranges_txt + f"; too few rows ({int(both.sum())}) to compare land")
    # Ambiguous ranges (e.g. only Europe and Africa): swap only on a large, systematic land gain that noise,
    # coastal photos or a few bad rows cannot produce, and only if the swapped reading itself looks like photos.
    swapped = lnd[1] - lnd[0] >= _SWAP_LAND_MARGIN and lnd[1] >= _SWAP_LAND_MIN_SHARE
    return SwapCheck(swapped, "land", ranges_txt + lnd[2])


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


def detect_format(uri: str, s3: S3Config | None = None) -> str:
    """One of FORMATS, from the columns (our names -> 'geosurge'; IMG_ID/LAT/LON -> a public format).

    Among the public formats the file name decides when it names the set (mp16, im2gps, yfcc); otherwise ids
    that are relative paths mean MP-16, an AUTHOR column means Im2GPS3k, and anything else reads as YFCC4k.
    """
    head = _head(uri, s3)
    cols = head.column_names
    lower = {c.lower() for c in cols}
    if {"image_id", "uri"} <= set(cols):
        return "geosurge"
    if "img_id" not in lower:
        raise ValueError(
            f"cannot tell the manifest format of {uri}: expected our columns {list(REQUIRED_COLUMNS)} or the "
            f"public IMG_ID/LAT/LON columns; found columns: {cols}"
        )
    base = posixpath.basename(uri.rstrip("/")).lower()
    for hint, fmt in (("mp16", "mp16"), ("mp-16", "mp16"), ("im2gps", "im2gps3k"), ("yfcc", "yfcc4k")):
        if hint in base:
            return fmt
    img = head.column([c for c in cols if c.lower() == "img_id"][0])
    if pc.any(pc.match_substring(_as_string(img), "/")).as_py():
        return "mp16"
    return "im2gps3k" if "author" in lower else "yfcc4k"


def _parent_uri(uri: str) -> str:
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.dirname(uri.rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))


def read_places365_csv(
    uri: str, dataset: str, images_root: str | None = None, s3: S3Config | None = None
) -> pa.Table:
    """Read a public `*_places365.csv` (or a Parquet copy) into MANIFEST_SCHEMA, before validation.

    Column names match case-insensitively. `image_id` = IMG_ID, `uri` = join(images_root, IMG_ID); the label
    columns become `scene3/16/365`; every other column is kept, lower-cased (AUTHOR -> author, Prob_urban ->
    prob_urban). A swapped LAT/LON header is detected, fixed and reported (warning + report line).
    For MP-16 `images_root` is required; for the benchmarks it defaults to the folder holding the CSV.
    """
    if dataset not in _PUBLIC_FORMATS:
        raise ValueError(f"unknown public dataset {dataset!r}; expected one of {_PUBLIC_FORMATS}")
    if images_root is None:
        if dataset == "mp16":
            raise ValueError(
                "MP-16 IMG_ID values are paths relative to the image folder: pass images_root "
                "(e.g. s3://bucket/mp16/images)"
            )
        images_root = _parent_uri(uri)
    raw = _read_raw(uri, s3, ("IMG_ID", "LAT", "LON"))
    by_lower = {c.lower(): c for c in raw.column_names}
    _require_columns(list(by_lower), ("img_id", "lat", "lon"), f"{dataset} file {uri} (names in any case)")
    messages: list[str] = []

    named_lat, named_lon = raw.column(by_lower["lat"]), raw.column(by_lower["lon"])
    check = check_latlon_swap(_coords(named_lat).values, _coords(named_lon).values)
    if check.swapped:
        msg = (f"{dataset} file {uri}: the LAT and LON header names are swapped (decided by {check.method}: "
               f"{check.detail}); reading the column named LAT as longitude and LON as latitude")
        warnings.warn(msg, UserWarning, stacklevel=3)
        messages.append(msg)
        named_lat, named_lon = named_lon, named_lat

    img = _as_string(raw.column(by_lower["img_id"]))
    prefix = join(images_root, "")  # root with its trailing separator
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        "image_id": img,
        "uri": _join(prefix, pc.utf8_ltrim(img, "/")),
        "lat": _coord_column(named_lat),
        "lon": _coord_column(named_lon),
        "split": pa.nulls(raw.num_rows, pa.string()),
    }
    for src, dst in _PUBLIC_LABELS.items():
        if src in by_lower:
            cols[dst] = _int_labels(raw.column(by_lower[src]), by_lower[src], messages)
    used = {"img_id", "lat", "lon", *_PUBLIC_LABELS}
    for name in raw.column_names:
        if name.lower() in used:
            continue
        if name.lower() in cols:
            raise ValueError(f"{dataset} file {uri}: column {name!r} clashes with manifest column {name.lower()!r}")
        cols[name.lower()] = raw.column(name)
    return _with_warnings(pa.table(cols), messages)


def read_mp16(uri: str, images_root: str, s3: S3Config | None = None) -> pa.Table:
    """MP-16 `mp16_places365.csv` -> manifest table (before validation); uri = join(images_root, IMG_ID)."""
    return read_places365_csv(uri, "mp16", images_root, s3)


def read_im2gps3k(uri: str, images_root: str | None = None, s3: S3Config | None = None) -> pa.Table:
    """Im2GPS3k `im2gps3k_places365.csv` -> manifest table (before validation); AUTHOR, Prob_* kept lower-cased."""
    return read_places365_csv(uri, "im2gps3k", images_root, s3)


def read_yfcc4k(uri: str, images_root: str | None = None, s3: S3Config | None = None) -> pa.Table:
    """YFCC4k `yfcc4k_places365.csv` -> manifest table (before validation); optional columns may be absent."""
    return read_places365_csv(uri, "yfcc4k", images_root, s3)


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
    else:
        raise ValueError(f"unknown manifest format {format!r}; expected 'auto' or one of {FORMATS}")
    if validate:
        return validate_manifest(table)
    counts = {r: 0 for r in REASONS}
    report = ManifestReport(table.num_rows, table.num_rows, counts, _table_warnings(table))
    return table, QUARANTINE_SCHEMA.empty_table(), report


# --------------------------------------------------------------------------------------------- writing


def _write_parquet(table: pa.Table, uri: str, s3: S3Config | None) -> None:
    fs, path = resolve(uri, s3)
    parent = posixpath.dirname(path) if is_s3(uri) else os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    pq.write_table(table, path, filesystem=fs)


def write_manifest(table: pa.Table, uri: str, s3: S3Config | None = None) -> None:
    """Write a (validated) manifest as Parquet in MANIFEST_SCHEMA, extra columns after the core ones."""
    _require_columns(table.column_names, REQUIRED_COLUMNS, "manifest")
    out = _with_warnings(_conform(table, {}), [])
    _write_parquet(out.cast(_strict_schema(out.schema)), uri, s3)


def write_quarantine(table: pa.Table, uri: str, s3: S3Config | None = None) -> None:
    """Write a quarantine table as Parquet in QUARANTINE_SCHEMA (extra columns kept after the schema's)."""
    _require_columns(table.column_names, QUARANTINE_SCHEMA.names, "quarantine table")
    cols = {f.name: pc.cast(table.column(f.name), f.type) for f in QUARANTINE_SCHEMA}
    cols.update({c: table.column(c) for c in table.column_names if c not in cols})
    schema = pa.schema([*QUARANTINE_SCHEMA, *(table.schema.field(c) for c in table.column_names
                                              if c not in QUARANTINE_SCHEMA.names)])
    _write_parquet(pa.table(cols).cast(schema), uri, s3)
