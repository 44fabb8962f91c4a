"""Faults from outside, on real Ray, real DeepSpeed and real MLflow: a training worker SIGKILLed mid-run, and the
driver SIGKILLed and started again with the same run name. Each run must finish from its last checkpoint with
the full number of optimizer steps, as one MLflow run whose metric history has every step exactly once."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from geosurge.config import load_config
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import train
from tests.train.train_helpers import (
    small_run_config,
    small_run_overrides,
    steps_per_epoch,
)

REPO = Path(__file__).resolve().parents[2]


def wait_for_first_checkpoint(run_storage: Path, timeout_s: float = 300) -> None:
    """Until Ray Train has registered a checkpoint (its checkpoint-manager snapshot is written on registration,
    after the upload: a checkpoint folder alone may still be half-copied)."""
    deadline = time.time() + timeout_s
    while not (run_storage / "checkpoint_manager_snapshot.json").exists():
        if time.time() > deadline:
            raise TimeoutError(f"no checkpoint registered under {run_storage} in {timeout_s} s")
        time.sleep(0.1)


def own_train_workers() -> list[psutil.Process]:
    """The RayTrainWorker actor processes of this test session's own Ray (started by `ray_local`, so they descend
    from this process); other Ray clusters on the machine are never touched."""
    workers = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::RayTrainWorker"):
                workers.append(proc)
        except psutil.Error:  # exited meanwhile
            pass
    return workers


def assert_one_run_with_each_step_once(client: MlflowClient, run_id: str, epochs: int, per_epoch: int, every: int):
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, not one per attempt
    for key in ("train_loss", "val_loss"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(epochs))
    step_history = [m.step for m in client.get_metric_history(run_id, "train_loss_step")]
    assert Counter(step_history) == Counter(range(every, epochs * per_epoch + 1, every))  # no duplicate, no gap


@pytest.mark.slow
def test_a_worker_killed_mid_run_resumes_from_the_last_checkpoint(small_shards, tmp_path):
    config = small_run_config(tmp_path, "run_name=lost-worker", "train.epochs=2",
                              "train.early_stopping_patience=null", "train.max_failures=1")
    run = start_mlflow_run(config)
    killed: list[int] = []

    def kill_a_worker():
        wait_for_first_checkpoint(tmp_path / "ray_results" / config.run_name)
        victim = own_train_workers()[0]
        killed.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    result = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri, run.info.run_id)
    killer.join(timeout=5)
    mlflow.end_run()

    assert killed, "no worker was killed"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    per_epoch = steps_per_epoch(small_shards.rows["train"], config)
    assert result.metrics["final_global_step"] == 2 * per_epoch  # DeepSpeed's own step counter, resumed
    client = MlflowClient(config.resolved_tracking_uri)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["train.resume_count"] == "1" and tags["train.resumed_after_epoch"] == "0"  # resumed, not restarted
    assert_one_run_with_each_step_once(client, run.info.run_id, 2, per_epoch, config.train.log_every_n_steps)


DRIVER = """
import sys
import mlflow
from geosurge.config import load_config
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.runtime import init_ray
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import train

shards_uri, hierarchy_uri, *overrides = sys.argv[1:]
config = load_config(overrides=overrides)
init_ray(config)
run = start_mlflow_run(config)
print("MLFLOW_RUN_ID", run.info.run_id, flush=True)
result = train(config, shards_uri, GeocellHierarchy.load(hierarchy_uri), hierarchy_uri, run.info.run_id)
mlflow.end_run()
print("FINAL_GLOBAL_STEP", result.metrics["final_global_step"], flush=True)
"""


@pytest.mark.slow
def test_a_driver_killed_and_rerun_with_the_same_name_resumes_the_same_mlflow_run(small_shards, ray_local, tmp_path):
    # The driver joins this session's Ray as a Ray job joins a cluster; killing it ends its job's actors.
    overrides = small_run_overrides(tmp_path, "run_name=lost-driver", "train.epochs=2",
                                    "train.early_stopping_patience=null",
                                    f"ray.address={ray_local.get_runtime_context().gcs_address}")
    config = load_config(overrides=overrides)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    command = [sys.executable, str(script), small_shards.uri, small_shards.hierarchy_uri, *overrides]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_first_checkpoint(tmp_path / "ray_results" / config.run_name)
    finally:
        first.send_signal(signal.SIGKILL)  # no atexit, no MLflow end_run: the run stays RUNNING
        first_log = first.communicate(timeout=60)[0]
    run_id = next(line.split()[1] for line in first_log.splitlines() if line.startswith("MLFLOW_RUN_ID"))
    client = MlflowClient(config.resolved_tracking_uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    second = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=400)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-4000:]
    assert f"MLFLOW_RUN_ID {run_id}" in log and f"continuing run {run_id}" in log  # the same MLflow run
    per_epoch = steps_per_epoch(small_shards.rows["train"], config)
    assert f"FINAL_GLOBAL_STEP {2 * per_epoch}" in log
    final = client.get_run(run_id)
    assert final.info.status == "FINISHED"
    assert final.data.tags["train.resumed_after_epoch"] == "0"  # resumed after epoch 0, not restarted
    assert_one_run_with_each_step_once(client, run_id, 2, per_epoch, config.train.log_every_n_steps)


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_resumes_from_the_one_before(small_shards, tmp_path):
    """Without the check every restart would fail loading the truncated file, until max_failures ends the run.
    Under ZeRO-0, whose checkpoints hold no optimizer files (the other resume tests run ZeRO-2's partitions)."""
    overrides = ("run_name=corrupt-latest", "train.early_stopping_patience=null", "train.checkpoints_to_keep=2",
                 "train.max_failures=0", "train.zero_stage=0")
    config = small_run_config(tmp_path, *overrides, "train.epochs=2")
    train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    storage = tmp_path / "ray_results" / config.run_name
    checkpoints = sorted(p for p in storage.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert len(checkpoints) == 2
    (model_states,) = checkpoints[-1].glob("global_step*/mp_rank_00_model_states.pt")
    model_states.write_bytes(model_states.read_bytes()[: model_states.stat().st_size // 2])

    config = small_run_config(tmp_path, *overrides, "train.epochs=3")
    run = start_mlflow_run(config)
    result = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri, run.info.run_id)
    mlflow.end_run()
    per_epoch = steps_per_epoch(small_shards.rows["train"], config)
    assert result.metrics["final_epoch"] == 2 and result.metrics["final_global_step"] == 3 * per_epoch
    tags = MlflowClient(config.resolved_tracking_uri).get_run(run.info.run_id).data.tags
    assert tags["train.resumed_after_epoch"] == "0"  # from epoch 0's checkpoint: not restarted, not the corrupt one
