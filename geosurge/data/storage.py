"""One way to name data everywhere: a local path, `file://…` or `s3://bucket/prefix`.

Everything that reads or writes data goes through `resolve`, which turns a URI into a pyarrow filesystem and
a path on it. The same filesystem object is handed to Ray Data (`filesystem=`), so a driver, a Ray task and a
test all see the same bytes. S3 settings come from `S3Config` (endpoint, region) and the standard AWS
credential chain; credentials are never printed or logged.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs


@dataclass
class S3Config:
    """Where S3 lives. Empty fields fall back to the standard AWS chain (env vars, ~/.aws, instance role)."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:8333 for SeaweedFS/MinIO; None for AWS
    region: str | None = None
    access_key_id: str | None = None  # prefer the AWS chain; kept here for local test servers
    secret_access_key: str | None = None

    def __repr__(self) -> str:  # keep secrets out of logs and MLflow params
        return f"S3Config(endpoint_url={self.endpoint_url!r}, region={self.region!r}, credentials=<hidden>)"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join path parts under a root URI (local path or s3://), with forward slashes for object stores."""
    if is_s3(root) or root.startswith("file://"):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


def s3_filesystem(s3: S3Config | None = None) -> pafs.S3FileSystem:
    s3 = s3 or S3Config()
    kwargs: dict = {"allow_bucket_creation": True}
    if s3.endpoint_url:
        parsed = urlparse(s3.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if s3.region:
        kwargs["region"] = s3.region
    access_key = s3.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = s3.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        kwargs["access_key"] = access_key
        kwargs["secret_key"] = secret_key
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a local path, file:// URI or s3:// URI."""
    if is_s3(uri):
        return s3_filesystem(s3), uri[len("s3://"):]
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def ensure_dir(uri: str, s3: S3Config | None = None) -> None:
    fs, path = resolve(uri, s3)
    fs.create_dir(path, recursive=True)


def write_bytes(uri: str, data: bytes, s3: S3Config | None = None) -> None:
    fs, path = resolve(uri, s3)
    parent = posixpath.dirname(path) if is_s3(uri) else os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_bytes(uri: str, s3: S3Config | None = None) -> bytes:
    fs, path = resolve(uri, s3)
    with fs.open_input_stream(path) as f:
        return f.read()


def exists(uri: str, s3: S3Config | None = None) -> bool:
    fs, path = resolve(uri, s3)
    return fs.get_file_info(path).type != pafs.FileType.NotFound
