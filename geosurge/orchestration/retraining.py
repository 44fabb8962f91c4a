"""What the scheduled retraining job keeps in the bucket: a lock (one run at a time) and a watermark (which
manifests of new imagery have been ingested already).

Both live under `<data_root>/retrain/` on the same storage as the data (a local folder or s3://), so any
machine that can reach the bucket sees them; nothing depends on the Ray cluster or the scheduler surviving.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Self

import pyarrow.fs as pafs

from geosurge import storage
from geosurge.data.manifest import is_manifest_name


class LockHeld(RuntimeError):
    """Another run holds the lock."""


def _create_exclusive(uri: str, data: bytes, s3: storage.S3Config | None) -> bool:
    """Write `data` to `uri` only if nothing is there; False if something is. Atomic on both backends:
    O_EXCL locally, a conditional PUT (`If-None-Match: *`) on S3."""
    if storage.is_s3(uri):
        import boto3
        import botocore.exceptions

        s3 = s3 or storage.S3Config()
        client = boto3.client(
            "s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
            aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key,
        )
        bucket, key = uri[len("s3://"):].split("/", 1)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True
    _, path = storage.resolve(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


@dataclass
class LockInfo:
    owner: str
    acquired_at: float
    expires_at: float


class BucketLock:
    """A lease in the bucket: `with BucketLock(uri, ttl_s): ...` or `LockHeld` if another live run has it.

    A lock past its expiry is taken as left by a crashed run and broken (with a warning)."""

    def __init__(self, uri: str, ttl_s: float, s3: storage.S3Config | None = None):
        self.uri, self.ttl_s, self.s3 = uri, ttl_s, s3
        self.info: LockInfo | None = None

    def holder(self) -> LockInfo | None:
        try:
            return LockInfo(**json.loads(storage.read_bytes(self.uri, self.s3)))
        except FileNotFoundError:
            return None

    def acquire(self) -> LockInfo:
        now = time.time()
        info = LockInfo(owner=f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}",
                        acquired_at=now, expires_at=now + self.ttl_s)
        for _ in range(2):
            if _create_exclusive(self.uri, json.dumps(asdict(info)).encode(), self.s3):
                self.info = info
                return info
            held = self.holder()
            if held is not None and held.expires_at > time.time():
                raise LockHeld(f"{self.uri} is held by {held.owner} since "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held.acquired_at))} "
                               f"(expires in {held.expires_at - time.time():.0f} s)")
            print(f"WARNING: breaking an expired lock {self.uri} left by {held.owner if held else 'unknown'}", flush=True)
            self._delete()
        raise LockHeld(f"{self.uri}: could not take the lock")

    def _delete(self) -> None:
        fs, path = storage.resolve(self.uri, self.s3)
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.info is not None and self.holder() == self.info:  # never delete a lock someone else took over
            self._delete()
        self.info = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class IncomingManifest:
    uri: str
    mtime: float


@dataclass
class Watermark:
    """The manifests already ingested by retraining (by URI) and the newest modification time seen."""

    ingested: list[str] = field(default_factory=list)
    newest_mtime: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def load(cls, uri: str, s3: storage.S3Config | None = None) -> Watermark:
        if not storage.exists(uri, s3):
            return cls()
        return cls(**json.loads(storage.read_bytes(uri, s3)))

    def save(self, uri: str, s3: storage.S3Config | None = None) -> None:
        self.updated_at = time.time()
        storage.write_bytes(uri, json.dumps(asdict(self), indent=2).encode(), s3)

    def advance(self, manifests: list[IncomingManifest]) -> None:
        self.ingested = sorted(set(self.ingested) | {m.uri for m in manifests})
        self.newest_mtime = max([self.newest_mtime, *(m.mtime for m in manifests)])


def find_new_manifests(incoming_uri: str, watermark: Watermark, s3: storage.S3Config | None = None) -> list[IncomingManifest]:
    """Manifest files (every Parquet/CSV file) under `incoming_uri` not yet in the watermark, oldest first.

    A manifest is named by its URI rather than only compared by time, so a late upload with an old
    modification time is still picked up and a re-upload of an ingested file is not taken twice."""
    fs, path = storage.resolve(incoming_uri, s3)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    found = []
    prefix = "s3://" if storage.is_s3(incoming_uri) else ""
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type != pafs.FileType.File or not is_manifest_name(info.base_name):
            continue
        uri = prefix + info.path
        if uri not in watermark.ingested:
            found.append(IncomingManifest(uri=uri, mtime=info.mtime.timestamp() if info.mtime else 0.0))
    return sorted(found, key=lambda m: (m.mtime, m.uri))
