"""Faults from outside, on real Ray, real DeepSpeed and real MLflow: a training worker SIGKILLed mid-run (a run
that keeps its checkpoints on S3 and stops early), the driver SIGKILLed and started again with the same run name,
a fine-tuning run's latest checkpoint truncated. Each run must finish from its last good checkpoint with the full
number of optimizer steps, as one MLflow run whose metric history has every step exactly once. Each test's run also
checks what the trainer does without a fault (early stopping, S3 checkpoints, fine-tuning): one run of the whole
stack costs about half a minute here, so no run is started only for what another can show."""

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from geosurge.config import load_config
from geosurge.models import create_model
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import consolidated_state_dict, train
from tests.train.train_helpers import (
    small_run_config,
    small_run_overrides,
    steps_per_epoch,
    wait_for_first_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]


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


def kill_a_worker_after_the_first_checkpoint(checkpoints: str, s3, killed: list[int]) -> threading.Thread:
    """A thread that SIGKILLs one of this session's training workers once a checkpoint is registered under
    `checkpoints`; `killed` gets its pid."""
    def kill():
        wait_for_first_checkpoint(checkpoints, s3)
        victim = own_train_workers()[0]
        killed.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer


@pytest.mark.slow
def test_a_run_that_loses_a_worker_resumes_from_the_bucket_logs_every_step_once_and_early_stops(
        small_shards, s3, tmp_path):
    """One run, three things checked on it.
    - Checkpoints on S3 (`train.storage_path=s3://…`, SeaweedFS): Ray Train writes them through our S3 filesystem
      (custom endpoint), nothing lands on the driver's disk, the best one consolidates from the bucket.
    - A training worker SIGKILLed after the first checkpoint: Ray restarts the worker group, which resumes from the
      bucket (model, ZeRO-2 optimizer partitions, DeepSpeed's step counter, the early-stopping state), not from
      scratch, and the run is one MLflow run whose metric history has every step exactly once.
    - Early stopping on the best checkpoint: lr 0, so the weights never move and the val loss never gains on epoch 0
      by more than min_delta (it only moves by float rounding): the run must stop after `patience` more epochs,
      and the same run name started again stays stopped.
    (Resuming from the bucket and training on: the end-to-end test, whose cluster loses a node.)"""
    config = small_run_config(tmp_path, "run_name=early", "train.epochs=5", "train.lr=0.0",
                              "train.early_stopping_patience=1", "train.early_stopping_min_delta=0.001",
                              "train.max_failures=1", f"s3.endpoint_url={s3.endpoint_url}", f"s3.region={s3.region}",
                              "train.storage_path=s3://ckpt/runs")
    run = start_mlflow_run(config)
    killed: list[int] = []
    killer = kill_a_worker_after_the_first_checkpoint("s3://ckpt/runs/early", s3, killed)
    result = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri, run.info.run_id)
    killer.join(timeout=5)
    mlflow.end_run()

    assert killed, "no worker was killed"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert result.checkpoint_path.startswith("s3://ckpt/runs/early/checkpoint_")
    assert not (tmp_path / "ray_results").exists()  # nothing on the driver's disk
    per_epoch = steps_per_epoch(small_shards.rows["train"], config)
    assert result.metrics["final_epoch"] == 1 and result.metrics["final_stopped_early"]  # 1 epoch without gain
    assert result.metrics["final_global_step"] == 2 * per_epoch  # DeepSpeed's own step counter, resumed
    model = create_model(config.model, small_shards.hierarchy)
    model.load_state_dict(consolidated_state_dict(result.checkpoint_path, config.s3))  # from the bucket, every key

    client = MlflowClient(config.resolved_tracking_uri)
    run_id = run.info.run_id
    tags = client.get_run(run_id).data.tags
    assert tags["train.resume_count"] == "1" and tags["train.resumed_after_epoch"] == "0"  # resumed, not restarted
    assert_one_run_with_each_step_once(client, run_id, 2, per_epoch, config.train.log_every_n_steps)
    val_history = client.get_metric_history(run_id, "val_loss")
    best = min(val_history, key=lambda m: (m.value, -m.step))
    assert result.metrics["epoch"] == best.step  # the returned checkpoint is the lowest val loss's (later on a tie)
    assert result.metrics["val_loss"] == pytest.approx(best.value)
    assert (result.checkpoint_path == result.latest_checkpoint_path) == (best.step == 1)
    assert tags["train.best_epoch"] == str(best.step) and tags["train.stopped_early"] == "True"

    # The same run name again: it resumes from the bucket, and the stopped run stays stopped (no further epochs, the
    # same best checkpoint; a run that did not find its checkpoints would start over and write new ones).
    again = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    assert again.metrics["final_global_step"] == 2 * per_epoch
    assert again.checkpoint_path == result.checkpoint_path
    assert_one_run_with_each_step_once(client, run_id, 2, per_epoch, config.train.log_every_n_steps)


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
        wait_for_first_checkpoint(str(tmp_path / "ray_results" / config.run_name))
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
def test_fine_tuning_starts_from_the_given_weights_and_a_corrupt_checkpoint_resumes_from_the_one_before(
        small_shards, tmp_path):
    """Retraining's `train.init_weights` (the champion's weights): with lr 0 nothing moves, so the checkpoints hold
    exactly the weights the first step started from; they are the champion's, not the seed's fresh model. Then the
    latest checkpoint is truncated and the run continues: without the check every restart would fail loading the
    truncated file, until max_failures ended the run. Under ZeRO-0, the fastest stage on CPU, whose checkpoints keep
    the weights and the optimizer in the model-states file (the other resume tests run ZeRO-2's partitions)."""
    overrides = ("run_name=fine-tune", "train.lr=0.0", "train.zero_stage=0", "train.early_stopping_patience=null",
                 "train.checkpoints_to_keep=2", "train.max_failures=0", "ingest.image_size=32", "ingest.label_grid=4")
    champion_uri = str(tmp_path / "champion.pt")
    overrides += (f"train.init_weights={champion_uri}",)
    config = small_run_config(tmp_path, *overrides, "train.epochs=2")
    torch.manual_seed(config.train.seed + 1)  # not the seed the workers build their model with
    champion = create_model(config.model, small_shards.hierarchy).state_dict()
    torch.save(champion, champion_uri)
    torch.manual_seed(config.train.seed)
    fresh = create_model(config.model, small_shards.hierarchy).state_dict()

    result = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    started_from = consolidated_state_dict(result.latest_checkpoint_path)
    assert started_from.keys() == champion.keys()
    assert all(torch.equal(started_from[k], champion[k]) for k in champion)
    assert not all(torch.equal(started_from[k], fresh[k]) for k in fresh)

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
