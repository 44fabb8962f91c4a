"""GWS15k (Google World Streets 15k; Clark et al., "Where We Are and What We're Looking At", CVPR 2023): 15,000
Street View images sampled uniformly over the world's land area, the paper's third benchmark.

Its images and metadata were never released: the authors' repository (AHKerrigan/GeoGuessNet, issue #1) and the
GeoCLIP repository (VicenteVivan/geo-clip, issue #8: "It's private") both answer requests with "build it
yourself". So there is no published layout to follow; a GWS15k rebuilt by the paper's recipe is read from our own
columns, matched in any case:

* `image_id`, `uri`, `lat`, `lon`: a URL or absolute path in `uri` is used as written, a relative one is joined
  under the images root (default: the file's folder);
* or `IMG_ID`, `lat`, `lon`, as the public `*_places365.csv` files: IMG_ID is a path under the images root.

Rows take the split "test" unless the file has a `split` column (an empty cell still means "test"). Other
columns (city, country, heading, ...) pass through. 'auto' never picks this format: name it with `format: gws15k`.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from geosurge.data.manifest.files import _parent_uri, _read_raw
from geosurge.data.manifest.roots import _relative_under_root, _under_root, _with_uri_problems, resolve_images_root
from geosurge.data.manifest.schema import (
    _as_string,
    _blank_as_null,
    _conform_passing,
    _coord_column,
    _table_warnings,
    _with_warnings,
)
from geosurge.storage import S3Config

GWS15K = "gws15k"
TEXT_COLUMNS = ("image_id", "uri", "img_id", "lat", "lon", "split")


def gws15k_columns(names: list[str], uri: str = "") -> dict[str, str | None]:
    """{'id', 'uri', 'img_id', 'lat', 'lon', 'split'} -> the file's column for each part (None: absent); raises
    unless the file has image_id + uri or IMG_ID, and lat and lon."""
    by_lower = {c.lower(): c for c in names}
    picked = {k: by_lower.get(c) for k, c in (("id", "image_id"), ("uri", "uri"), ("img_id", "img_id"),
                                              ("lat", "lat"), ("lon", "lon"), ("split", "split"))}
    has_ref = (picked["id"] and picked["uri"]) or picked["img_id"]
    if not (has_ref and picked["lat"] and picked["lon"]):
        raise ValueError(f"GWS15k file {uri}: its metadata was never published, so it is read from our columns: "
                         f"image_id, uri, lat, lon (or IMG_ID relative to the images root, lat, lon; any case); "
                         f"found columns: {list(names)}")
    if picked["id"] and picked["uri"]:
        picked["img_id"] = None  # image_id + uri win; an IMG_ID column then passes through as an extra
    else:
        picked["id"] = picked["uri"] = None
    return picked


def conform_gws15k_batch(batch: pa.Table, images_root: str, uri: str = "") -> pa.Table:
    """A GWS15k table (the whole file or one streamed batch) -> manifest columns, before validation;
    `images_root` is already resolved (`resolve_images_root`)."""
    picked = gws15k_columns(batch.column_names, uri)
    if picked["img_id"]:
        ids = _as_string(batch.column(picked["img_id"]))
        uris, uri_problems = _relative_under_root(images_root, ids)  # as the public readers: never above the root
    else:
        ids = _as_string(batch.column(picked["id"]))
        uris, uri_problems = _under_root(images_root, _blank_as_null(_as_string(batch.column(picked["uri"]))))
    split = (pc.fill_null(_blank_as_null(_as_string(batch.column(picked["split"]))), "test") if picked["split"]
             else pa.array(["test"] * batch.num_rows, pa.string()))
    replace = {"image_id": ids, "uri": uris, "lat": _coord_column(batch.column(picked["lat"])),
               "lon": _coord_column(batch.column(picked["lon"])), "split": split}
    used = {c for c in picked.values() if c}
    return _with_uri_problems(_conform_passing(batch, used, replace, f"GWS15k file {uri}"), uri_problems)


def read_gws15k(uri: str, images_root: str | None = None, s3: S3Config | None = None) -> pa.Table:
    """A GWS15k table in our columns (Parquet or CSV) -> manifest table, before validation."""
    root = resolve_images_root(images_root) if images_root is not None else _parent_uri(uri)
    raw = _read_raw(uri, s3, TEXT_COLUMNS)
    return _with_warnings(conform_gws15k_batch(raw, root, uri), _table_warnings(raw))
