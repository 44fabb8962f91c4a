"""What the scheduled retraining job keeps in the bucket: a lock (one run at a time) and a watermark (which
manifests of new imagery have been ingested already).

Both live under `<data_root>/retrain/` on the same storage as the data (a local folder or s3://), so any
machine that can reach the bucket sees them; nothing depends on the Ray cluster or the scheduler surviving.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Self

import pyarrow.fs as pafs

from geosurge import storage
from geosurge.data.manifest import is_manifest_name

EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock (or took it over); try again later


class LockHeld(RuntimeError):
    """Another run holds the lock."""


class LockLost(RuntimeError):
    """This run's lease is gone (it expired and another run took it, or the lock file was removed): the run must
    stop before it writes anything that the lock guards (a registered version, the champion alias, the watermark)."""


class WatermarkConflict(RuntimeError):
    """The watermark changed since this run read it: another run advanced it."""


class ConditionalFile:
    """One small file with compare-and-swap writes, on S3 or in a local folder. Every write names the version
    (`etag`) it replaces, or None for "only if absent", and fails (returns None / False) if that is not what is
    there, so two writers can never both win.

    S3: conditional requests (`If-None-Match: *` to create, `If-Match: <ETag>` to replace or delete; AWS since
    2024, SeaweedFS 4.x). Local: the same rules under an exclusive `flock` on a sidecar `<name>.guard` file, each
    write made whole beside the target and renamed over it, so a crash never leaves a half-written file."""

    def __init__(self, uri: str, s3: storage.S3Config | None = None):
        self.uri, self.s3 = uri, s3
        self._client = None

    # --- S3 --------------------------------------------------------------------------------------------
    def _s3(self):
        if self._client is None:
            import boto3

            s3 = self.s3 or storage.S3Config()
            self._client = boto3.client(
                "s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
                aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key)
        return self._client

    def _bucket_key(self) -> tuple[str, str]:
        bucket, key = self.uri[len("s3://"):].split("/", 1)
        return bucket, key

    def _s3_call(self, method: str, **kwargs):
        """The S3 request; None when its condition failed (412/409) or the object is missing for a conditional
        replace or delete."""
        import botocore.exceptions

        bucket, key = self._bucket_key()
        for attempt in range(2):
            try:
                return getattr(self._s3(), method)(Bucket=bucket, Key=key, **kwargs)
            except botocore.exceptions.ClientError as e:
                code = str(e.response.get("Error", {}).get("Code"))
                if code == "NoSuchBucket" and method == "put_object" and attempt == 0:  # as storage.write_bytes does
                    self._s3().create_bucket(Bucket=bucket)
                    continue
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey", "404",
                            "NoSuchBucket"):
                    return None
                raise
        return None

    # --- local -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self):
        import fcntl

        _, path = storage.resolve(self.uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".guard", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    @staticmethod
    def _local_read(path: str) -> tuple[bytes, str, float] | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
            return data, hashlib.sha256(data).hexdigest(), os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    @staticmethod
    def _local_write(path: str, data: bytes) -> str:
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return hashlib.sha256(data).hexdigest()

    # --- the operations ---------------------------------------------------------------------------------
    def read(self) -> tuple[bytes, str, float] | None:
        """(content, etag, modification time) or None when absent."""
        if storage.is_s3(self.uri):
            got = self._s3_call("get_object")
            if got is None:
                return None
            return got["Body"].read(), got["ETag"], got["LastModified"].timestamp()
        _, path = storage.resolve(self.uri)
        return self._local_read(path)

    def write(self, data: bytes, etag: str | None) -> str | None:
        """Write `data` if the file is at version `etag` (None: only if absent); its new etag, or None if not."""
        if storage.is_s3(self.uri):
            condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
            put = self._s3_call("put_object", Body=data, **condition)
            return None if put is None else put["ETag"]
        with self._guard() as path:
            current = self._local_read(path)
            if (current is None) != (etag is None) or (current is not None and current[1] != etag):
                return None
            return self._local_write(path, data)

    def delete(self, etag: str) -> bool:
        """Delete the file if it is at version `etag`; whether it was deleted."""
        if storage.is_s3(self.uri):
            return self._s3_call("delete_object", IfMatch=etag) is not None
        with self._guard() as path:
            current = self._local_read(path)
            if current is None or current[1] != etag:
                return False
            os.remove(path)
            return True


@dataclass
class LockInfo:
    owner: str
    acquired_at: float
    expires_at: float
    token: str = ""  # fencing token: this lease's own; the lock file holds it only while the lease is ours


class BucketLock:
    """A lease in the bucket: `with BucketLock(uri, ttl_s): ...` or `LockHeld` if another live run has it.

    Held by a compare-and-swap file (`ConditionalFile`): taking a free lock is a create-if-absent, breaking an
    expired one a replace of exactly the version that was read (of two runs breaking it, one wins), renewing and
    releasing name the version this run wrote. A heartbeat renews the lease every `ttl_s / 3`, so a live run
    keeps it however long it takes. `check()` (the fencing check) raises `LockLost` unless the lock file still
    holds this lease: call it before each write the lock guards. An empty or unreadable lock file (a crash
    between create and write elsewhere) counts as held until `ttl_s` after it was written, then as stale."""

    def __init__(self, uri: str, ttl_s: float, s3: storage.S3Config | None = None, heartbeat: bool = True):
        self.uri, self.ttl_s, self.s3, self.heartbeat = uri, ttl_s, s3, heartbeat
        self.file = ConditionalFile(uri, s3)
        self.info: LockInfo | None = None
        self._etag: str | None = None
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost: str | None = None

    def _parse(self, current: tuple[bytes, str, float]) -> tuple[LockInfo, str | None]:
        """(the lease in a lock file, a complaint when the file is empty or unreadable)."""
        data, _, mtime = current
        try:
            return LockInfo(**json.loads(data)), None
        except (ValueError, TypeError) as e:
            why = "empty" if not data.strip() else f"unreadable ({type(e).__name__}: {str(e)[:80]})"
            return LockInfo(owner="unknown", acquired_at=mtime, expires_at=mtime + self.ttl_s), (
                f"the lock file {self.uri} is {why}, as a run that crashed while taking it leaves it; it counts "
                f"as held until {self.ttl_s:.0f} s (retrain.lock_ttl_s) after it was written")

    def holder(self) -> LockInfo | None:
        current = self.file.read()
        return None if current is None else self._parse(current)[0]

    def _lease(self, acquired_at: float | None = None) -> LockInfo:
        now = time.time()
        token = self.info.token if self.info else uuid.uuid4().hex
        return LockInfo(owner=f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}",
                        acquired_at=acquired_at or now, expires_at=now + self.ttl_s, token=token)

    def _took(self, info: LockInfo, etag: str) -> LockInfo:
        self.info, self._etag, self.lost = info, etag, None
        if self.heartbeat:
            self._stop.clear()
            self._beat = threading.Thread(target=self._renew_until_stopped, name="lock-heartbeat", daemon=True)
            self._beat.start()
        return info

    def acquire(self) -> LockInfo:
        for _ in range(3):
            info = self._lease()
            etag = self.file.write(json.dumps(asdict(info)).encode(), None)
            if etag is not None:
                return self._took(info, etag)
            current = self.file.read()
            if current is None:  # released in between: try to create it again
                continue
            held, complaint = self._parse(current)
            if held.expires_at > time.time():
                raise LockHeld(f"{self.uri} is held by {held.owner} since "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held.acquired_at))} "
                               f"(expires in {held.expires_at - time.time():.0f} s unless renewed)"
                               + (f"; {complaint}" if complaint else ""))
            print(f"WARNING: breaking an expired lock {self.uri} left by {held.owner}"
                  + (f" ({complaint}; now past that)" if complaint else ""), flush=True)
            etag = self.file.write(json.dumps(asdict(info)).encode(), current[1])  # only the version we read
            if etag is not None:
                return self._took(info, etag)
            # another run broke it first: the next round sees its live lease
        raise LockHeld(f"{self.uri}: could not take the lock (other runs kept taking it)")

    def renew(self) -> None:
        """Extend the lease by `ttl_s` from now; `LockLost` if the lock file no longer holds it."""
        with self._state:
            if self.info is None:
                raise LockLost(f"{self.uri}: not held")
            info = self._lease(self.info.acquired_at)
            etag = self.file.write(json.dumps(asdict(info)).encode(), self._etag)
            if etag is None:
                self.lost = f"{self.uri} no longer holds this run's lease (token {self.info.token[:8]})"
                raise LockLost(self.lost)
            self.info, self._etag = info, etag

    def _renew_until_stopped(self) -> None:
        period = max(0.05, self.ttl_s / 3)
        wait = period
        while not self._stop.wait(wait):
            try:
                self.renew()
                wait = period
            except LockLost:
                return
            except Exception as e:  # noqa: BLE001 - storage briefly unreachable: retry soon; the lease lasts ttl_s
                print(f"WARNING: could not renew the lock {self.uri}: {e}", flush=True)
                wait = min(period, 10.0)  # not a whole period: two blips in a row must not outlive the lease

    def check(self) -> None:
        """The fencing check before a write the lock guards: `LockLost` unless the lock file holds this lease
        (this run's token, the version it last wrote) and the lease has not expired."""
        with self._state:
            if self.lost or self.info is None:
                raise LockLost(self.lost or f"{self.uri}: not held")
            current = self.file.read()
            if current is None or current[1] != self._etag or self.info.expires_at <= time.time():
                self.lost = (f"{self.uri} no longer holds this run's lease (token {self.info.token[:8]}): it expired "
                             "or another run took it; stopping before writing anything it guards")
                raise LockLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        with self._state:
            if self.info is not None and self._etag is not None and not self.lost:
                self.file.delete(self._etag)  # never deletes a lock someone else took over
            self.info, self._etag = None, None

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
        current = ConditionalFile(uri, s3).read()
        watermark = cls() if current is None else cls(**json.loads(current[0]))
        watermark._etag = None if current is None else current[1]  # the version read: save() replaces only it
        return watermark

    def save(self, uri: str, s3: storage.S3Config | None = None, lock: BucketLock | None = None) -> None:
        """Compare-and-swap: write only over the version `load` read (or only if there was none), after the
        fencing check of `lock`; `WatermarkConflict` if another run saved in between."""
        if lock is not None:
            lock.check()
        self.updated_at = time.time()
        etag = ConditionalFile(uri, s3).write(json.dumps(asdict(self), indent=2).encode(), getattr(self, "_etag", None))
        if etag is None:
            raise WatermarkConflict(f"{uri} changed since this run read it (another retraining run advanced it); "
                                    "not overwritten: the next run picks up whatever is still new")
        self._etag = etag

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
