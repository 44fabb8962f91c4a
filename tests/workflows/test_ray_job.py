"""The whole pipeline submitted as a Ray job to a real local Ray head, then consumed from the MLflow registry."""

import json

import pytest

from tests.workflows.workflow_helpers import SMALL_RUN, ray_internal_lines

JOB_RUN = [
    *SMALL_RUN,
    "run_name=jobtest",
    "ingest.segmenter=random",  # the random-init path; test_end_to_end trains the GeoWorld segmenter
]


@pytest.mark.slow
def test_full_pipeline_as_ray_job_registers_a_model_consumers_can_load(ray_head, submit_job, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "run"
    overrides = [arg for kv in JOB_RUN + [f"output_dir={run_dir}"] for arg in ("--set", kv)]
    returncode, log = submit_job(address, env, "workflows/full_pipeline.py", overrides)
    assert returncode == 0, log[-6000:]
    assert "succeeded" in log.lower(), log[-3000:]
    assert "ingest: 240 in = 240 in shards + 0 quarantined" in log
    assert "RANDOMLY INITIALISED" in log  # the run says its segmenter is untrained
    # A quiet console: stage headers, progress and the summary; Ray's internals are in the run's logs folder
    assert not ray_internal_lines(log), "\n".join(ray_internal_lines(log)[:20])
    assert "train [########################] 2/2 epochs" in log
    assert f"logs: {run_dir / 'logs'}" in log
    assert json.loads((run_dir / "summary.json").read_text())["model"].endswith("(version 1)")
    assert "[train] epoch 2/2" in (run_dir / "logs" / "workers.log").read_text()
    print(f"\nRay job log: {len(log.splitlines())} lines")

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
