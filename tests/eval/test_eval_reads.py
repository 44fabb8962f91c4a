"""Eval reads retry like ingest's fetches: an image host that fails a read now and then (HTTP 503, a real server on
loopback) costs the benchmark no image. The model is a stand-in here (reads are what is tested), the storage real."""

from __future__ import annotations

import http.server
import io
import threading

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from geosurge.data.images import ImageSpec
from geosurge.eval.benchmark import Predictor
from geosurge.storage import RetryPolicy
from geosurge.tracking import registry


class _Locator:
    spec = ImageSpec(size=16)

    def predict_arrays(self, images, k=5, ten_crop=False):
        n = len(images)
        return {"lat": np.zeros((n, 1)), "lon": np.zeros((n, 1)), "score": np.ones((n, 1))}


@pytest.fixture
def flaky_host():
    """An image host whose every image fails its first two reads with 503 (as a busy server does)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(buf, "JPEG")
    jpeg, seen, lock = buf.getvalue(), {}, threading.Lock()

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                seen[self.path] = seen.get(self.path, 0) + 1
                failing = seen[self.path] <= 2
            self.send_response(503 if failing else 200)
            body = b"busy" if failing else jpeg
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_eval_reads_retry_transient_failures(flaky_host, monkeypatch):
    base, seen = flaky_host
    monkeypatch.setattr(registry, "load_locator", lambda uri, tracking_uri: _Locator())
    batch = pa.table({"image_id": [f"i{k}" for k in range(8)], "uri": [f"{base}/i{k}.jpg" for k in range(8)]})
    policy = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=5)
    out = Predictor("models:/m/1", "sqlite:///unused.db", None, False, policy)(batch)
    assert out.column("reason").to_pylist() == [None] * 8  # every image evaluated
    assert sorted(seen.values()) == [3] * 8  # each after two failed reads
    # a host that keeps failing is a failed read, counted with its reason, not a crash
    out = Predictor("models:/m/1", "sqlite:///unused.db", None, False, RetryPolicy(retries=1, backoff_s=0.01))(
        pa.table({"image_id": ["new"], "uri": [f"{base}/new.jpg"]}))
    assert out.column("reason").to_pylist() == ["fetch_error"] and out.column("stage").to_pylist() == ["fetch"]
