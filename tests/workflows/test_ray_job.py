"""The whole pipeline submitted as a Ray job to a real local Ray head, then consumed from the MLflow registry."""

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
SMALL_RUN = [
    "run_name=jobtest",
    "geoworld.num_images=240",
    "geoworld.image_size=48",
    "ingest.image_size=32",
    "ingest.label_grid=4",
    "model.backbone_kwargs={img_size: 32, patch_size: 8, depth: 2}",
    "geocells.tau_max=[150, 60, 25]",
    "geocells.tau_min=4",
    "train.epochs=2",
    "train.batch_size=16",
]


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
        env=env, capture_output=True, text=True, timeout=180,
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


@pytest.mark.slow
def test_full_pipeline_as_ray_job_registers_a_model_consumers_can_load(ray_head, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "run"
    overrides = [arg for kv in SMALL_RUN + [f"output_dir={run_dir}"] for arg in ("--set", kv)]
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir",
              str(REPO), "--", "python", "workflows/full_pipeline.py", *overrides]
    for _ in range(30):  # the head's job agent comes up a few seconds after `ray start` returns
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=1200)
        log = job.stdout + job.stderr
        if "No available agent to submit job" not in log:
            break
        time.sleep(2)
    assert job.returncode == 0, log[-6000:]
    assert "succeeded" in log.lower(), log[-3000:]
    assert "ingest: 240 in = 240 in shards + 0 quarantined" in log
    assert "RANDOMLY INITIALISED" in log  # the run says its segmenter is untrained

    import mlflow
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("geosurge", "challenger")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    assert run.data.params["train.zero_stage"] == "2" and run.data.params["train.num_workers"] == "2"
    assert {"train_loss", "test_acc_2500km", "test_median_km", "ingest_shard_rows"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2  # one point per epoch
    assert run.data.tags["segmenter_random_init"] == "True"
    assert run.info.artifact_uri.startswith(run_dir.as_uri())  # artifacts live with the run, not in the cwd

    # A consumer loads the version by alias and asks where a photo was taken.
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/geosurge@challenger")
    photo = next((run_dir / "store" / "geoworld" / "images").glob("*.jpg")).read_bytes()
    (prediction,) = model.predict([photo])
    assert len(prediction.lat) == 5 and len(prediction.lon) == 5
    assert all(-90 <= lat <= 90 for lat in prediction.lat) and all(-180 <= lon <= 180 for lon in prediction.lon)
    assert prediction.score == sorted(prediction.score, reverse=True)
