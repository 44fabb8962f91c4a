"""Run-level plumbing shared by the workflows: start Ray, open the MLflow run, log the config whole."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from geosurge.config import PipelineConfig


def init_ray(config: PipelineConfig) -> None:
    """Join the cluster (config or RAY_ADDRESS, as inside `ray job submit`), or start a local Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray needs no token
    import ray

    num_cpus = None
    if not address:
        # Training workers hold their CPUs for the whole fit while Ray Data tasks feed them; on a single
        # machine, give Ray logical CPUs for both or the feeding tasks can never be scheduled.
        train_cpus = math.ceil(config.train.num_workers * config.train.cpus_per_worker)
        num_cpus = config.ray.num_cpus or (os.cpu_count() or 1) + train_cpus
    ray.init(address=address, num_cpus=num_cpus, log_to_driver=True)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # log lines, not bars, in job logs


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def start_mlflow_run(config: PipelineConfig):
    """Open the run's MLflow run and log the whole config (params, flattened; and config.yaml)."""
    import mlflow

    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.resolved_tracking_uri)
    if mlflow.get_experiment_by_name(config.tracking.experiment) is None:
        mlflow.create_experiment(config.tracking.experiment, artifact_location=config.resolved_artifact_location)
    mlflow.set_experiment(config.tracking.experiment)
    run = mlflow.start_run(run_name=config.run_name)
    mlflow.log_params({k: str(v)[:500] for k, v in flatten(config.to_dict()).items()})
    mlflow.set_tag("config_fingerprint", config.fingerprint())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "config.yaml")
        path.write_text(config.to_yaml())
        mlflow.log_artifact(str(path))
    return run
