"""Ingest under faults, with real servers: an HTTP image server that throttles, errs and stalls; a SeaweedFS S3 server
that crashes and comes back mid-run; an ingest driver killed with SIGKILL and run again. Every record ends in the
shards or the quarantine, exactly once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from geosurge import storage
from geosurge.config import GeoWorldConfig, IngestConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import ingest, read_quarantine


class ImageServer:
    """A real HTTP server for image bytes. The first path segment says how it behaves:
    ok, flaky (503 twice, then the image), throttle (429 with Retry-After once, then the image), missing (404),
    forbidden (403), broken (500 always), slow (answers after `slow_s`), trickle (the image a byte every 0.25 s),
    endless (300 MiB, chunked, no length; `sent` counts what got out). It counts requests per path, and the
    connections it accepted; with `keep_alive` it speaks HTTP/1.1 and keeps them open between requests."""

    def __init__(self, files: dict[str, bytes], slow_s: float = 1.5, keep_alive: bool = False):
        self.files, self.slow_s, self.requests, self.sent = files, slow_s, Counter(), Counter()
        self.connections = 0
        self.in_flight = self.max_in_flight = 0  # requests being answered at once
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):  # once per connection
                server.connections += 1
                super().setup()

            def do_GET(self):
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self.answer()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def answer(self):
                server.requests[self.path] += 1
                seen = server.requests[self.path]
                mode, name = self.path.strip("/").split("?")[0].split("/", 1)
                status = 200
                if mode in ("trickle", "endless"):
                    return self.stream(mode, server.files[name])
                if mode == "flaky" and seen <= 2:
                    status = 503
                elif mode == "throttle" and seen == 1:
                    status = 429
                elif mode in ("missing", "forbidden", "broken"):
                    status = {"missing": 404, "forbidden": 403, "broken": 500}[mode]
                elif mode == "slow":
                    time.sleep(server.slow_s)
                body = server.files[name] if status == 200 else b"no"
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def stream(self, mode: str, body: bytes) -> None:
                self.send_response(200)
                self.send_header(*(("Content-Length", str(len(body))) if mode == "trickle"
                                   else ("Transfer-Encoding", "chunked")))
                self.end_headers()
                try:
                    if mode == "trickle":
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.25)
                    else:
                        block = b"\0" * (1 << 20)
                        for _ in range(300):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                            server.sent[self.path] += len(block)
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # any free port
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _ids(shards_uri: str, s3=None) -> list[str]:
    fs, path = storage.resolve(shards_uri, s3)
    return pq.read_table(path, filesystem=fs, columns=["image_id"]).column("image_id").to_pylist()


def test_http_ingest_reuses_connections_across_chunks(ray_local, tmp_path):
    # 20 chunks of 3 rows, one fetch thread each: a connection per chunk would be 20; the workers keep theirs
    manifest = pq.read_table(generate_geoworld(GeoWorldConfig(num_images=6, image_size=32, seed=5),
                                               str(tmp_path / "gw"), progress=False))
    files = {os.path.basename(u): Path(u).read_bytes() for u in manifest.column("uri").to_pylist()}
    server = ImageServer(files, keep_alive=True)
    try:
        names = sorted(files)
        rows = [{"image_id": f"r{i:03d}", "uri": f"{server.url}/ok/{names[i % len(names)]}", "lat": 1.0, "lon": 2.0,
                 "split": "train"} for i in range(60)]
        uri = str(tmp_path / "http.parquet")
        pq.write_table(pa.Table.from_pylist(rows), uri)
        config = IngestConfig(image_size=32, segmenter="none", shard_rows=3, fetch_concurrency=1)
        result = ingest(uri, str(tmp_path / "out"), config)
        assert result.reconciles and result.shard_rows == 60 and result.chunks == 20
        assert sum(server.requests.values()) == 60
        assert server.connections <= 8, server.connections  # at most one per fetch worker process (4 CPUs here)
    finally:
        server.close()


def test_http_ingest_fetches_chunks_in_parallel_on_two_cpus(tmp_path):
    # one slow image per chunk and one fetch thread per task, on a Ray of 2 CPUs (a fresh process): overlapping
    # requests mean two fetch tasks ran at once. The fetch and write stages once ran as two Ray Data operators, which
    # split 2 CPUs between them: one fetch task at a time.
    manifest = pq.read_table(generate_geoworld(GeoWorldConfig(num_images=4, image_size=32, seed=3),
                                               str(tmp_path / "gw"), progress=False))
    files = {os.path.basename(u): Path(u).read_bytes() for u in manifest.column("uri").to_pylist()}
    server = ImageServer(files, slow_s=1.0)
    try:
        rows = [{"image_id": f"s{i}", "uri": f"{server.url}/slow/{name}", "lat": 1.0, "lon": 2.0, "split": "train"}
                for i, name in enumerate(sorted(files))]
        uri = str(tmp_path / "slow.parquet")
        pq.write_table(pa.Table.from_pylist(rows), uri)
        code = ("import sys, ray; from geosurge.config import IngestConfig; from geosurge.data.ingest import ingest; "
                "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False); "
                "r = ingest(sys.argv[1], sys.argv[2], IngestConfig(image_size=32, segmenter='none', shard_rows=1, "
                "fetch_concurrency=1)); assert r.reconciles and r.shard_rows == 4, r.summary()")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        subprocess.run([sys.executable, "-c", code, uri, str(tmp_path / "out")], check=True, env=env, timeout=600)
        assert server.max_in_flight == 2, server.max_in_flight
    finally:
        server.close()


def test_http_images_retry_throttling_and_5xx_but_not_404_or_403(ray_local, tmp_path):
    manifest = pq.read_table(generate_geoworld(GeoWorldConfig(num_images=7, image_size=32, seed=11),
                                               str(tmp_path / "gw"), progress=False)).to_pylist()
    files = {}
    for row in manifest:
        with open(row["uri"], "rb") as f:
            files[os.path.basename(row["uri"])] = f.read()
    server = ImageServer(files)
    try:
        modes = ["ok", "flaky", "throttle", "missing", "forbidden", "broken", "slow"]
        rows = [{**row, "uri": f"{server.url}/{mode}/{os.path.basename(row['uri'])}"}
                for mode, row in zip(modes, manifest)]
        uri = str(tmp_path / "http.parquet")
        pq.write_table(pa.Table.from_pylist(rows), uri)
        config = IngestConfig(image_size=32, label_grid=4, segmenter="ground_truth", fetch_retries=2,
                              fetch_backoff_s=0.01, fetch_timeout_s=0.5)
        result = ingest(uri, str(tmp_path / "out"), config)

        assert result.reconciles and result.shard_rows == 3  # ok, flaky, throttle
        assert result.quarantined_by_reason == {"not_found": 1, "fetch_error": 2, "timeout": 1}
        requests = {path.split("/")[1]: n for path, n in server.requests.items()}
        assert requests == {"ok": 1, "flaky": 3, "throttle": 2, "missing": 1, "forbidden": 1, "broken": 3, "slow": 3}
        assert result.fetch_retries == 2 + 1 + 2 + 2  # flaky, throttle, broken, slow
        quarantine = {r["image_id"]: r for r in read_quarantine(result.quarantine_uri).to_pylist()}
        assert all(r["stage"] == "fetch" for r in quarantine.values())
        assert "HTTP 500" in quarantine[rows[5]["image_id"]]["detail"]
        assert "after 3 attempts" in quarantine[rows[5]["image_id"]]["detail"]
        report = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
        assert report["fetch_retries"] == 7
    finally:
        server.close()


def test_trickled_and_endless_bodies_are_cut_by_deadline_byte_limit_and_chunk_timeout(ray_local, tmp_path):
    manifest = pq.read_table(generate_geoworld(GeoWorldConfig(num_images=4, image_size=32, seed=12),
                                               str(tmp_path / "gw"), progress=False)).to_pylist()
    files = {os.path.basename(row["uri"]): Path(row["uri"]).read_bytes() for row in manifest}
    server = ImageServer(files)
    try:
        name = os.path.basename
        rows = [{**manifest[0], "uri": f"{server.url}/ok/{name(manifest[0]['uri'])}"},
                {**manifest[1], "uri": f"{server.url}/trickle/{name(manifest[1]['uri'])}"},
                {**manifest[2], "uri": f"{server.url}/endless/{name(manifest[2]['uri'])}"},
                {**manifest[3], "uri": f"{server.url}/missing/x.jpg?X-Amz-Credential=AKIAXYZ&X-Amz-Signature=s1gn"}]
        uri = str(tmp_path / "http.parquet")
        pq.write_table(pa.Table.from_pylist(rows).drop_columns(["label_uri"]), uri)
        config = IngestConfig(image_size=32, label_grid=4, segmenter="none", fetch_retries=2, fetch_backoff_s=0.01,
                              fetch_timeout_s=2, fetch_deadline_s=1.5, max_image_bytes=2 << 20)
        started = time.monotonic()
        result = ingest(uri, str(tmp_path / "out"), config)
        assert result.reconciles and result.shard_rows == 1
        assert result.quarantined_by_reason == {"timeout": 1, "too_large": 1, "not_found": 1}
        assert server.sent[f"/endless/{name(manifest[2]['uri'])}"] < 64 << 20  # not the 300 MiB
        detail = {r["image_id"]: r["detail"] for r in read_quarantine(result.quarantine_uri).to_pylist()}
        assert "AKIAXYZ" not in detail[manifest[3]["image_id"]] and "s1gn" not in detail[manifest[3]["image_id"]]
        print(f"\ningest with a trickled and an endless body: {time.monotonic() - started:.1f} s")

        # a chunk as a whole has a deadline too, however long each fetch may take
        config = IngestConfig(image_size=32, label_grid=4, segmenter="none", fetch_timeout_s=5, fetch_deadline_s=60,
                              chunk_timeout_s=1.0)
        started = time.monotonic()
        result = ingest(uri, str(tmp_path / "out2"), config)
        took = time.monotonic() - started
        assert result.reconciles and result.quarantined_by_reason.get("timeout") == 1
        (late,) = [r for r in read_quarantine(result.quarantine_uri).to_pylist() if r["reason"] == "timeout"]
        assert late["image_id"] == manifest[1]["image_id"] and "chunk_timeout_s" in late["detail"]
        assert took < 60, took
    finally:
        server.close()


@pytest.mark.slow
def test_s3_crash_and_restart_mid_run_is_ridden_through(ray_local, seaweed_server):
    server = seaweed_server  # our own server: the session one stays up
    s3 = server.config
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=40, image_size=32, seed=12), "s3://faults/gw", s3,
                                     progress=False)
    out = "s3://faults/out"
    config = IngestConfig(image_size=32, label_grid=4, segmenter="ground_truth", shard_rows=2,
                          fetch_concurrency=2, fetch_retries=30, fetch_backoff_s=0.2, fetch_max_backoff_s=2.0,
                          fetch_timeout_s=5.0, progress_interval_s=1.0)
    outage = {}

    def crash_once_a_chunk_is_written():
        deadline = time.time() + 120
        fs, shards = storage.resolve(f"{out}/shards", s3)
        while time.time() < deadline:
            try:
                if [i for i in fs.get_file_info(pafs.FileSelector(shards, allow_not_found=True))
                        if i.base_name.endswith(".parquet")]:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        server.stop(kill=True)
        outage["down"] = time.time()
        time.sleep(4)
        server.start()
        outage["up"] = time.time()

    crasher = threading.Thread(target=crash_once_a_chunk_is_written)
    crasher.start()
    result = ingest(manifest_uri, out, config, s3)
    crasher.join()
    assert outage["up"] - outage["down"] >= 4
    assert result.reconciles and result.shard_rows == 40 and result.quarantined == 0
    assert result.fetch_retries > 0  # the outage was met, and ridden through
    ids = _ids(result.shards_uri, s3)
    assert sorted(ids) == [f"gw_{i:06d}" for i in range(40)]


KILLABLE_INGEST = """
import json, sys
import ray
from geosurge.config import IngestConfig
from geosurge.data.ingest import ingest
from geosurge.storage import S3Config
args = json.loads(sys.argv[1])
ray.init(address=args["address"], log_to_driver=False)
ingest(args["manifest"], args["out"], IngestConfig(**args["config"]), S3Config(**args["s3"]))
"""


@pytest.mark.slow
def test_sigkilled_ingest_resumes_without_duplicates_or_losses(ray_local, s3, tmp_path):
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=60, image_size=32, seed=13), "s3://killed/gw", s3,
                                     progress=False)
    out = "s3://killed/out"
    config = {"image_size": 32, "label_grid": 4, "segmenter": "ground_truth", "shard_rows": 3, "fetch_concurrency": 1}
    args = {"address": ray_local.get_runtime_context().gcs_address, "manifest": manifest_uri, "out": out,
            "config": config, "s3": {k: getattr(s3, k) for k in ("endpoint_url", "region", "access_key_id",
                                                                 "secret_access_key")}}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_INGEST, json.dumps(args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs, shards = storage.resolve(f"{out}/shards", s3)
    try:
        deadline = time.time() + 180
        while not [i for i in fs.get_file_info(pafs.FileSelector(shards, allow_not_found=True))
                   if i.base_name.endswith(".parquet")]:
            assert proc.poll() is None, "the ingest ended before it could be killed"
            assert time.time() < deadline, "no shard file appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(2)  # Ray ends the dead driver's tasks

    result = ingest(manifest_uri, out, IngestConfig(**config), s3)
    assert 0 < result.chunks_resumed < result.chunks  # killed part-way
    assert result.rows_processed == 60 - 3 * result.chunks_resumed
    assert result.reconciles and result.rows_in == 60 and result.shard_rows == 60
    ids = _ids(result.shards_uri, s3)
    assert sorted(ids) == [f"gw_{i:06d}" for i in range(60)]  # none lost, none twice
