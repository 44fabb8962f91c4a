"""Image-set manifests: one schema for every image set, readers for the public formats, and validation.

A manifest is a table with one row per image: `image_id`, `uri`, `lat`, `lon`, an optional `split`, the optional
Places365 scene labels (`scene3`, `scene16`, `scene365`) and any extra columns, passed through unchanged.

Validation never drops a record silently: every input row ends up either in the clean manifest or in the
quarantine table (`QUARANTINE_SCHEMA`) with a reason code and a human-readable detail, and
`ManifestReport.reconciles` checks that the counts add up.

Readers (all go through `geosurge.storage.resolve`, so local paths, file:// and s3:// all work):

* our own format: Parquet or CSV with the schema's column names (`read_geosurge`);
* MP-16 `mp16_places365.csv` (`read_mp16`): `IMG_ID` is a relative path such as `34/8d/9055806529.jpg`;
* Im2GPS3k `im2gps3k_places365.csv` (`read_im2gps3k`) and YFCC4k `yfcc4k_places365.csv` (`read_yfcc4k`);
* the other benchmarks of the GeoSURGE paper: Im2GPS `im2gps_places365.csv` (`read_im2gps`), YFCC26k
  `yfcc25600_places365.csv` (`read_yfcc26k`) and GWS15k, whose metadata was never published, in our own columns
  (`read_gws15k`); these share a header with another format, so they are read when named, never by 'auto';
* an img2dataset-style table: `url`, `lat`/`lon` (or `latitude`/`longitude`), optional `key`/`id`
  (`read_img2dataset`).

Every images root (the folder ids and relative urls are joined under) goes through `resolve_images_root`: URLs
(s3://, http(s)://, file://) stay as written, plain local paths become absolute. Ingest and the eval job use it too.

One published copy of the Im2GPS3k CSV swaps the LAT and LON header names while the values stay lat,lon; the
public-format readers detect that (`check_latlon_swap`), fix it and say so.

Streaming (for manifests too big for one process, e.g. MP-16's 4.72 M rows): `plan_manifest_reading` decides
once per file, from its header and head, the format, the images root and the LAT/LON swap; `iter_manifest_batches`
then applies that same `ManifestReading` to every batch, with the readers' own column logic
(`conform_geosurge_batch`, `conform_places365_batch`, `conform_gws15k_batch`, `conform_img2dataset_batch`).

The rooms, each importing only the ones above it: `schema` (schemas, reason codes, report, column helpers),
`swap` (LAT/LON swap detection), `validate` (row validation), `files` (raw file access), `roots` (images roots),
`public` (the public formats), `gws15k` and `img2dataset` (tables in our own column names), `writing` (Parquet
out) and `reading` (whole-file reads, listing and streaming). Import from the
package: every public name is re-exported here.
"""

from geosurge.data.manifest.gws15k import conform_gws15k_batch, read_gws15k
from geosurge.data.manifest.img2dataset import conform_img2dataset_batch, read_img2dataset
from geosurge.data.manifest.public import (
    conform_places365_batch,
    latlon_swap_warning,
    read_im2gps,
    read_im2gps3k,
    read_mp16,
    read_places365_csv,
    read_yfcc4k,
    read_yfcc26k,
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
from geosurge.data.manifest.roots import resolve_images_root
from geosurge.data.manifest.schema import (
    BAD_COORDINATES,
    BAD_URI,
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
    "BAD_URI",
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
    "read_im2gps",
    "read_yfcc26k",
    # benchmarks and tables in our own columns
    "conform_gws15k_batch",
    "read_gws15k",
    "conform_img2dataset_batch",
    "read_img2dataset",
    # roots
    "resolve_images_root",
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
