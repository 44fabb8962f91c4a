"""One way to name data everywhere: a local path, `file://…`, `s3://bucket/prefix`, and (read-only) `http(s)://`.

Everything that reads or writes data goes through `resolve`, which turns a URI into a pyarrow filesystem and
a path on it. The same filesystem object is handed to Ray Data (`filesystem=`), so a driver, a Ray task and a
test all see the same bytes. S3 settings come from `S3Config` (endpoint, region) and the standard AWS
credential chain; credentials are never printed or logged. Image URLs in manifests may also be `http(s)://`
(a `Fetcher` reads them with urllib3; the one-off helpers with `requests`).

Fetching many objects (`Fetcher`) retries with exponential backoff and full jitter on throttling (S3
SlowDown/503, HTTP 429), other 5xx answers, connection errors and timeouts, and never on a missing object or a
refused one (404/403); it counts its retries so a stage can report them. A fetch that still fails raises
`FetchFailed` with a quarantine reason: `not_found`, `timeout`, `fetch_error`, `too_large` or `bad_uri`. (The
retry rules live in `geosurge.retry`; storage re-exports them.)

Every image read is bounded: at most `max_bytes` (checked on the size the store reports before reading, then
while streaming), and within a total `RetryPolicy.deadline_s` per fetch, retries included (a body trickled a
byte at a time trips it; a per-socket timeout alone never does). `UriAccess` says what a reader may open when
the URI comes from someone else (serving): no local path, no redirect, no private address, allowed prefixes
only. `redact_uri` is what any URI looks like in a log, a quarantine detail or a report.
"""

from __future__ import annotations

import os
import posixpath
import stat as stat_mode
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from urllib.parse import urlparse

import certifi
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import urllib3

from geosurge.config import (
    S3Config,  # re-exported: callers annotate with storage.S3Config
)
from geosurge.redaction import REDACTED, redact_uri  # noqa: F401  re-exported: callers log through storage
from geosurge.retry import (  # noqa: F401  re-exported: callers read, write and retry through storage
    BAD_URI,
    FETCH_ERROR,
    NOT_FOUND,
    TIMEOUT,
    TOO_LARGE,
    DeadlineExceeded,
    FetchFailed,
    HttpStatus,
    RetryPolicy,
    TooLarge,
    classify,
    with_retries,
)
from geosurge.uri_access import UriAccess, UriRefused  # re-exported: readers take them from here


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def join(root: str, *parts: str) -> str:
    """Join path parts under a root URI (local path or s3://), with forward slashes for object stores."""
    if is_s3(root) or root.startswith("file://"):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


def s3_filesystem(
    s3: S3Config | None = None, max_attempts: int | None = None, timeout_s: float | None = None
) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem. `max_attempts=1` turns the AWS SDK's own retries off (a `Fetcher` retries and
    counts instead); `timeout_s` bounds connecting and each request."""
    s3 = s3 or S3Config()
    kwargs: dict = {"allow_bucket_creation": True}
    if max_attempts is not None:
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts)
    if timeout_s is not None:
        kwargs["connect_timeout"] = timeout_s
        kwargs["request_timeout"] = timeout_s
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
    return _S3FileSystem((s3.without_secrets(), max_attempts, timeout_s), **kwargs)


class _S3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem that pickles (into Ray tasks, e.g. Ray Data's `filesystem=`) as the arguments that
    build it, without credentials: the receiving worker takes its keys from its own AWS chain."""

    def __init__(self, rebuild_args: tuple, **kwargs):
        super().__init__(**kwargs)
        self._rebuild_args = rebuild_args

    def __reduce__(self):
        return s3_filesystem, self._rebuild_args


def resolve(uri: str, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a local path, file:// URI or s3:// URI."""
    if is_http(uri):
        raise ValueError(f"{uri}: http(s) URLs are read-only image sources (read_bytes), not a filesystem")
    if is_s3(uri):
        return s3_filesystem(s3), uri[len("s3://"):]
    uri = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def ensure_dir(uri: str, s3: S3Config | None = None) -> None:
    fs, path = resolve(uri, s3)
    fs.create_dir(path, recursive=True)


_buckets_made: set[tuple[str | None, str]] = set()  # (endpoint, bucket) this process has made sure of
_buckets_lock = threading.Lock()


def make_parent(fs: pafs.FileSystem, path: str, s3: S3Config | None = None) -> None:
    """Make `path`'s parent folder writable: on S3 only its bucket must exist (keys need no folders), checked
    once per process; locally, the folders are made.

    Why not `create_dir` on S3 every time: it writes a folder marker per level, one request each, and
    concurrent calls on the same prefix serialise on SeaweedFS: eight threads writing 3 kB objects managed 3.7
    objects/s through it, 146/s with the bucket checked once (one thread: 64/s, then 81/s)."""
    if isinstance(fs, pafs.S3FileSystem):
        key = ((s3 or S3Config()).endpoint_url, path.split("/", 1)[0])
        with _buckets_lock:
            if key not in _buckets_made:
                fs.create_dir(key[1])  # an existing bucket: one HEAD request
                _buckets_made.add(key)
        return
    parent = os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)


