"""A real Ray head on loopback for the workflow tests, and `ray job submit` against it."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head` on loopback with its own temp dir; stopped by killing only its own processes
    (`ray stop` would also stop other Ray instances on the machine)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    temp_dir = tempfile.mkdtemp(prefix="gsray", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard = _free_port()
    # Every port explicit and free: Ray's fixed defaults (10001, 52365, …) would clash with any other Ray here.
    ports = {flag: _free_port() for flag in (
        "--port", "--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
    head = subprocess.run(
        [str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--dashboard-port={dashboard}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=4", f"--temp-dir={temp_dir}",
         "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items())],
        check=False, env=env, capture_output=True, text=True, timeout=180,
    )
    assert head.returncode == 0, head.stdout + head.stderr
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        # The head's processes and all their descendants (agents retitle themselves "ray::…").
        marks = (temp_dir, f":{ports['--port']}")  # the client server names only the GCS address
        roots = [p for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) for m in marks)]
        for proc in {q for p in roots for q in [p, *_descendants(p)]}:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def submit_job():
    """`submit_job(address, env, script, args, job_env=None)` → (exit code, whole log) of
    `ray job submit --working-dir <repo> -- python <script> <args>`; `job_env`: environment of the job's driver."""
    return _submit_job


def _submit_job(address: str, env: dict, script: str, args: list[str], job_env: dict | None = None,
                timeout: int = 1200) -> tuple[int, str]:
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": job_env})] if job_env else []
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir",
              str(REPO), *runtime_env, "--", "python", script, *args]
    for _ in range(30):  # the head's job agent comes up a few seconds after `ray start` returns
        job = subprocess.run(submit, check=False, env=env, capture_output=True, text=True, timeout=timeout)
        log = job.stdout + job.stderr
        if "No available agent to submit job" not in log:
            break
        time.sleep(2)
    return job.returncode, log
