"""The manifest schema, the quarantine schema and its reason codes, the validation report, and the small
column helpers every room of the package shares (reader warnings travel in the table's schema metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from geosurge.storage import BAD_URI

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
# BAD_URI (storage's own reason for a refused URI): leaves its images root or is under no allowed prefix
# Order = priority: a row gets the first reason that applies, so each row is quarantined exactly once.
REASONS: tuple[str, ...] = (MISSING_ID, MISSING_URI, BAD_URI, BAD_COORDINATES, DUPLICATE_ID)
# A reader's verdict on a row's uri (null: fine), carried to validation, which quarantines and drops it.
URI_PROBLEM = "_uri_problem"

# 'auto' (reading.detect_format) tells the first four and img2dataset apart; im2gps, yfcc26k and gws15k share a
# header with another format and are only read when named.
FORMATS: tuple[str, ...] = ("geosurge", "mp16", "im2gps3k", "yfcc4k", "im2gps", "yfcc26k", "gws15k", "img2dataset")
# Reader warnings travel with the table in its schema metadata, so validate_manifest can report them.
_WARNINGS_KEY = b"geosurge.manifest.warnings"


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


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


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


def _conform_passing(table: pa.Table, used: set[str], replace: dict[str, pa.Array], what: str) -> pa.Table:
    """`_conform` for a table whose columns `used` made the core columns in `replace`: the other columns pass
    through, and one that would take a core column's name is an error rather than a silent overwrite."""
    rest = [c for c in table.column_names if c not in used]
    clash = [c for c in rest if c in replace or c in REQUIRED_COLUMNS]
    if clash:
        raise ValueError(f"{what}: column(s) {clash} clash with the manifest columns made from {sorted(used)}")
    return _conform(table.select(rest), replace)


def _strict_schema(schema: pa.Schema) -> pa.Schema:
    core = {f.name: f for f in MANIFEST_SCHEMA}
    return pa.schema([core[f.name] if f.name in core and core[f.name].type == f.type else f for f in schema])
