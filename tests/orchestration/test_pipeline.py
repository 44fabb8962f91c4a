"""The full pipeline's stage keys and refusals, without running it: what a changed setting or a changed manifest
redoes, and the settings refused before anything starts."""

import json
import os

import pytest

from geosurge import storage
from geosurge.config import load_config
from geosurge.geo.metrics import geolocation_metrics
from geosurge.orchestration.ledger import StageLedger, StageRecord, StageRunner
from geosurge.orchestration.pipeline import STAGES, PipelineJob, check_pipeline_config, run_pipeline, stage_keys


def _changed(a: dict, b: dict) -> list[str]:
    return [s for s in STAGES if a[s] != b[s]]


def test_a_training_setting_redoes_training_and_what_follows_only():
    base = stage_keys(load_config())
    assert _changed(base, stage_keys(load_config(overrides=["train.lr=1e-3"]))) == ["train", "register", "evaluate"]
    assert _changed(base, stage_keys(load_config(overrides=["geocells.tau_min=3"]))) == [
        "geocells", "ingest", "train", "register", "evaluate"]
    assert _changed(base, stage_keys(load_config(overrides=["eval.top_k=3"]))) == ["register", "evaluate"]


def test_a_changed_manifest_redoes_ingest_and_everything_after_it(tmp_path):
    manifest = tmp_path / "photos.csv"
    manifest.write_text("image_id,uri,lat,lon\na,/x/a.jpg,48.8,2.3\n")
    config = load_config(overrides=[f"data.manifest={manifest}", "ingest.segmenter=none"])
    before = stage_keys(config)
    assert before == stage_keys(config)  # stable while the file is
    manifest.write_text("image_id,uri,lat,lon\na,/x/a.jpg,48.9,2.3\nb,/x/b.jpg,40.7,-74.0\n")  # corrected, grown
    os.utime(manifest, (1_700_000_000, 1_700_000_000))
    assert _changed(before, stage_keys(config)) == STAGES
    held_out = load_config(overrides=[f"data.manifest={manifest}", "ingest.segmenter=none", "data.val_fraction=0.05"])
    assert "data" not in _changed(stage_keys(config), stage_keys(held_out))  # splits change, the data does not
    assert {"geocells", "ingest"} <= set(_changed(stage_keys(config), stage_keys(held_out)))


def test_settings_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="oracle"):
        check_pipeline_config(load_config(overrides=["ingest.segmenter=ground_truth"]))
    with pytest.raises(ValueError, match="data.manifest names your own imagery"):
        check_pipeline_config(load_config(overrides=[f"data.manifest={tmp_path}/m.csv"]))  # segmenter=geoworld
    with pytest.raises(ValueError, match="val_fraction"):
        check_pipeline_config(load_config(overrides=["data.val_fraction=1.5"]))
    with pytest.raises(ValueError, match="divisible by 4"):  # the GeoWorld segmenter trains at the ingest size
        check_pipeline_config(load_config(overrides=["ingest.image_size=66", "ingest.label_grid=6"]))
    check_pipeline_config(load_config())  # the embedded defaults run


def _record_every_stage(config) -> None:
    """A finished run's stage records for `config` (every output a real file), as the pipeline leaves them."""
    root = config.resolved_data_root
    out = {name: storage.join(root, "made", name) for name in ("manifest", "geocells", "shards", "quarantine", "ckpt")}
    for uri in out.values():
        storage.write_bytes(uri, b"x")
    metrics = geolocation_metrics([1.0, 2.0], [1.0, 2.0], [1.0, 2.5], [1.0, 2.0])
    made = {
        "data": ({"manifest": out["manifest"]}, {"manifests": [out["manifest"]]}),
        "segmenter": ({}, {"spec": "random"}),
        "geocells": ({"geocells": out["geocells"]}, {}),
        "ingest": ({"shards": out["shards"], "quarantine": out["quarantine"]},
                   {"rows_in": 2, "shard_rows": 2, "quarantined_by_reason": {}}),
        "train": ({"checkpoint": out["ckpt"]}, {}),
        "register": ({}, {"version": "1", "model_uri": "models:/geosurge@challenger", "mlflow_run_id": "r",
                          "split": "test", "metrics": metrics, "median_guess": metrics}),
        "evaluate": ({}, {"decision": {"action": "promote", "reason": "no champion yet"}}),
    }
    ledger, keys = StageLedger(root), stage_keys(config)
    for stage in STAGES:
        ledger.record(stage, keys[stage], *made[stage])


