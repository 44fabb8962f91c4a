"""The full pipeline's stage keys and refusals, without running it: what a changed setting or a changed manifest
redoes, and the settings refused before anything starts."""

import os

import pytest

from geosurge.config import load_config
from geosurge.orchestration.pipeline import STAGES, check_pipeline_config, stage_keys


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
    check_pipeline_config(load_config())  # the embedded defaults run