def write_bytes(uri: str, data: bytes, s3: S3Config | None = None) -> None:
    fs, path = resolve(uri, s3)
    make_parent(fs, path, s3)
    with fs.open_output_stream(path, compression=None) as f:  # bytes as given, even for a name ending .gz
        f.write(data)


def read_bytes(uri: str, s3: S3Config | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes behind `uri`; with `max_bytes`, raises `TooLarge` rather than read more (size checked first)."""
    if is_http(uri):
        import requests

        with requests.get(uri, timeout=60, stream=True) as response:
            if response.status_code in (404, 410):
                raise FileNotFoundError(f"{redact_uri(uri)}: HTTP {response.status_code}")
            response.raise_for_status()
            return _read_http_body(response.raw, uri, max_bytes, None)
    fs, path = resolve(uri, s3)
    if max_bytes is None:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    size = fs.get_file_info(path).size
    if size is not None and size > max_bytes:
        raise TooLarge(f"{redact_uri(uri)}: {size} bytes exceeds the {max_bytes}-byte limit")
    with fs.open_input_stream(path, compression=None) as f:
        return _read_capped(f.read, uri, max_bytes, None)


def exists(uri: str, s3: S3Config | None = None) -> bool:
    fs, path = resolve(uri, s3)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def parent(uri: str) -> str:
    """The folder holding `uri` (same spelling: s3:// stays s3://)."""
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.dirname(uri.rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))


def stat(uri: str, s3: S3Config | None = None) -> dict[str, object]:
    """What identifies one file's content without reading it: size and modification time (local, s3://), or the
    server's ETag / Last-Modified / Content-Length (http(s)://, a HEAD request). A changed file changes this."""
    if is_http(uri):
        import requests

        response = requests.head(uri, timeout=60, allow_redirects=True)
        if response.status_code in (404, 410):
            raise FileNotFoundError(f"{uri}: HTTP {response.status_code}")
        response.raise_for_status()
        headers = response.headers
        return {"uri": uri, "etag": headers.get("ETag"), "modified": headers.get("Last-Modified"),
                "size": headers.get("Content-Length")}
    fs, path = resolve(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    return {"uri": uri, "size": info.size, "modified": info.mtime.timestamp() if info.mtime else None}


def copy_from_http(url: str, dest: str, s3: S3Config | None = None, max_bytes: int = 8 << 30,
                   timeout_s: float = 60.0) -> int:
    """Stream `url` into `dest` (local or s3://), never more than `max_bytes`; returns the bytes copied. The copy
    is written under a temporary name and renamed, so `dest` is whole or absent."""
    import requests

    fs, path = resolve(dest, s3)
    make_parent(fs, path, s3)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.partial"
    copied = 0
    try:
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            if response.status_code in (404, 410):
                raise FileNotFoundError(f"{url}: HTTP {response.status_code}")
            response.raise_for_status()
            with fs.open_output_stream(tmp, compression=None) as out:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise ValueError(f"{url} is larger than {max_bytes} bytes: not copied")
                    out.write(chunk)
        fs.move(tmp, path)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
    return copied


# --------------------------------------------------------------------------------------------- bounded reads

DEFAULT_MAX_IMAGE_BYTES = 32 << 20
_READ_BLOCK = 1 << 20  # streamed reads take at most this much per call, then check the byte limit and deadline


def _read_capped(read: Callable[[int], bytes], uri: str, max_bytes: int | None, deadline: float | None) -> bytes:
    """Read a stream to its end in blocks, raising TooLarge past `max_bytes` and DeadlineExceeded past `deadline`
    (time.monotonic()), so neither an endless nor a trickled body holds a reader."""
    parts, total = [], 0
    limit = max_bytes if max_bytes is not None else float("inf")
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded(f"{redact_uri(uri)}: fetch deadline passed after {total} bytes")
        block = read(_READ_BLOCK)
        if not block:
            return b"".join(parts)
        total += len(block)
        if total > limit:
            raise TooLarge(f"{redact_uri(uri)}: more than the {max_bytes}-byte limit")
        parts.append(block)


def _read_http_body(response, uri: str, max_bytes: int | None, deadline: float | None) -> bytes:
    """The body of a urllib3 response (`requests`' `response.raw`), within `max_bytes` and `deadline`."""
    length = response.headers.get("Content-Length", "")
    if max_bytes is not None and length.isdigit() and int(length) > max_bytes:
        raise TooLarge(f"{redact_uri(uri)}: {length} bytes exceeds the {max_bytes}-byte limit")
    # read1: whatever has arrived (decoded), so the deadline is checked while a body trickles in
    return _read_capped(lambda n: response.read1(n, decode_content=True), uri, max_bytes, deadline)


# --------------------------------------------------------------------------------------------- fetching

class Fetcher:
    """Reads many objects (local, s3://, http(s)://) from many threads, with `RetryPolicy` retries.

    It holds one S3 filesystem with the SDK's own retries off (so every retry is ours and is counted) and one
    urllib3 pool manager keeping up to `pool_size` keep-alive connections per host, so consecutive images from one
    host reuse a connection. HTTP goes through urllib3 itself, not `requests`: a requests call spends more CPU on
    settings (proxy environment, cookies, hooks) than the request takes (ingest profile: ~0.6 ms against ~0.2 ms
    per image, as much as decoding it). Proxies come from the environment (HTTP(S)_PROXY, NO_PROXY), read once.

    A web host that has served this Fetcher nothing yet and that a read could not connect to (refused, no such
    name, connect timeout), once that read's retries are spent, counts as down for `host_down_s`: reads of its
    other URLs fail at once (fetch_error, "host down"), each without a retry cycle of its own. Without it every URL
    of a dead host (common among old photo-sharing URLs) spent the whole budget: with the default 6 retries about
    16 s of backoff each, hours for a few thousand URLs. A host that has served before keeps every read's retries:
    its outage (a restart) is likely short, and a row quarantined is not fetched again by a resumed ingest. After
    `host_down_s` the next reads try the host again; one that gets through clears it. Behind a proxy this never
    applies: the connection that fails is the proxy's."""

    def __init__(self, s3: S3Config | None, policy: RetryPolicy, pool_size: int = 16,
                 max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES, access: UriAccess | None = None,
                 host_down_s: float = 60.0):
        self.s3 = s3
        self.policy = policy
        self.host_down_s = host_down_s
        self._down: dict[tuple, tuple[float, str]] = {}  # (scheme, host, port) → (down until, why), monotonic
        self._served: set[tuple] = set()  # hosts a read got an answer from
        self.pool_size = pool_size
        self.max_bytes = max_bytes  # no read takes more (TooLarge → reason too_large)
        self.access = access or UriAccess()
        self._lock = threading.Lock()
        self._s3fs: pafs.FileSystem | None = None
        self._proxies = urllib.request.getproxies_environment()
        self._pools: dict[str | None, urllib3.PoolManager] = {}  # by proxy URL (None: direct)
        # urllib3 follows redirects itself (dropping credentials across hosts); refused ones come back as 3xx
        self._retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0,
                                      redirect=30 if self.access.follow_redirects else False,
                                      raise_on_redirect=False)

    def _s3(self) -> pafs.FileSystem:
        with self._lock:
            if self._s3fs is None:
                self._s3fs = s3_filesystem(self.s3, max_attempts=1, timeout_s=self.policy.timeout_s)
            return self._s3fs

    def _http(self, url: urllib3.util.Url) -> urllib3.PoolManager:
        proxy = self._proxies.get(url.scheme)
        if proxy and urllib.request.proxy_bypass_environment(url.host or "", self._proxies):
            proxy = None
        with self._lock:
            if proxy not in self._pools:
                # certifi's CA bundle, as requests used: slim images may have no system CA store
                pools = {"num_pools": 4, "maxsize": self.pool_size, "block": False, "ca_certs": certifi.where()}
                self._pools[proxy] = urllib3.ProxyManager(proxy, **pools) if proxy else urllib3.PoolManager(**pools)
            return self._pools[proxy]

    def _read_http(self, uri: str, deadline: float | None) -> bytes:
        remaining = self.policy.timeout_s if deadline is None else max(0.01, deadline - time.monotonic())
        timeout = urllib3.Timeout(connect=self.policy.timeout_s, read=min(self.policy.timeout_s, remaining))
        url = urllib3.util.parse_url(uri)
        headers = urllib3.make_headers(basic_auth=url.auth) if url.auth else None  # as requests did for user:pw@
        try:
            response = self._http(url).request("GET", uri, headers=headers, timeout=timeout, retries=self._retries,
                                               preload_content=False)
        except urllib3.exceptions.MaxRetryError as e:  # connect=0: the first failure, wrapped
            raise (e.reason or e) from None
        try:
            if response.get_redirect_location():
                raise UriRefused(f"{redact_uri(uri)} redirects (HTTP {response.status})")
            if response.status != 200:
                retry_after = response.headers.get("Retry-After", "")
                wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
                raise HttpStatus(redact_uri(uri), response.status, wait)
            return _read_http_body(response, uri, self.max_bytes, deadline)
        except BaseException:
            response.close()  # a body left unread must not go back to the pool in front of the next request
            raise
        finally:
            response.release_conn()  # a whole body read: the connection serves the next image

    def _read_once(self, uri: str, deadline: float | None) -> bytes:
        limit = self.max_bytes
        if is_http(uri):
            return self._read_http(uri, deadline)
        if is_s3(uri):
            with self._s3().open_input_file(uri[len("s3://"):]) as f:  # opening asks the store for the size (HEAD)
                if limit is not None and f.size() > limit:
                    raise TooLarge(f"{redact_uri(uri)}: {f.size()} bytes exceeds the {limit}-byte limit")
                return f.read()  # one ranged GET of the size just checked (each read() of this file is a request)
        _, path = resolve(uri)
        info = os.stat(path)
        if not stat_mode.S_ISREG(info.st_mode):  # /dev/zero, a FIFO, a socket: no end, or no size to check
            raise IsADirectoryError(f"{path} is not a regular file")
        if limit is not None and info.st_size > limit:
            raise TooLarge(f"{path}: {info.st_size} bytes exceeds the {limit}-byte limit")
        with open(path, "rb") as f:
            return _read_capped(f.read, uri, limit, deadline)

    def read(self, uri: str) -> tuple[bytes, int]:
        """(bytes, retries it took); raises FetchFailed (reason bad_uri, with UriRefused's one message, for a URI
        this fetcher's access refuses)."""
        try:
            self.access.check(uri)
        except UriRefused as e:
            raise FetchFailed(BAD_URI, UriRefused.MESSAGE) from e
        deadline = None if self.policy.deadline_s is None else time.monotonic() + self.policy.deadline_s
        if not is_http(uri):
            return with_retries(lambda: self._read_once(uri, deadline), self.policy, uri, deadline)
        url = urllib3.util.parse_url(uri)
        host = (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))
        down = self._down.get(host)
        if down and time.monotonic() < down[0]:
            raise FetchFailed(FETCH_ERROR, f"{redact_uri(uri)}: host down ({down[1]})")
        try:
            got = with_retries(lambda: self._read_once(uri, deadline), self.policy, uri, deadline)
        except FetchFailed as e:
            # a connection error is transient, so it ends a read only once its retries (or deadline) are spent
            if host not in self._served and _could_not_connect_to(e.__cause__, host):
                with self._lock:
                    now = time.monotonic()
                    self._down = {h: d for h, d in self._down.items() if d[0] > now}  # many dead hosts: bounded
                    self._down[host] = (now + self.host_down_s, f"a read of it: {e.detail}")
            raise
        if host not in self._served:
            if len(self._served) >= _MAX_HOSTS_KEPT:  # a manifest spread over millions of hosts: memory stays bounded
                self._served.clear()
            self._served.add(host)
        if host in self._down:  # marked meanwhile, or its time ran out: this read got through
            with self._lock:
                self._down.pop(host, None)
        return got


