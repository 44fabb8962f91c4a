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

The rooms, each importing only the ones above it: `schema` (schemas, reason codes, report, column helpers),
`swap` (LAT/LON swap detection), `validate` (row validation), `files` (raw file access), `public` (the public
formats), `writing` (Parquet out) and `reading` (whole-file reads, listing and streaming). Import from the
package: every public name is re-exported here.
"""

from geosurge.data.manifest.public import (
    conform_places365_batch,
    latlon_swap_warning,
    read_im2gps3k,
    read_mp16,
    read_places365_csv,
    read_yfcc4k,
)
from geosurge.data.manifest.reading import (
    MANIFEST_SUFFIXES,
    SWAP_SAMPLE_ROWS,
    ManifestReading,
    batch_warnings,
    conform_geosurge_batch,
    detect_format,
    is_manifest_name,
    is_parquet_name,
    iter_manifest_batches,
    list_manifest_files,
    manifest_columns,
    manifest_coordinates,
    parquet_row_count,
    plan_manifest_reading,
    read_geosurge,
    read_manifest,
    resolve_manifest_format,
)
from geosurge.data.manifest.schema import (
    BAD_COORDINATES,
    DECODE_STAGE,
    DUPLICATE_ID,
    FETCH_STAGE,
    FORMATS,
    LABEL_COLUMNS,
    MANIFEST_SCHEMA,
    MISSING_ID,
    MISSING_URI,
    QUARANTINE_SCHEMA,
    REASONS,
    REQUIRED_COLUMNS,
    STAGE,
    ManifestReport,
)
from geosurge.data.manifest.swap import SwapCheck, check_latlon_swap
from geosurge.data.manifest.validate import (
    manifest_row_ok,
    validate_manifest,
    validate_rows,
)
from geosurge.data.manifest.writing import write_manifest, write_quarantine

__all__ = [
    # schema
    "BAD_COORDINATES",
    "DECODE_STAGE",
    "DUPLICATE_ID",
    "FETCH_STAGE",
    "FORMATS",
    "LABEL_COLUMNS",
    "MANIFEST_SCHEMA",
    "MISSING_ID",
    "MISSING_URI",
    "QUARANTINE_SCHEMA",
    "REASONS",
    "REQUIRED_COLUMNS",
    "STAGE",
    "ManifestReport",
    # swap
    "SwapCheck",
    "check_latlon_swap",
    # validate
    "manifest_row_ok",
    "validate_manifest",
    "validate_rows",
    # public
    "conform_places365_batch",
    "latlon_swap_warning",
    "read_im2gps3k",
    "read_mp16",
    "read_places365_csv",
    "read_yfcc4k",
    # writing
    "write_manifest",
    "write_quarantine",
    # reading
    "MANIFEST_SUFFIXES",
    "SWAP_SAMPLE_ROWS",
    "ManifestReading",
    "batch_warnings",
    "conform_geosurge_batch",
    "detect_format",
    "is_manifest_name", "is_parquet_name",
    "iter_manifest_batches",
    "list_manifest_files",
    "manifest_columns",
    "manifest_coordinates",
    "parquet_row_count",
    "plan_manifest_reading",
    "read_geosurge",
    "read_manifest",
    "resolve_manifest_format",
]
