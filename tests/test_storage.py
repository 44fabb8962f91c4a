"""Every image read is bounded (bytes and total time), refused URIs say nothing about why, and URIs are redacted
before they are logged: against real files, a loopback HTTP server and (tests/test_storage_s3.py) SeaweedFS."""

import http.server
import threading
import time

import pytest

from geosurge import storage

BODY = b"\xff\xd8 not really a jpeg but bytes all the same"


class LoopbackServer:
    """An HTTP server on loopback with the bodies that hurt a reader: a trickle, an endless chunked stream, a
    redirect, a declared-huge body. `sent[path]` counts the body bytes each path got out before the client left."""

    def __init__(self, port: int = 0):
        self.sent: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.connections = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):  # once per connection
                outer.connections += 1
                super().setup()

            def do_GET(self):
                outer.sent.setdefault(self.path, 0)
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                serve = getattr(outer, "_" + self.path.strip("/").split("?")[0].replace("-", "_"), None)
                if serve is None:
                    self.send_error(404)
                    return
                try:
                    serve(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _image(self, h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(BODY)))
        h.end_headers()
        h.wfile.write(BODY)

    def _cut_short(self, h):  # declares 1000 bytes, sends 10 and hangs up
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"x" * 10)
        h.close_connection = True

    def _trickle(self, h):  # 40 bytes, one every 0.25 s: 10 s, though no single read waits longer than 0.25 s
        h.send_response(200)
        h.send_header("Content-Length", "40")
        h.end_headers()
        for _ in range(40):
            h.wfile.write(b"x")
            h.wfile.flush()
            self.sent[h.path] += 1
            time.sleep(0.25)

    def _endless_chunked(self, h):  # 300 MiB in 1 MiB chunks, no Content-Length
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        block = b"\0" * (1 << 20)
        for _ in range(300):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.sent[h.path] += len(block)
        h.wfile.write(b"0\r\n\r\n")

    def _declared_huge(self, h):  # says 1.5 GiB up front; a reader that believes it never asks for the body
        h.send_response(200)
        h.send_header("Content-Length", str(3 << 29))
        h.end_headers()
        h.wfile.write(b"\0" * 1024)
        self.sent[h.path] += 1024

    def _redirect(self, h):
        h.send_response(302)
        h.send_header("Location", "/image")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _redirect_away(self, h):  # to `self.away`, another host
        h.send_response(302)
        h.send_header("Location", self.away)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback():
    server = LoopbackServer()
    yield server
    server.stop()


def test_a_trickled_body_is_cut_at_the_total_deadline(loopback):
    policy = storage.RetryPolicy(retries=3, backoff_s=0.01, timeout_s=2, deadline_s=1.5)
    started = time.monotonic()
    with pytest.raises(storage.FetchFailed) as failed:
        storage.Fetcher(None, policy).read(f"{loopback.url}/trickle")
    took = time.monotonic() - started
    assert failed.value.reason == "timeout" and took < 3.5, (failed.value, took)  # not 10 s, and no retry after it
    print(f"\ntrickled body (1 byte / 0.25 s, timeout_s=2, deadline_s=1.5): failed after {took:.1f} s")


def test_an_endless_chunked_body_stops_at_the_byte_limit(loopback):
    policy = storage.RetryPolicy(retries=0, timeout_s=10, deadline_s=60)
    with pytest.raises(storage.FetchFailed) as failed:
        storage.Fetcher(None, policy, max_bytes=4 << 20).read(f"{loopback.url}/endless-chunked")
    assert failed.value.reason == "too_large"
    time.sleep(0.5)
    # the server got out what the socket buffers held, not 300 MiB
    assert loopback.sent["/endless-chunked"] < 64 << 20, loopback.sent


def test_a_declared_size_over_the_limit_is_refused_before_the_body(loopback):
    with pytest.raises(storage.FetchFailed) as failed:
        storage.Fetcher(None, storage.RetryPolicy(retries=0), max_bytes=1 << 20).read(f"{loopback.url}/declared-huge")
    assert failed.value.reason == "too_large" and "1610612736" in failed.value.detail


def test_http_reads_reuse_keep_alive_connections_across_threads(loopback):
    from concurrent.futures import ThreadPoolExecutor

    fetcher = storage.Fetcher(None, storage.RetryPolicy(retries=0), pool_size=4)
    before = loopback.connections
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: fetcher.read(f"{loopback.url}/image?i={i}"), range(200)))
    assert got == [(BODY, 0)] * 200
    assert loopback.connections - before <= 4  # one per thread at most, not one per image
    # an error answer leaves its connection unusable for the next request: closed, and the next image still reads
    with pytest.raises(storage.FetchFailed):
        fetcher.read(f"{loopback.url}/missing")
    assert fetcher.read(f"{loopback.url}/image") == (BODY, 0)


