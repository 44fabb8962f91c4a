"""Image-set manifests: one schema for every image set, readers for the public formats, and validation.

A manifest is a table with one row per image: `image_id`, `uri`, `lat`, `lon`, an optional `split`, the optional
Places365 scene labels (`scene3`, `scene16`, `scene365`) and any extra columns, passed through unchanged.

Validation never drops a record silently: every input row ends up either in the clean manifest or in the
quarantine table (`QUARANTINE_SCHEMA`) with a reason code and a human-readable detail, and
`ManifestReport.reconciles` checks that the counts add up.

Readers (all go through `geosurge.storage.resolve`, so local paths, file:// and s3:// all work):

* our own format: Parquet or CSV with the schema's column names (`read_geosurge`);
* MP-16 `mp16_places365.csv` (`read_mp16`): `IMG_ID` is a relative path such as `34/8d/9055806529.jpg`;
* Im2GPS3k `im2gps3k_places365.csv` (`read_im2gps3k`) and YFCC4k `yfcc4k_places365.csv` (`read_yfcc4k`).

One published copy of the Im2GPS3k CSV swaps the LAT and LON header names while the values stay lat,lon; the
public-format readers detect that (`check_latlon_swap`), fix it and say so.

Streaming (for manifests too big for one process, e.g. MP-16's 4.72 M rows): `plan_manifest_reading` decides
once per file, from its header and head, the format, the images root and the LAT/LON swap; `iter_manifest_batches`
then applies that same `ManifestReading` to every batch, with the readers' own column logic
(`conform_geosurge_batch`, `conform_places365_batch`).
"""

from __future__ import annotations

import json
import os
import posixpath
import warnings
from collections.abc import Iterator
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

from geosurge.storage import S3Config, is_s3, join, resolve, write_parquet

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

# The stages a record can be quarantined at (the `stage` column), in pipeline order.
STAGE = "manifest"
FETCH_STAGE = "fetch"
DECODE_STAGE = "decode"
BAD_COORDINATES = "bad_coordinates"
DUPLICATE_ID = "duplicate_id"
MISSING_ID = "missing_id"
MISSING_URI = "missing_uri"
# Order = priority: a row gets the first reason that applies, so each row is quarantined exactly once.
REASONS: tuple[str, ...] = (MISSING_ID, MISSING_URI, BAD_COORDINATES, DUPLICATE_ID)

FORMATS: tuple[str, ...] = ("geosurge", "mp16", "im2gps3k", "yfcc4k")
_PUBLIC_FORMATS = ("mp16", "im2gps3k", "yfcc4k")
# The role each public set plays in the literature: MP-16 is the training set, the others are benchmarks.
_PUBLIC_SPLITS = {"mp16": "train", "im2gps3k": "test", "yfcc4k": "test"}
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


def _blank_as_null(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Text cells that are empty (or only spaces) as nulls; other types unchanged. A streamed CSV batch is all
    text, so an empty label cell arrives as "" where a typed read would have given null."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return col
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), False)
    return pc.if_else(blank, pa.scalar(None, col.type), col)


