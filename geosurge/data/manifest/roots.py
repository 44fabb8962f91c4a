"""Where a manifest's images live: one spelling of an images root for every reader, ingest and the eval job, and
image references resolved under it."""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc

from geosurge.data.manifest.schema import URI_PROBLEM, _as_string
from geosurge.storage import join, redact_uri
from geosurge.uri_access import under_prefix

# A URL (s3://, http(s)://, file://, gs://, ...) or an absolute local path: a reference that needs no root.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def resolve_images_root(root: str) -> str:
    """An images root as every reader spells it: URLs (s3://, http(s)://, file://, any scheme://) stay exactly as
    given, a plain local path becomes absolute. `os.path.abspath` alone would turn `http://127.0.0.1:9/x` into
    `<cwd>/http:/127.0.0.1:9/x`, a local path that does not exist."""
    if _SCHEME.match(root):
        return root
    return os.path.abspath(root)


def _under_root(images_root: str, refs: pa.Array | pa.ChunkedArray, keep_urls: bool = True,
                ) -> tuple[pa.Array, pa.Array]:
    """Image references -> (uris, problems). A relative reference is normalised and joined under `images_root`
    (already resolved); one that climbs out of it (`../outside/x.jpg`) is a problem, as is an absolute local path
    (or file://) that is not under a local root. With `keep_urls`, a URL of another scheme (http(s)://, s3://) is
    kept as written: an img2dataset table names its images by URL. Nulls stay null, with no problem."""
    uris, problems = [], []
    root_is_local = not _SCHEME.match(images_root) or images_root.startswith("file://")
    local_root = posixpath.normpath(images_root.removeprefix("file://")) if root_is_local else None
    for ref in _as_string(refs).to_pylist():
        uri, problem = _resolve_ref(ref, images_root, local_root, keep_urls)
        uris.append(uri)
        problems.append(problem)
    return pa.array(uris, pa.string()), pa.array(problems, pa.string())


def _resolve_ref(ref: str | None, root: str, local_root: str | None, keep_urls: bool) -> tuple[str | None, str | None]:
    if ref is None:
        return None, None
    if _SCHEME.match(ref) and not ref.startswith("file://"):
        if keep_urls:
            return ref, None
        return ref, f"uri {redact_uri(ref)} is not under the images root {redact_uri(root)}"
    if ref.startswith(("/", "file://")):  # an absolute local path: only under a local root
        path = posixpath.normpath(unquote(ref.removeprefix("file://")))
        if local_root is not None and (path + "/").startswith(local_root.rstrip("/") + "/"):
            return path, None
        return ref, f"uri {redact_uri(ref)} is not under the images root {redact_uri(root)}"
    rel = posixpath.normpath(ref)
    if rel == ".." or rel.startswith("../") or ".." in unquote(rel).split("/"):
        return join(root, ref), f"uri {redact_uri(ref)} leaves the images root {redact_uri(root)}"
    return join(root, "") + (rel if rel != "." else ""), None


def _relative_under_root(images_root: str, refs: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Public-format IMG_IDs -> (uris, problems): paths under the root; a leading '/' is dropped (never above
    the root), and one that climbs out of it with `..` is a problem."""
    return _under_root(images_root, pc.utf8_ltrim(_as_string(refs), "/"), keep_urls=False)


def uris_outside_prefixes(uris: pa.Array, prefixes: tuple[str, ...]) -> pa.Array:
    """Per uri, why it is refused under `ingest.allowed_uri_prefixes` (null: allowed; every uri is when there
    are no prefixes): it must start with a prefix and have no `..` segment that could climb back out."""
    if not prefixes:
        return pa.nulls(len(uris), pa.string())
    out = []
    for uri in _as_string(uris).to_pylist():
        ok = uri is None or (any(_under(uri, p) for p in prefixes) and ".." not in unquote(uri).split("/"))
        out.append(None if ok else f"uri {redact_uri(uri)} is under no allowed prefix (ingest.allowed_uri_prefixes)")
    return pa.array(out, pa.string())


def _under(uri: str, prefix: str) -> bool:
    # on a boundary: "s3://photos" never admits "s3://photos-x/…", nor "https://a.com" "https://a.com.evil.net/…"
    if "://" in prefix:
        return under_prefix(urlparse(uri), urlparse(prefix))
    return uri == prefix or uri.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _with_uri_problems(table: pa.Table, problems: pa.Array) -> pa.Table:
    """The table with its URI_PROBLEM column, only when some row has one (a clean table keeps its columns)."""
    return table.append_column(URI_PROBLEM, problems) if problems.null_count < len(problems) else table
