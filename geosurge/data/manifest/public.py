"""The public image sets as published, read into the manifest schema (a swapped LAT/LON header is detected and
fixed). All share one layout, `IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,
Prob_urban` (only IMG_ID/LAT/LON are required), and differ in what IMG_ID holds:

* `mp16` -- MP-16 `mp16_places365.csv` (TIBHannover/GeoEstimation release v1.0): IMG_ID is a path relative to
  the image folder (`34/8d/9055806529.jpg`); the training set.
* `im2gps` -- Im2GPS, 237 images, `im2gps_places365.csv` (TIBHannover/GeoEstimation, `meta/` on the
  `original_tf` branch): IMG_ID is the file name (`104123223_7410c654ba_19_19355699@N00.jpg`).
* `im2gps3k` -- Im2GPS3k, 2,997 images, `im2gps3k_places365.csv` (same place): IMG_ID is the file name.
  Some commits of both files name the columns `LON,LAT` while the values stay lat,lon: detected per file.
* `yfcc4k` -- YFCC4k `yfcc4k_places365.csv` (the copy G3 and others read beside the images of Vo et al.'s
  `yfcc4k.zip`): IMG_ID is the file name.
* `yfcc26k` -- YFCC26k ("yfcc25600", 25,600 images), `yfcc25600_places365.csv` (TIBHannover/GeoEstimation
  release `pytorch`, its validation set): IMG_ID is a relative path as in MP-16 (`45/77/3228511372.jpg`).

Im2GPS has Im2GPS3k's header and YFCC26k has MP-16's, so 'auto' keeps reading them as it always did (Im2GPS3k;
YFCC4k for a `yfcc*` file name, else MP-16): name them with `format:`. Only the split and the name differ."""

from __future__ import annotations

import warnings

import pyarrow as pa

from geosurge.data.manifest.files import _parent_uri, _read_raw
from geosurge.data.manifest.roots import _relative_under_root, _with_uri_problems, resolve_images_root
from geosurge.data.manifest.schema import (
    _as_string,
    _coord_column,
    _coords,
    _float_column,
    _int_labels,
    _require_columns,
    _table_warnings,
    _with_warnings,
)
from geosurge.data.manifest.swap import check_latlon_swap
from geosurge.storage import S3Config

_PUBLIC_FORMATS = ("mp16", "im2gps3k", "yfcc4k", "im2gps", "yfcc26k")
# The role each public set plays in the literature: MP-16 is the training set, the others are benchmarks.
_PUBLIC_SPLITS = {"mp16": "train", "im2gps3k": "test", "yfcc4k": "test", "im2gps": "test", "yfcc26k": "test"}
_PUBLIC_LABELS = {"s3_label": "scene3", "s16_label": "scene16", "s365_label": "scene365"}

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
    uris, uri_problems = _relative_under_root(images_root, img)  # `../x` never climbs out of the root
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        "image_id": img,
        "uri": uris,
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
    return _with_warnings(_with_uri_problems(pa.table(cols), uri_problems), messages)


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
    images_root = resolve_images_root(images_root)
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


def read_im2gps(uri: str, images_root: str | None = None, s3: S3Config | None = None) -> pa.Table:
    """Im2GPS (237 images) `im2gps_places365.csv` -> manifest table (before validation), split "test"."""
    return read_places365_csv(uri, "im2gps", images_root, s3)


def read_yfcc26k(uri: str, images_root: str | None = None, s3: S3Config | None = None) -> pa.Table:
    """YFCC26k `yfcc25600_places365.csv` -> manifest table (before validation), split "test"; IMG_ID is a relative
    path (`45/77/3228511372.jpg`) under `images_root` (default: the CSV's folder)."""
    return read_places365_csv(uri, "yfcc26k", images_root, s3)