def _int_labels(col: pa.ChunkedArray, name: str, messages: list[str]) -> pa.ChunkedArray | pa.Array:
    try:
        return pc.cast(_blank_as_null(col), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        messages.append(f"column {name!r} is not integer Places365 labels ({col.type}); kept as it is")
        return col


def _float_column(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A text column of numbers (a streamed CSV batch) as float64, as a typed read gives it; unchanged if not."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return col
    try:
        return pc.cast(_blank_as_null(col), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
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


def validate_rows(table: pa.Table, known_duplicates: pa.Array | None = None) -> pa.Table:
    """Every row of a manifest (or a batch of one), in input order, with its validation outcome; vectorised.

    The result holds the core columns normalised as in the clean manifest (`image_id`/`uri` text, `lat`/`lon`
    float64, null where not a number), the other columns unchanged, then `stage`, `reason` and `detail`: null
    for a row that passes, else why it does not (see `validate_manifest` for the reasons and their order).

    `known_duplicates`: None finds duplicate ids within `table` (the first valid occurrence is kept). A streaming
    stage that saw the whole manifest in a pre-pass passes a text array instead, one entry per row: the
    duplicate_id detail for rows that repeat an id kept elsewhere, null for the rest; no local search is done.
    """
    _require_columns(table.column_names, REQUIRED_COLUMNS, "manifest")
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

    dup_detail: pa.Array | None = None
    if known_duplicates is None:
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
        dup_detail = _join("image_id '", ids, "' already kept at row ", pc.cast(pa.array(first_row), pa.string()))
    else:
        if len(known_duplicates) != n:
            raise ValueError(f"known_duplicates has {len(known_duplicates)} entries for {n} rows")
        dup_detail = pc.cast(_array(known_duplicates), pa.string())
        known = dup_detail.is_valid().to_numpy(zero_copy_only=False)
        reason[(reason == 0) & known] = REASONS.index(DUPLICATE_ID) + 1

    lat_col = pa.array(lat.values, type=pa.float64(), mask=np.isnan(lat.values))
    lon_col = pa.array(lon.values, type=pa.float64(), mask=np.isnan(lon.values))

    codes_arr = pa.array(np.array([None, *REASONS], dtype=object)[reason], pa.string())
    bad_idx = np.flatnonzero(reason == REASONS.index(BAD_COORDINATES) + 1)
    bad_text = np.full(n, None, dtype=object)
    if len(bad_idx):
        bad_text[bad_idx] = pc.binary_join_element_wise(
            _coord_detail("lat", lat, bad_idx, -90, 90), _coord_detail("lon", lon, bad_idx, -180, 180), "; ",
            null_handling="skip",
        ).to_numpy(zero_copy_only=False)
    bad_coords = pa.array(bad_text, pa.string())
    conds = [reason == REASONS.index(code) + 1 for code in REASONS]
    choices = [
        pc.if_else(pa.array(id_null), "image_id is null", "image_id is empty"),
        pc.if_else(pa.array(uri_null), "uri is null", "uri is empty"),
        pc.cast(bad_coords, pa.string()),
        pc.cast(dup_detail, pa.string()),
    ]
    if n:
        struct = pc.make_struct(*[pa.array(c) for c in conds], field_names=list(REASONS))
        detail = pc.case_when(struct, *choices)
    else:
        detail = pa.array([], pa.string())
    stage = pc.if_else(pc.is_valid(codes_arr), pa.scalar(STAGE), pa.scalar(None, pa.string()))
    rows = _conform(table, {"image_id": ids, "uri": uris, "lat": lat_col, "lon": lon_col})
    for name in ("stage", "reason", "detail"):
        if name in rows.column_names:
            raise ValueError(f"manifest column {name!r} clashes with the validation outcome columns")
    return rows.append_column("stage", stage).append_column("reason", codes_arr).append_column("detail", detail)


def manifest_row_ok(table: pa.Table) -> np.ndarray:
    """bool per row: passes every check but the duplicate one (id, uri, coordinates). A streaming pre-pass keeps
    only these rows when it looks for duplicate ids, as `validate_manifest` does."""
    nulls = pa.nulls(table.num_rows, pa.string())
    return validate_rows(table, known_duplicates=nulls).column("reason").is_null().to_numpy(zero_copy_only=False)


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
    rows = validate_rows(table)
    bad = rows.column("reason").is_valid()
    quarantine = rows.filter(bad).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
    clean = rows.filter(pc.invert(bad)).drop_columns(["stage", "reason", "detail"])
    clean = clean.cast(_strict_schema(clean.schema))
    reasons = quarantine.column("reason").to_numpy(zero_copy_only=False)
    counts = {code: int((reasons == code).sum()) for code in REASONS}
    report = ManifestReport(rows_in=table.num_rows, rows_out=clean.num_rows, quarantined_by_reason=counts,
                            warnings=messages)
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
    img = head.column(next(c for c in cols if c.lower() == "img_id"))
    if pc.any(pc.match_substring(_as_string(img), "/")).as_py():
        return "mp16"
    return "im2gps3k" if "author" in lower else "yfcc4k"


def _parent_uri(uri: str) -> str:
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.dirname(uri.rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))


_PUBLIC_FLOATS = ("prob_indoor", "prob_natural", "prob_urban")  # Places365 scene probabilities (Im2GPS3k, MP-16)


def _public_columns(names: list[str], dataset: str, uri: str) -> dict[str, str]:
    """lower-cased name -> name as spelled in the file; raises unless IMG_ID, LAT and LON are there (any case)."""
    by_lower = {c.lower(): c for c in names}
    _require_columns(list(by_lower), ("img_id", "lat", "lon"), f"{dataset} file {uri} (names in any case)")
    return by_lower


def latlon_swap_warning(table: pa.Table, dataset: str, uri: str, sample: str = "") -> str | None:
    """Decide on `table` (a whole public file, or its head) whether its LAT/LON header names are swapped
    (`check_latlon_swap`): the warning that says so, or None when they are not."""
    by_lower = _public_columns(table.column_names, dataset, uri)
    check = check_latlon_swap(_coords(table.column(by_lower["lat"])).values,
                              _coords(table.column(by_lower["lon"])).values)
    if not check.swapped:
        return None
    return (f"{dataset} file {uri}: the LAT and LON header names are swapped (decided by {check.method}"
            f"{sample}: {check.detail}); reading the column named LAT as longitude and LON as latitude")


def conform_places365_batch(batch: pa.Table, dataset: str, images_root: str, latlon_swapped: bool,
                            uri: str = "") -> pa.Table:
    """A public `*_places365.csv` table (the whole file or one streamed batch) -> manifest columns, before
    validation: `image_id` = IMG_ID, `uri` = join(images_root, IMG_ID), `lat`/`lon` from LAT/LON (the other
    way round when `latlon_swapped`, which is decided once per file), S3/S16/S365_Label -> `scene3/16/365`,
    every other column kept, lower-cased. Problems with label columns travel in the schema metadata."""
    if dataset not in _PUBLIC_FORMATS:
        raise ValueError(f"unknown public dataset {dataset!r}; expected one of {_PUBLIC_FORMATS}")
    by_lower = _public_columns(batch.column_names, dataset, uri)
    messages: list[str] = []
    named_lat, named_lon = batch.column(by_lower["lat"]), batch.column(by_lower["lon"])
    if latlon_swapped:
        named_lat, named_lon = named_lon, named_lat
    img = _as_string(batch.column(by_lower["img_id"]))
    prefix = join(images_root, "")  # root with its trailing separator
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        "image_id": img,
        "uri": _join(prefix, pc.utf8_ltrim(img, "/")),
        "lat": _coord_column(named_lat),
        "lon": _coord_column(named_lon),
        "split": pa.array([_PUBLIC_SPLITS[dataset]] * batch.num_rows, pa.string()),
    }
    for src, dst in _PUBLIC_LABELS.items():
        if src in by_lower:
            cols[dst] = _int_labels(batch.column(by_lower[src]), by_lower[src], messages)
    used = {"img_id", "lat", "lon", *_PUBLIC_LABELS}
    for name in batch.column_names:
        if name.lower() in used:
            continue
        if name.lower() in cols:
            raise ValueError(f"{dataset} file {uri}: column {name!r} clashes with manifest column {name.lower()!r}")
        col = batch.column(name)
        cols[name.lower()] = _float_column(col) if name.lower() in _PUBLIC_FLOATS else col
    return _with_warnings(pa.table(cols), messages)


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
    swap = latlon_swap_warning(raw, dataset, uri)
    if swap:
        warnings.warn(swap, UserWarning, stacklevel=3)
    table = conform_places365_batch(raw, dataset, images_root, swap is not None, uri)
    return _with_warnings(table, [*([swap] if swap else []), *_table_warnings(table)])


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


def write_manifest(table: pa.Table, uri: str, s3: S3Config | None = None) -> None:
    """Write a (validated) manifest as Parquet in MANIFEST_SCHEMA, extra columns after the core ones."""
    _require_columns(table.column_names, REQUIRED_COLUMNS, "manifest")
    out = _with_warnings(_conform(table, {}), [])
    write_parquet(out.cast(_strict_schema(out.schema)), uri, s3)


def write_quarantine(table: pa.Table, uri: str, s3: S3Config | None = None) -> None:
    """Write a quarantine table as Parquet in QUARANTINE_SCHEMA (extra columns kept after the schema's)."""
    _require_columns(table.column_names, QUARANTINE_SCHEMA.names, "quarantine table")
    cols = {f.name: pc.cast(table.column(f.name), f.type) for f in QUARANTINE_SCHEMA}
    cols.update({c: table.column(c) for c in table.column_names if c not in cols})
    schema = pa.schema([*QUARANTINE_SCHEMA, *(table.schema.field(c) for c in table.column_names
                                              if c not in QUARANTINE_SCHEMA.names)])
    write_parquet(pa.table(cols).cast(schema), uri, s3)


# --------------------------------------------------------------------------------------------- streaming

_MANIFEST_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".csv.bz2", ".csv.zst")


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
        if item.base_name.lower().endswith(_MANIFEST_SUFFIXES):
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
    images_root: str | None = None  # public formats: uri = join(images_root, IMG_ID)
    latlon_swapped: bool = False  # public formats: the columns named LAT and LON hold lon and lat
    warnings: tuple[str, ...] = ()  # what the head showed (a swapped header), for the caller's report

    def conform(self, batch: pa.Table) -> pa.Table:
        """One raw batch -> manifest columns, before validation (see `batch_warnings` for label problems)."""
        if self.format == "geosurge":
            return conform_geosurge_batch(batch)
        assert self.images_root is not None
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
    else:
        _public_columns(names, fmt, uri)
    return fmt


