"""Checkpoint folders in a bucket: `s3://bucket/prefix` is copied once to a local cache folder and loaded from there.

transformers loads only local folders or hub ids, so a segmenter kept in a bucket (for clusters without a hub) is
copied whole to `$GEOSURGE_CACHE/<sha1(uri)[:16]>` (default `~/.cache/geosurge/segmenters/…`). The copy is
atomic: it is written to a temporary folder beside the target and renamed into place, so a crashed or concurrent
copy never leaves a half folder that a later load would take for complete. Later loads of the same URI reuse the
folder without touching the bucket (a changed checkpoint therefore needs a new URI or a cleared cache).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from geosurge import storage
from geosurge.config import S3Config
from geosurge.layout import CACHE_ENV

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The folder holding cached segmenter checkpoints: `$GEOSURGE_CACHE`, else ~/.cache/geosurge/segmenters."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "geosurge" / "segmenters")


def cache_folder(uri: str) -> Path:
    """Where the copy of the checkpoint folder `uri` lives (whether or not it is there yet)."""
    key = hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:16]
    return cache_root() / key


def cached_checkpoint(uri: str, s3: S3Config | None = None) -> Path:
    """A local copy of the checkpoint folder `uri` (s3://…), made on first use; its path."""
    target = cache_folder(uri)
    if target.is_dir():
        return target
    fs, root = storage.resolve(uri.rstrip("/"), s3)
    files = [f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if f.type == pafs.FileType.File]
    if not files:
        raise FileNotFoundError(f"{uri}: no checkpoint files there")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for info in files:
            local = tmp / os.path.relpath(info.path, root)
            local.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path, compression=None) as src, local.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same copy first: keep theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("copied segmenter %s (%d files) to %s", uri, len(files), target)
    return target