def test_http_connection_failures_are_transient_and_counted(loopback):
    policy = storage.RetryPolicy(retries=2, backoff_s=0.01)
    with pytest.raises(storage.FetchFailed) as cut:
        storage.Fetcher(None, policy).read(f"{loopback.url}/cut-short")
    assert cut.value.reason == "fetch_error" and cut.value.retries == 2 and loopback.hits["/cut-short"] == 3
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(storage.FetchFailed) as refused:
        storage.Fetcher(None, policy).read(f"http://127.0.0.1:{closed}/x.jpg")
    assert refused.value.reason == "fetch_error" and refused.value.retries == 2


def test_a_host_that_cannot_be_connected_to_is_down_for_a_while_its_other_urls_failing_at_once(loopback):
    from tests.conftest import free_port

    policy = storage.RetryPolicy(retries=2, backoff_s=0.05)
    fetcher = storage.Fetcher(None, policy, host_down_s=1.0)
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens there: refused
    with pytest.raises(storage.FetchFailed) as first:
        fetcher.read(f"{dead}/a.jpg?sig=secret")
    assert first.value.reason == "fetch_error" and first.value.retries == 2  # the read itself spent its retries
    started = time.monotonic()
    with pytest.raises(storage.FetchFailed) as second:
        fetcher.read(f"{dead}/b.jpg?sig=secret")
    assert time.monotonic() - started < 0.5  # no retry cycle (its backoff alone sleeps up to 0.15 s)
    assert second.value.reason == "fetch_error" and second.value.retries == 0
    assert "host down" in second.value.detail and "/a.jpg" in second.value.detail  # which read found it down
    assert "secret" not in second.value.detail
    assert fetcher.read(f"{loopback.url}/image") == (BODY, 0)  # another port of the same machine is another host

    # the host comes back: within host_down_s it is not asked, after it the next read gets through and clears it
    revived = LoopbackServer(port=int(dead.rsplit(":", 1)[1]))
    try:
        with pytest.raises(storage.FetchFailed, match="host down"):
            fetcher.read(f"{dead}/image")
        assert revived.hits == {}
        time.sleep(max(0.0, started + 1.0 - time.monotonic()))
        assert fetcher.read(f"{dead}/image") == (BODY, 0) and revived.hits == {"/image": 1}
        with pytest.raises(storage.FetchFailed, match="404"):  # an error answer closes the kept-alive connection
            fetcher.read(f"{dead}/missing")
    finally:
        revived.stop()
    # ... and now that it has served, an outage (a restart) costs each read its own retries, never "host down"
    for _ in range(2):
        with pytest.raises(storage.FetchFailed) as restarting:
            fetcher.read(f"{dead}/image")
        assert restarting.value.retries == 2 and "host down" not in restarting.value.detail


def test_only_a_failure_to_connect_to_the_host_itself_marks_it_down(loopback):
    from tests.conftest import free_port

    policy = storage.RetryPolicy(retries=1, backoff_s=0.01)
    fetcher = storage.Fetcher(None, policy)
    with pytest.raises(storage.FetchFailed):  # connected, then cut short: the host answers, it is not down
        fetcher.read(f"{loopback.url}/cut-short")
    loopback.away = f"http://127.0.0.1:{free_port()}/image"  # a redirect to a host nobody listens on
    with pytest.raises(storage.FetchFailed, match="refused"):
        fetcher.read(f"{loopback.url}/redirect-away")
    assert fetcher.read(f"{loopback.url}/image") == (BODY, 0)  # neither marked the host that was asked


def test_local_reads_check_the_size_first_and_refuse_what_is_not_a_file(tmp_path):
    sparse = tmp_path / "sparse.jpg"
    with open(sparse, "wb") as f:
        f.truncate(3 << 29)  # 1.5 GiB that takes no disk: reading it whole would take 1.5 GiB (3 GiB with a copy)
    policy = storage.RetryPolicy(retries=0, deadline_s=10)
    fetcher = storage.Fetcher(None, policy, max_bytes=32 << 20)
    started = time.monotonic()
    with pytest.raises(storage.FetchFailed) as big:
        fetcher.read(str(sparse))
    assert big.value.reason == "too_large" and time.monotonic() - started < 1
    with pytest.raises(storage.FetchFailed) as endless:
        fetcher.read("/dev/zero")  # never ends: refused, not read
    assert endless.value.reason == "fetch_error" and "not a regular file" in endless.value.detail
    (tmp_path / "ok.jpg").write_bytes(BODY)
    assert fetcher.read(str(tmp_path / "ok.jpg")) == (BODY, 0)
    # the module-level reader takes the same limit
    with pytest.raises(storage.TooLarge):
        storage.read_bytes(str(sparse), max_bytes=32 << 20)