def plan_manifest_reading(uri: str, format: str = "auto", images_root: str | None = None,
                          s3: S3Config | None = None, sample_rows: int = SWAP_SAMPLE_ROWS) -> ManifestReading:
    """Decide how to stream one manifest file: its format ('auto' or one of FORMATS) and, for the public formats,
    the images root (default: the folder holding the file, for MP-16 too) and whether the LAT/LON header names
    are swapped, judged on the first `sample_rows` rows (memory stays bounded on a 4.72 M-row MP-16 file)."""
    fmt = resolve_manifest_format(uri, format, s3)
    if fmt == "geosurge":
        return ManifestReading(uri, fmt)
    head = next(_iter_raw_batches(uri, sample_rows, s3), None)
    messages: tuple[str, ...] = ()
    if head is not None:
        sample = f" on the first {head.num_rows} rows"
        swap = latlon_swap_warning(head, fmt, uri, sample)
        messages = (swap,) if swap else ()
    root = images_root if images_root is not None else _parent_uri(uri)
    return ManifestReading(uri, fmt, root, bool(messages), messages)


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
                         batch_rows: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) float64 arrays of the manifest's valid rows (of `split`, when given), streamed batch by batch:
    what the geocell hierarchy is built from, without holding the manifest's other columns. Rows with bad
    coordinates or ids are left out as ingest quarantines them; a duplicated id counts once per copy."""
    lats, lons = [], []
    for file_uri in list_manifest_files(uri, s3):
        for batch in iter_manifest_batches(file_uri, batch_rows, s3):
            keep = manifest_row_ok(batch)
            if split is not None:
                keep &= (batch.column("split").to_numpy(zero_copy_only=False) == split)
            lats.append(batch.column("lat").to_numpy(zero_copy_only=False)[keep].astype(np.float64))
            lons.append(batch.column("lon").to_numpy(zero_copy_only=False)[keep].astype(np.float64))
    if not lats:
        return np.empty(0), np.empty(0)
    return np.concatenate(lats), np.concatenate(lons)
