"""A config holding S3 keys trains without the keys leaving the driver: not in what Ray ships to its controller
and workers (the trainer, its loop config and datasets), not in the train-run state behind the Ray dashboard's
train-run API, not in Ray Train's storage, not in the MLflow params or the logged `config.yaml`."""

import json
import uuid
from pathlib import Path

import mlflow
import pytest
import ray
from mlflow.tracking import MlflowClient

from geosurge.config import S3Config
from geosurge.storage import s3_filesystem
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import build_trainer, train
from tests.train.train_helpers import small_run_config


def test_s3_settings_pickle_without_their_keys_into_ray_tasks():
    s3 = S3Config(endpoint_url="http://127.0.0.1:1", region="us-east-1", access_key_id="KEY-ID-1",
                  secret_access_key="SECRET-1")
    for shipped in (s3, s3_filesystem(s3)):
        assert b"SECRET-1" not in ray.cloudpickle.dumps(shipped) and b"KEY-ID-1" not in ray.cloudpickle.dumps(shipped)
    received = ray.cloudpickle.loads(ray.cloudpickle.dumps(s3))
    assert (received.endpoint_url, received.region, received.secret_access_key) == (s3.endpoint_url, s3.region, None)


@pytest.mark.slow
def test_a_secret_in_the_config_leaves_no_trace_in_ray_or_mlflow(small_shards, ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the state the dashboard's train-run API serves
    key_id, secret = f"KEYID{uuid.uuid4().hex}", f"SECRET{uuid.uuid4().hex}"
    config = small_run_config(tmp_path, "run_name=secretive", "train.epochs=1", f"s3.access_key_id={key_id}",
                              f"s3.secret_access_key={secret}")

    def assert_clean(where: str, data: bytes | str) -> None:
        data = data if isinstance(data, bytes) else data.encode()
        assert secret.encode() not in data and key_id.encode() not in data, f"an S3 key in {where}"

    trainer, _ = build_trainer(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    assert_clean("the trainer Ray ships (loop config, datasets)", ray.cloudpickle.dumps(trainer))
    run = start_mlflow_run(config)
    try:
        train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri, run.info.run_id)
    finally:
        mlflow.end_run()

    client = MlflowClient(config.resolved_tracking_uri)
    params = client.get_run(run.info.run_id).data.params
    assert params["s3.secret_access_key"] == "<hidden>"
    assert_clean("MLflow params", json.dumps(params))
    assert_clean("config.yaml", Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_bytes())
    storage = tmp_path / "ray_results" / config.run_name
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert files  # checkpoints and Ray Train's own state are there
    for path in files:
        assert_clean(f"Ray Train storage {path}", path.read_bytes())

    from ray.train.v2._internal.state.state_actor import get_state_actor

    train_runs = ray.get(get_state_actor().get_train_runs.remote()).values()
    ours = [r.model_dump_json() for r in train_runs if r.name == config.run_name]
    assert ours and small_shards.hierarchy_uri in ours[0]  # the loop config is shown, without the keys
    assert_clean("the dashboard's train-run state", "".join(ours))