_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_HOSTS_KEPT = 100_000


def _could_not_connect_to(error: BaseException | None, host: tuple) -> bool:
    """Whether `error` is a failure to connect (refused, no such name, connect timeout) to `host` itself, not to a
    redirect's target or a proxy: urllib3 names the connection it could not open."""
    if not isinstance(error, urllib3.exceptions.ConnectTimeoutError):  # NewConnectionError: a subclass
        return False
    conn = getattr(error, "conn", None) or (error.args[0] if error.args else None)
    return (getattr(conn, "host", None), getattr(conn, "port", None)) == host[1:]


def write_parquet(table: pa.Table, uri: str, s3: S3Config | None = None,
                  policy: RetryPolicy | None = None, metadata: dict[bytes, bytes] | None = None) -> int:
    """Write one Parquet file so that it appears whole or not at all; returns the retries it took. The one Parquet
    writer of the code base: manifests, shards, quarantine, geocells and GeoWorld all go through it.

    An S3 PUT (multipart or not) is atomic by itself; a local file is written beside its target under a hidden
    temporary name and renamed. Readers skip names starting with '.', so a killed writer leaves nothing they
    read."""
    fs, path = resolve(uri, s3)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})

    def write() -> None:
        if is_s3(uri):
            with fs.open_output_stream(path) as f:
                pq.write_table(table, f)
            return
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    _, retries = with_retries(write, policy or RetryPolicy(), uri)
    return retries
