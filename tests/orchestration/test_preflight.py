"""A user's mistakes are caught before Ray starts, each as one UserError line that names what was wrong and what
to do: a missing manifest, a wrong column, an unreachable S3 endpoint, a model that is not registered, an
`sqlite:///` path that names no database."""

import pytest

from geosurge.config import load_config
from geosurge.errors import UserError
from geosurge.orchestration.preflight import (
    check_eval,
    check_model_registered,
    check_retrain,
    check_run,
    check_tracking_database,
)
from tests.conftest import free_port


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text.count(": ") >= 1
    return text


def test_a_missing_manifest_is_named_with_what_to_do(tmp_path):
    config = load_config(overrides=[f"data.manifest={tmp_path}/photos.csv", "ingest.segmenter=none"])
    with pytest.raises(UserError) as e:
        check_run(config)
    assert f"manifest not found: {tmp_path}/photos.csv" in _one_line(e)
    assert "give an existing Parquet or CSV file" in str(e.value)


def test_a_manifest_without_our_columns_names_them(tmp_path):
    (tmp_path / "photos.csv").write_text("path,latitude,longitude\na.jpg,1,2\n")
    config = load_config(overrides=[f"data.manifest={tmp_path}/photos.csv", "ingest.segmenter=none"])
    with pytest.raises(UserError) as e:
        check_run(config)
    text = _one_line(e)
    assert "found columns: ['path', 'latitude', 'longitude']" in text and "image_id, uri, lat, lon" in text


def test_pipeline_settings_it_refuses_are_user_errors(tmp_path):
    with pytest.raises(UserError) as e:
        check_run(load_config(overrides=["data.val_fraction=1.5"]))
    assert "data.val_fraction must be in [0, 1)" in _one_line(e)
    with pytest.raises(UserError) as e:
        check_run(load_config(overrides=[f"ingest.segmenter={tmp_path}/segmenter"]))
    assert f"ingest.segmenter={tmp_path}/segmenter: no such folder" in _one_line(e)


def test_an_unreachable_s3_endpoint_is_said_in_seconds():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = load_config(overrides=["data_root=s3://bucket/store", f"s3.endpoint_url={endpoint}"])
    with pytest.raises(UserError) as e:
        check_run(config)
    assert f"the S3 endpoint {endpoint} is unreachable (Connection refused)" in _one_line(e)
    assert "fix s3.endpoint_url" in str(e.value)


def test_a_sqlite_path_that_names_no_database_is_refused_and_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path}/runs/demo/mlflow.db"
    with pytest.raises(UserError) as e:
        check_tracking_database(uri)
    assert f"no MLflow database at {tmp_path}/runs/demo/mlflow.db" in _one_line(e)
    (tmp_path / "empty.db").touch()  # what MLflow leaves after opening a wrong path once
    with pytest.raises(UserError):
        check_tracking_database(f"sqlite:///{tmp_path}/empty.db")
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def registry(mlflow_server):
    """A registered model `preflight_model` with version 1 at alias @challenger, and no @champion."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("preflight"))
    client.create_registered_model("preflight_model")
    version = client.create_model_version("preflight_model", source=f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    client.set_registered_model_alias("preflight_model", "challenger", version.version)
    return mlflow_server


def test_a_model_that_is_not_registered_names_the_ones_that_are(registry):
    check_model_registered("models:/preflight_model/1", registry)
    check_model_registered("models:/preflight_model@challenger", registry)
    with pytest.raises(UserError) as e:
        check_model_registered("models:/no_such_model@champion", registry)
    assert "no model named 'no_such_model' is registered" in _one_line(e) and "preflight_model" in str(e.value)
    with pytest.raises(UserError) as e:
        check_model_registered("models:/preflight_model/3", registry)
    assert "has no version 3" in _one_line(e) and "versions ['1'], aliases {'challenger': '1'}" in str(e.value)


def test_eval_and_retrain_check_their_models_before_ray_starts(registry, tmp_path):
    settings = [f"tracking.tracking_uri={registry}", "tracking.registered_model=preflight_model",
                f"output_dir={tmp_path}"]
    config = load_config(overrides=settings)
    check_eval(config, "models:/preflight_model@challenger")
    with pytest.raises(UserError) as e:
        check_eval(config, "models:/preflight_model@champion")
    assert "has no alias @champion" in _one_line(e)
    with pytest.raises(UserError) as e:
        check_retrain(config)
    assert "retraining fine-tunes @champion" in _one_line(e) and "geosurge run" in str(e.value)