def test_force_redoes_the_stage_and_everything_after_it_and_names_unknown_stages(tmp_path):
    config = load_config(overrides=[f"data_root={tmp_path / 'store'}"])
    _record_every_stage(config)
    ledger, keys = StageLedger(config.resolved_data_root), stage_keys(config)
    assert StageRunner(ledger, keys).all_done
    assert list(StageRunner(ledger, keys, force=["train"]).done) == ["data", "segmenter", "geocells", "ingest"]
    assert list(StageRunner(ledger, keys, force=["evaluate", "ingest"]).done) == ["data", "segmenter", "geocells"]
    changed = stage_keys(load_config(overrides=[f"data_root={tmp_path / 'store'}", "train.lr=1e-3"]))
    assert list(StageRunner(ledger, changed).done) == ["data", "segmenter", "geocells", "ingest"]
    with pytest.raises(ValueError, match="--force trian: no such stage; the stages are data, segmenter"):
        StageRunner(ledger, keys, force=["trian"])


def test_a_finished_rerun_does_nothing_and_says_so(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from geosurge.orchestration import pipeline

    ray_starts = []  # counted at the pipeline's own call: another test may have left a Ray running in this process
    monkeypatch.setattr(pipeline, "init_ray", lambda config: ray_starts.append(config))

    config = load_config(overrides=[f"data_root={tmp_path / 'store'}", f"output_dir={tmp_path / 'run'}"])
    _record_every_stage(config)
    MlflowClient(config.resolved_tracking_uri).create_registered_model(config.tracking.registered_model)
    assert run_pipeline(config) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "=== 1/7" not in out  # no stage header: nothing ran
    assert ray_starts == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # where everything is, for scripts
    assert summary["model"] == "models:/geosurge@challenger (version 1)" and summary["shards"].endswith("shards")
    assert summary["stage_seconds"] == {} and "stages:" not in out  # no stage ran, none has a time of this run's
    assert f"summary: {tmp_path / 'run' / 'summary.json'}" in out and '"data_root"' not in out


def test_the_oracle_segmenter_is_refused_before_anything_is_written(tmp_path):
    config = load_config(overrides=["ingest.segmenter=ground_truth", f"data_root={tmp_path / 'store'}"])
    with pytest.raises(ValueError, match="oracle"):
        run_pipeline(config)
    assert not (tmp_path / "store").exists()


def test_the_run_says_when_its_segmenter_is_random(tmp_path):
    import mlflow

    config = load_config(overrides=[f"output_dir={tmp_path}", f"data_root={tmp_path / 'store'}"])
    mlflow.set_tracking_uri(config.resolved_tracking_uri)
    mlflow.set_experiment("segmenter-tag")  # not the experiment an earlier test made active in another database
    for spec, random_init in (("random", "True"), ("random-oneformer", "True"), (str(tmp_path / "seg"), "False")):
        with mlflow.start_run() as run:
            PipelineJob(config, stage_keys(config), run).use_segmenter(StageRecord("segmenter", "k", {}, {"spec": spec}))
        tags = mlflow.get_run(run.info.run_id).data.tags
        assert (tags["segmenter"], tags["segmenter_random_init"]) == (spec, random_init)


def test_geocells_never_see_a_test_or_held_out_coordinate(tmp_path):
    """The hierarchy is built from training rows only: test rows (in a region no training row is near) get no cell
    at any level, and the rows `data.val_fraction` holds out are not among the coordinates it was built from."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from geosurge.data.manifest.holdout import holdout_unit
    from geosurge.geo.geocells import GeocellHierarchy

    rng = np.random.default_rng(0)
    n = 300
    unsplit = pd.DataFrame({"image_id": [f"tr{i}" for i in range(n)], "uri": [f"{i}.jpg" for i in range(n)],
                            "lat": rng.uniform(45, 50, n), "lon": rng.uniform(0, 8, n), "split": None})
    test = pd.DataFrame({"image_id": [f"te{i}" for i in range(40)], "uri": [f"t{i}.jpg" for i in range(40)],
                         "lat": rng.uniform(-35, -30, 40), "lon": rng.uniform(140, 150, 40), "split": "test"})
    manifest = tmp_path / "photos.parquet"
    pd.concat([unsplit, test]).to_parquet(manifest, index=False)
    config = load_config(overrides=[f"output_dir={tmp_path}", f"data_root={tmp_path / 'store'}",
                                    f"data.manifest={manifest}", "data.val_fraction=0.2",
                                    "geocells.tau_max=[60, 20]", "geocells.tau_min=2"])
    job = PipelineJob(config, stage_keys(config), run=None)
    job.manifests = [str(manifest)]
    job.make_geocells()
    hierarchy = GeocellHierarchy.load(job.root.geocells)

    lat, _ = job.train_coordinates
    held_out = holdout_unit(pa.array(unsplit.image_id)) < 0.2
    assert 0 < held_out.sum() < n and len(lat) == n - held_out.sum()
    assert not np.isin(lat, test.lat).any() and not np.isin(lat, unsplit.lat[held_out]).any()
    assert (hierarchy.assign(test.lat, test.lon) == -1).all()  # no cell anywhere near a test photo
    assert (hierarchy.assign(unsplit.lat[~held_out], unsplit.lon[~held_out])[:, 0] >= 0).all()
