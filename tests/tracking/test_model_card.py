"""MLflow as its users expect (geosurge/tracking/model_card.py, registry.py, runs.py), on the real MLflow server:
the training shards are an input dataset of the run (digest from the files' identity, source without credentials),
the registered version carries a model card (data, config fingerprint, parent, checkpoint, held-out table; the
eval job's benchmark table later) and its metrics as tags, and the run links to its checkpoint."""

import dataclasses
import json

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from geosurge.models import create_model
from geosurge.segmentation.segmenter import Segmenter
from geosurge.tracking.model_card import BENCHMARKS_MARK, NOT_EVALUATED, record_benchmarks
from geosurge.tracking.registry import CHECKPOINT_TAG, log_and_register
from geosurge.tracking.runs import log_dataset, start_mlflow_run
from tests.models.model_helpers import small_hierarchy
from tests.tracking.registry_helpers import photo_bytes, tiny_config, tracking_uri

MODEL = "geosurge_card_test"
SECRET = "s3cr3tpass"
REDACTED_CHECKPOINT = "s3://REDACTED@bucket/ray/checkpoint_000003?X-Amz-Signature=REDACTED"  # storage.redact_uri
TEST_METRICS = {"test_acc_1km": 0.05, "test_acc_25km": 0.2, "test_acc_200km": 0.4, "test_acc_750km": 0.6,
                "test_acc_2500km": 0.9, "test_median_km": 321.5, "test_geoscore": 2500.0}


def write_shards(folder, rows_per_file=(3, 4)) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(rows_per_file):
        pd.DataFrame({"image_id": [f"{i}_{j}" for j in range(n)], "lat": np.zeros(n), "lon": np.zeros(n),
                      "split": ["train"] * n}).to_parquet(folder / f"part-{i}.parquet")
    return str(folder)


def register_in_run(config, run_name, metrics=None, run_tags=None, **kwargs) -> tuple[str, str]:
    """Register a random-init tiny model inside its own MLflow run, as the register step does; (version, run id)."""
    hierarchy = small_hierarchy()
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in create_model(config.model, hierarchy).state_dict().items()}
    with tracking_uri(config.resolved_tracking_uri):
        run = start_mlflow_run(dataclasses.replace(config, run_name=run_name))
        try:
            mlflow.log_metrics(metrics or {})
            mlflow.set_tags(run_tags or {})
            _, version = log_and_register(state, config, hierarchy, Segmenter("random", config.ingest.label_grid),
                                          photo_bytes(0), **kwargs)
        finally:
            mlflow.end_run()
    return version, run.info.run_id