def test_untrusted_access_refuses_local_private_redirect_and_other_prefixes_with_one_message(loopback, tmp_path):
    secret = tmp_path / "private.jpg"
    secret.write_bytes(BODY)
    policy = storage.RetryPolicy(retries=0, timeout_s=5)
    trusted = storage.Fetcher(None, policy)
    assert trusted.read(f"{loopback.url}/redirect")[0] == BODY  # the owner's own reads follow redirects
    assert trusted.read(str(secret))[0] == BODY
    served = storage.Fetcher(None, policy, access=storage.UriAccess.untrusted([f"{loopback.url}/", "s3://allowed/"]))
    refused = [str(secret), f"file://{tmp_path}/../{tmp_path.name}/private.jpg", f"file://{secret}",
               f"{loopback.url}/image", f"{loopback.url}/redirect", "http://169.254.169.254/latest/meta-data/",
               "s3://other-bucket/x.jpg", "s3://allowed/../other/x.jpg", "s3://allowed.evil/x.jpg",
               f"http://user:pw@127.0.0.1:{loopback.server.server_address[1]}/image", "ftp://example.com/x.jpg",
               "/dev/zero"]
    messages = set()
    for uri in refused:
        with pytest.raises(storage.FetchFailed) as failed:
            served.read(uri)
        assert failed.value.reason == "bad_uri", uri
        messages.add(str(failed.value))
    assert messages == {f"bad_uri: {storage.UriRefused.MESSAGE}"}
    assert loopback.hits == {"/redirect": 1, "/image": 1}  # the trusted read's; the refused ones never connected

    with pytest.raises(storage.UriRefused):
        storage.UriAccess.untrusted(["http://localhost/"]).check("http://localhost/x.jpg")  # resolves to loopback
    storage.UriAccess.untrusted(["s3://allowed/"]).check("s3://allowed/a/b.jpg")  # allowed: no error
    # a redirect is refused on its own (the private-address check set aside, so this loopback host stands in for a
    # public one): an allowed host must not bounce the server to another
    no_redirects = storage.UriAccess(allow_local=False, follow_redirects=False, allowed_prefixes=(f"{loopback.url}/",))
    bounced = storage.Fetcher(None, policy, access=no_redirects)
    assert bounced.read(f"{loopback.url}/image")[0] == BODY
    with pytest.raises(storage.FetchFailed) as failed:
        bounced.read(f"{loopback.url}/redirect")
    assert failed.value.reason == "bad_uri" and loopback.hits["/image"] == 2  # the redirect was not followed


def test_redact_uri_hides_user_info_and_presigned_credentials():
    presigned = ("https://bucket.s3.amazonaws.com/a/b.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                 "&X-Amz-Credential=AKIAEXAMPLE%2F20261130%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261130T000000Z"
                 "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=deadbeefcafe&X-Amz-Security-Token=tok")
    out = storage.redact_uri(presigned)
    for secret in ("AKIAEXAMPLE", "deadbeefcafe", "=tok"):
        assert secret not in out
    assert out.startswith("https://bucket.s3.amazonaws.com/a/b.jpg?") and "X-Amz-Expires=3600" in out
    assert storage.redact_uri("http://alice:s3cret@host:8080/x.jpg?size=2") == "http://REDACTED@host:8080/x.jpg?size=2"
    assert storage.redact_uri("https://cdn/x.jpg?token=abc&w=1") == "https://cdn/x.jpg?token=REDACTED&w=1"
    text = "fetch_error: HTTPConnectionPool: http://u:p@h/x?sig=zz failed"  # a URI inside an error message
    assert "u:p" not in storage.redact_uri(text) and "zz" not in storage.redact_uri(text)
    assert storage.redact_uri("/data/images/a.jpg") == "/data/images/a.jpg"
    assert storage.redact_uri("s3://bucket/key.jpg") == "s3://bucket/key.jpg"
    for plain in ("sqlite:////tmp/runs/mlflow.db", "file:///data/a%20b.jpg", "https://h/x?b=2&a=1#frag"):
        assert storage.redact_uri(plain) == plain  # nothing secret: the text is untouched, not re-serialised


def test_fetch_failures_carry_redacted_details(loopback):
    url = f"http://127.0.0.1:{loopback.server.server_address[1]}/missing?X-Amz-Signature=topsecret"
    with pytest.raises(storage.FetchFailed) as failed:
        storage.Fetcher(None, storage.RetryPolicy(retries=0)).read(url)
    assert failed.value.reason == "not_found" and "topsecret" not in failed.value.detail
