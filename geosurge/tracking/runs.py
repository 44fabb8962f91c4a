"""MLflow runs: open (or continue) a run's MLflow run and log its config whole; a crashed driver leaves it FAILED."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from geosurge.config import PipelineConfig


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# Tag that names a run by the config's run_name: a driver started again with the same name finds its run by it.
RUN_NAME_TAG = "geosurge.run_name"
# A run left in one of these states did not complete (a killed driver leaves RUNNING): a rerun continues it.
RESUMABLE_STATUSES = ("RUNNING", "FAILED", "KILLED")


def find_resumable_run(client, experiment_id: str, run_name: str):
    """The newest run of `run_name` in the experiment when it did not finish; None when there is none or the
    newest one FINISHED (a new run then starts)."""
    quote = '"' if "'" in run_name else "'"  # MLflow's filter strings take either quote and no escapes
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = {quote}{run_name}{quote}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs and runs[0].info.status in RESUMABLE_STATUSES:
        return runs[0]
    return None


def start_mlflow_run(config: PipelineConfig):
    """Open the run's MLflow run and log the whole config (params, flattened; and config.yaml).

    When the experiment holds an unfinished run (RUNNING, FAILED, KILLED) of the same `run_name`, it is
    reopened instead of starting a new one, so a restarted driver keeps one run and one metric history.
    Params are immutable in MLflow: on reopening, only params the run lacks are logged, and keys whose value
    changed are listed in the `geosurge.changed_params` tag."""
    import mlflow
    from mlflow.tracking import MlflowClient

    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.resolved_tracking_uri)
    if mlflow.get_experiment_by_name(config.tracking.experiment) is None:
        mlflow.create_experiment(config.tracking.experiment, artifact_location=config.resolved_artifact_location)
    experiment = mlflow.set_experiment(config.tracking.experiment)
    client = MlflowClient(config.resolved_tracking_uri)
    params = {k: str(v)[:500] for k, v in flatten(config.to_dict()).items()}
    previous = find_resumable_run(client, experiment.experiment_id, config.run_name)
    if previous is None:
        run = mlflow.start_run(run_name=config.run_name, tags={RUN_NAME_TAG: config.run_name})
        mlflow.log_params(params)
    else:
        run = mlflow.start_run(run_id=previous.info.run_id)
        resumes = int(previous.data.tags.get("geosurge.resume_count", "0")) + 1
        print(f"MLflow: continuing run {previous.info.run_id} of '{config.run_name}' "
              f"(it was {previous.info.status}; resume #{resumes})", flush=True)
        logged = previous.data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        mlflow.set_tag("geosurge.resume_count", str(resumes))
        if changed:
            print(f"MLflow: config differs from the run's logged params in {changed} (params keep the first values)")
            mlflow.set_tag("geosurge.changed_params", ",".join(changed)[:5000])
    _mark_failed_on_uncaught_exception()
    mlflow.set_tag("config_fingerprint", config.fingerprint())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "config.yaml")
        path.write_text(config.to_yaml())
        mlflow.log_artifact(str(path))
    return run


def _mark_failed_on_uncaught_exception() -> None:
    """MLflow ends the active run as FINISHED at interpreter exit, even after an uncaught exception; a driver
    that crashed must leave its run FAILED (KILLED on Ctrl-C) so that a rerun continues it."""
    import mlflow

    if getattr(sys.excepthook, "_geosurge_mlflow", False):
        return
    previous_hook = sys.excepthook

    def hook(exc_type, exc, tb):
        if mlflow.active_run() is not None:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):  # the original error matters more than a failed status update
                mlflow.end_run(status)
        previous_hook(exc_type, exc, tb)

    hook._geosurge_mlflow = True
    sys.excepthook = hook


# ------------------------------------------------------------------------------------------ datasets as run inputs

DATASET_DIGEST_CHARS = 16  # MLflow stores a digest of up to 36 characters


def storage_dataset(uri: str, name: str, files: list[str], s3=None, profile: dict | None = None,
                    identity: dict | None = None):
    """An MLflow dataset (metadata only: nothing is read but file sizes and footers) for data held in storage.

    Digest: a hash of what identifies the content of every file (`storage.stat`: size and modification time, or
    ETag), by path relative to `uri`, plus `identity` (e.g. a benchmark's split and format), so the same bytes
    give the same digest and a changed file a new one. Source: `uri` with its credentials redacted
    (`storage.redact_uri`). Profile: `profile` plus the file count."""
    import hashlib
    import json
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from geosurge import storage

    prefix = uri.rstrip("/") + "/"
    stats = []
    for f in files:
        s = dict(storage.stat(f, s3))
        s["uri"] = f[len(prefix):] if f.startswith(prefix) else storage.redact_uri(f)
        stats.append(s)
    digest = hashlib.sha256(json.dumps([stats, identity or {}], sort_keys=True, default=str).encode())
    source_uri = storage.redact_uri(uri)
    with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": all are local
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(source_uri)

    class StorageDataset(MetaDataset):
        def to_dict(self) -> dict[str, str]:
            config = super().to_dict()
            config["profile"] = json.dumps({**(profile or {}), "files": len(files)})
            return config

        @property
        def profile(self):
            return {**(profile or {}), "files": len(files)}

    return StorageDataset(source, name=name, digest=digest.hexdigest()[:DATASET_DIGEST_CHARS])


def log_dataset(uri: str, name: str, context: str, files: list[str] | None = None, s3=None,
                profile: dict | None = None, identity: dict | None = None):
    """Log the data at `uri` (a file, or a folder of Parquet/CSV files) as an input of the active MLflow run,
    with `context` ("training", "evaluation", ...); see `storage_dataset`. Returns the dataset."""
    import mlflow

    from geosurge.data.manifest import list_manifest_files

    dataset = storage_dataset(uri, name, files if files is not None else list_manifest_files(uri, s3), s3,
                              profile, identity)
    mlflow.log_input(dataset, context=context)
    return dataset


def log_training_shards(shards_uri: str, s3=None):
    """The training shards as the run's "training" dataset: rows from the Parquet footers, digest from the files'
    identity, source the shards folder without credentials. Returns the dataset."""
    from geosurge.data.manifest import list_manifest_files, parquet_row_count

    files = list_manifest_files(shards_uri, s3)
    rows = sum(parquet_row_count(f, s3) for f in files)
    return log_dataset(shards_uri, "training_shards", "training", files, s3, {"num_rows": rows})
