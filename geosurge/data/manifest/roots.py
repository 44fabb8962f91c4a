"""Where a manifest's images live: one spelling of an images root for every reader, ingest and the eval job, and
image references resolved under it."""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.compute as pc

from geosurge.data.manifest.schema import _as_string, _join
from geosurge.storage import join

# A URL (s3://, http(s)://, file://, gs://, ...) or an absolute local path: a reference that needs no root.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ABSOLUTE = r"^([A-Za-z][A-Za-z0-9+.-]*://|/)"


def resolve_images_root(root: str) -> str:
    """An images root as every reader spells it: URLs (s3://, http(s)://, file://, any scheme://) stay exactly as
    given, a plain local path becomes absolute. `os.path.abspath` alone would turn `http://127.0.0.1:9/x` into
    `<cwd>/http:/127.0.0.1:9/x`, a local path that does not exist."""
    if _SCHEME.match(root):
        return root
    return os.path.abspath(root)


def _under_root(images_root: str, refs: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Image references -> uris: a URL or an absolute path is kept as written, a relative one is joined under
    `images_root` (already resolved). Nulls stay null."""
    refs = _as_string(refs)
    absolute = pc.fill_null(pc.match_substring_regex(refs, _ABSOLUTE), False)
    return pc.if_else(absolute, refs, _join(join(images_root, ""), refs))
