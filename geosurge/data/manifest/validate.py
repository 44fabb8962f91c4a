"""Row validation: every row of a manifest is either kept or quarantined with a reason and a detail."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geosurge.data.manifest.roots import uris_outside_prefixes
from geosurge.data.manifest.schema import (
    BAD_COORDINATES,
    BAD_URI,
    DUPLICATE_ID,
    MISSING_ID,
    MISSING_URI,
    QUARANTINE_SCHEMA,
    REASONS,
    REQUIRED_COLUMNS,
    STAGE,
    URI_PROBLEM,
    ManifestReport,
    _array,
    _as_string,
    _conform,
    _Coords,
    _coords,
    _join,
    _require_columns,
    _strict_schema,
    _table_warnings,
)

# --------------------------------------------------------------------------------------------- helpers


def _fmt_float(values: np.ndarray) -> pa.Array:
    """Numbers as text the way Python prints floats ('91.0', 'inf', 'nan')."""
    text = pc.cast(pa.array(values, type=pa.float64()), pa.string())
    integral = pc.match_substring_regex(text, r"^-?\d+$")
    return pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)


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


def validate_rows(table: pa.Table, known_duplicates: pa.Array | None = None,
                  allowed_prefixes: tuple[str, ...] = ()) -> pa.Table:
    """Every row of a manifest (or a batch of one), in input order, with its validation outcome; vectorised.

    The result holds the core columns normalised as in the clean manifest (`image_id`/`uri` text, `lat`/`lon`
    float64, null where not a number), the other columns unchanged, then `stage`, `reason` and `detail`: null
    for a row that passes, else why it does not (see `validate_manifest` for the reasons and their order).

    `known_duplicates`: None finds duplicate ids within `table` (the first valid occurrence is kept). A streaming
    stage that saw the whole manifest in a pre-pass passes a text array instead, one entry per row: the
    duplicate_id detail for rows that repeat an id kept elsewhere, null for the rest; no local search is done.

    `bad_uri`: the reader found the uri leaving its images root (the URI_PROBLEM column, dropped here), or it is
    under none of `allowed_prefixes` (`ingest.allowed_uri_prefixes`; empty: no restriction).
    """
    _require_columns(table.column_names, REQUIRED_COLUMNS, "manifest")
    n = table.num_rows

    ids = _as_string(table.column("image_id"))
    uris = _as_string(table.column("uri"))
    id_null = ids.is_null().to_numpy(zero_copy_only=False)
    uri_null = uris.is_null().to_numpy(zero_copy_only=False)
    id_blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True).to_numpy(zero_copy_only=False)
    uri_blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(uris), ""), True).to_numpy(zero_copy_only=False)
    uri_problem = uris_outside_prefixes(uris, tuple(allowed_prefixes))
    if URI_PROBLEM in table.column_names:
        uri_problem = pc.coalesce(_as_string(table.column(URI_PROBLEM)), uri_problem)
        table = table.drop_columns([URI_PROBLEM])
    uri_bad = uri_problem.is_valid().to_numpy(zero_copy_only=False)
    lat, lon = _coords(table.column("lat")), _coords(table.column("lon"))
    with np.errstate(invalid="ignore"):
        lat_ok = np.isfinite(lat.values) & (np.abs(lat.values) <= 90.0)
        lon_ok = np.isfinite(lon.values) & (np.abs(lon.values) <= 180.0)

    # reason[i] = 1 + index into REASONS, 0 = keep
    reason = np.zeros(n, dtype=np.int8)
    for code, bad in ((MISSING_ID, id_blank), (MISSING_URI, uri_blank), (BAD_URI, uri_bad),
                      (BAD_COORDINATES, ~(lat_ok & lon_ok))):
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
        uri_problem,
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


def manifest_row_ok(table: pa.Table, allowed_prefixes: tuple[str, ...] = ()) -> np.ndarray:
    """bool per row: passes every check but the duplicate one (id, uri, coordinates). A streaming pre-pass keeps
    only these rows when it looks for duplicate ids, as `validate_manifest` does."""
    nulls = pa.nulls(table.num_rows, pa.string())
    return validate_rows(table, nulls, allowed_prefixes).column("reason").is_null().to_numpy(zero_copy_only=False)


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
