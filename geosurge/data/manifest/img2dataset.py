"""An img2dataset-style table (format `img2dataset`): one row per image with its `url` and coordinates, as the input
tables of img2dataset (https://github.com/rom1504/img2dataset, `--url_col url`) are written. Parquet or CSV.

Columns, matched in any case: `url` (required; a URL or absolute path is used as written, a relative one is joined
under the images root), `lat`/`lon` or `latitude`/`longitude` (required), the image id from `image_id`, `key` or
`id` (the first present; else the first 16 hex digits of the SHA-1 of the url as written, so an id never depends
on the images root) and an optional `split` (no column, or an empty cell, means "train", or "val" for a `data.val_fraction` share of
those rows, by id hash). Other columns pass
through under their own names. 'auto' picks this format for a `url` column without a `uri` one.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from geosurge.data.manifest.files import _parent_uri, _read_raw
from geosurge.data.manifest.holdout import train_where_unsplit
from geosurge.data.manifest.roots import _under_root, _with_uri_problems, resolve_images_root
from geosurge.data.manifest.schema import (
    _as_string,
    _blank_as_null,
    _conform_passing,
    _coord_column,
    _table_warnings,
    _with_warnings,
)
from geosurge.storage import S3Config

IMG2DATASET = "img2dataset"
_LAT, _LON, _ID = ("lat", "latitude"), ("lon", "longitude"), ("image_id", "key", "id")
# read as text from a CSV: ids must not become integers, and we parse coordinates ourselves
TEXT_COLUMNS = ("url", "split", *_LAT, *_LON, *_ID)


def _first(by_lower: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((by_lower[n] for n in names if n in by_lower), None)


def img2dataset_columns(names: list[str], uri: str = "") -> dict[str, str | None]:
    """{'url', 'lat', 'lon', 'id', 'split'} -> the column of the file that plays that part (None: absent);
    raises unless url and both coordinates are there."""
    by_lower = {c.lower(): c for c in names}
    picked = {"url": by_lower.get("url"), "lat": _first(by_lower, _LAT), "lon": _first(by_lower, _LON),
              "id": _first(by_lower, _ID), "split": by_lower.get("split")}
    missing = [k for k in ("url", "lat", "lon") if picked[k] is None]
    if missing:
        raise ValueError(f"img2dataset table {uri} is missing column(s) {missing} (url, lat/latitude, "
                         f"lon/longitude; any case); found columns: {list(names)}")
    return picked


def _url_ids(urls: pa.Array) -> pa.Array:
    return pa.array([None if u is None else hashlib.sha1(u.encode()).hexdigest()[:16] for u in urls.to_pylist()],
                    pa.string())


def conform_img2dataset_batch(batch: pa.Table, images_root: str, uri: str = "") -> pa.Table:
    """An img2dataset table (the whole file or one streamed batch) -> manifest columns, before validation;
    `images_root` is already resolved (`resolve_images_root`)."""
    picked = img2dataset_columns(batch.column_names, uri)
    urls = _blank_as_null(_as_string(batch.column(picked["url"])))  # an empty cell is a missing url
    ids = _as_string(batch.column(picked["id"])) if picked["id"] else _url_ids(urls)
    # no split of its own (no column, an empty cell) stays null here: `ManifestReading.conform` holds out
    # `data.val_fraction` of those rows by id hash and makes the rest "train"
    if picked["split"]:
        split = _blank_as_null(_as_string(batch.column(picked["split"])))
    else:
        split = pa.nulls(batch.num_rows, pa.string())
    uris, uri_problems = _under_root(images_root, urls)  # URLs as written; local paths only under the root
    replace = {"image_id": ids, "uri": uris, "lat": _coord_column(batch.column(picked["lat"])),
               "lon": _coord_column(batch.column(picked["lon"])), "split": split}
    used = {c for c in picked.values() if c}
    return _with_uri_problems(_conform_passing(batch, used, replace, f"img2dataset table {uri}"), uri_problems)


def read_img2dataset(uri: str, images_root: str | None = None, s3: S3Config | None = None) -> pa.Table:
    """An img2dataset table (Parquet or CSV) -> manifest table, before validation. Relative urls are joined under
    `images_root` (default: the table's folder)."""
    root = resolve_images_root(images_root) if images_root is not None else _parent_uri(uri)
    raw = _read_raw(uri, s3, TEXT_COLUMNS)
    table = train_where_unsplit(conform_img2dataset_batch(raw, root, uri))
    return _with_warnings(table, _table_warnings(raw))