def test_a_version_carries_its_data_parent_checkpoint_and_table(mlflow_server, tmp_path):
    config = tiny_config(tmp_path, mlflow_server, [f"tracking.registered_model={MODEL}",
                                                   f"tracking.experiment=card-{tmp_path.name}"])
    shards = write_shards(tmp_path / "shards")
    checkpoint = f"s3://trainer:{SECRET}@bucket/ray/checkpoint_000003?X-Amz-Signature={SECRET}"
    version, run_id = register_in_run(config, "card", TEST_METRICS, shards_uri=shards, checkpoint_uri=checkpoint,
                                      parent_version="7")
    client = MlflowClient(mlflow_server)

    # the training shards are the run's "training" dataset: rows from the footers, digest, source
    run = client.get_run(run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert dataset.name == "training_shards" and json.loads(dataset.source)["uri"] == shards
    assert json.loads(dataset.profile) == {"num_rows": 7, "files": 2}
    assert len(dataset.digest) == 16
    # the run links to its checkpoint, without the credentials and signature the URI came with
    assert run.data.tags[CHECKPOINT_TAG] == REDACTED_CHECKPOINT

    mv = client.get_model_version(MODEL, version)
    card = mv.description
    assert f"# {MODEL} version {version}" in card
    assert "**Parent version:** version 7 (fine-tuned from it)" in card
    assert f"`{config.fingerprint()}`" in card and f"`{run_id}`" in card
    assert f"digest `{dataset.digest}`" in card and "7 rows, 2 files" in card
    assert f"`{REDACTED_CHECKPOINT}`" in card and SECRET not in card
    table = card.split("## Held-out metrics at registration", 1)[1]
    assert "@1km" in table and "GeoScore" in table
    (test_row,) = [line for line in table.splitlines() if line.startswith("test ")]
    assert test_row.split()[1:] == ["5.0", "20.0", "40.0", "60.0", "90.0", "321.5", "2500"]
    assert NOT_EVALUATED in card.split(BENCHMARKS_MARK, 1)[1]
    tags = mv.tags
    assert tags["geosurge.parent_version"] == "7" and tags["geosurge.config_fingerprint"] == config.fingerprint()
    assert tags["geosurge.training_data_digest"] == dataset.digest and tags["geosurge.training_data"] == shards
    assert tags[CHECKPOINT_TAG] == REDACTED_CHECKPOINT
    assert float(tags["metrics.test.geoscore"]) == 2500.0 and float(tags["metrics.test.acc_25km"]) == 0.2
    assert SECRET not in json.dumps(tags) and SECRET not in json.dumps(run.data.tags)

    # the eval job's section replaces the placeholder and keeps the card (twice: the second replaces the first)
    for decision in ("keep — first", "promote — better geoscore"):
        record_benchmarks(client, MODEL, version, "run  @1km\nchallenger v9 bench  12.5", "evalrun1", decision)
    card = client.get_model_version(MODEL, version).description
    assert "**Parent version:** version 7" in card and "challenger v9 bench  12.5" in card
    assert "promote — better geoscore" in card and "keep — first" not in card and NOT_EVALUATED not in card
    assert card.count(BENCHMARKS_MARK) == 1


def test_the_parent_comes_from_the_retraining_run_and_missing_shards_are_said(mlflow_server, tmp_path):
    config = tiny_config(tmp_path, mlflow_server, [f"tracking.registered_model={MODEL}_retrain",
                                                   f"tracking.experiment=card-{tmp_path.name}",
                                                   f"data_root={tmp_path / 'empty_root'}"])
    version, run_id = register_in_run(config, "retrained", run_tags={"retrain.parent_version": "4"})
    client = MlflowClient(mlflow_server)
    card = client.get_model_version(f"{MODEL}_retrain", version).description
    assert "**Parent version:** version 4 (fine-tuned from it)" in card
    assert "**Training data:** not recorded" in card and "**Checkpoint:** not recorded" in card
    assert "Held-out metrics" not in card  # the run logged none
    assert client.get_run(run_id).inputs.dataset_inputs == []


def test_a_benchmark_dataset_digest_follows_its_content(mlflow_server, tmp_path):
    csv = tmp_path / "bench.csv"
    csv.write_text("IMG_ID,LAT,LON\na.jpg,1.0,2.0\n")
    with tracking_uri(mlflow_server):
        mlflow.set_experiment(f"datasets-{tmp_path.name}")
        with mlflow.start_run() as run:
            first = log_dataset(str(csv), "bench", "evaluation", identity={"split": None})
            same = log_dataset(str(csv), "bench", "evaluation", identity={"split": None})
            other_split = log_dataset(str(csv), "bench", "evaluation", identity={"split": "test"})
            csv.write_text("IMG_ID,LAT,LON\na.jpg,1.0,2.0\nb.jpg,3.0,4.0\n")  # an edited manifest
            edited = log_dataset(str(csv), "bench", "evaluation", identity={"split": None})
    assert first.digest == same.digest and json.loads(first.source.to_json())["uri"] == str(csv)
    assert len({first.digest, other_split.digest, edited.digest}) == 3
    inputs = MlflowClient(mlflow_server).get_run(run.info.run_id).inputs.dataset_inputs
    assert {i.dataset.digest for i in inputs} == {first.digest, other_split.digest, edited.digest}
    assert all({t.key: t.value for t in i.tags}["mlflow.data.context"] == "evaluation" for i in inputs)


def test_a_dataset_source_never_holds_credentials(mlflow_server, tmp_path, http_folder):
    (tmp_path / "bench.csv").write_text("IMG_ID,LAT,LON\na.jpg,1.0,2.0\n")
    base = http_folder(tmp_path)
    url = base.replace("http://", f"http://user:{SECRET}@") + f"/bench.csv?X-Amz-Signature={SECRET}"
    with tracking_uri(mlflow_server):
        mlflow.set_experiment(f"datasets-{tmp_path.name}")
        with mlflow.start_run() as run:
            log_dataset(url, "web_bench", "evaluation", files=[url])
    (dataset_input,) = MlflowClient(mlflow_server).get_run(run.info.run_id).inputs.dataset_inputs
    assert SECRET not in dataset_input.dataset.source and SECRET not in dataset_input.dataset.profile
    assert json.loads(dataset_input.dataset.source)["url"].startswith("http://REDACTED@127.0.0.1:")
