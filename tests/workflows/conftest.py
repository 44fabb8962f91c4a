"""A real Ray head, or a head with worker nodes, on loopback for the workflow tests; `ray job submit` against it."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workflows.ray_nodes import start_cluster, start_head

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_head():
    """`ray start --head` on loopback with its own temp dir and ports; stopped by killing only its own processes."""
    head = start_head(num_cpus=4)
    try:
        yield head.dashboard, head.env
    finally:
        head.remove()


@pytest.fixture
def ray_cluster():
    """A Ray cluster on this machine: a head with no CPUs for work and three worker nodes of 2 CPUs, each its own
    `ray start` with its own temp dir (session, logs, copy of the job's code). Yields a RayCluster."""
    cluster = start_cluster(nodes=3, cpus_per_node=2)
    try:
        yield cluster
    finally:
        cluster.remove()


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
