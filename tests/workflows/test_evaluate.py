"""`python workflows/evaluate.py` as a subprocess against a real MLflow sqlite registry: the trained challenger
beats the random-weight champion on both benchmarks and takes the champion alias."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]

from tests.eval.eval_helpers import (
    TINY,
    benchmark_overrides,
    make_im2gps3k_csv,
    make_world,
    register,
    tiny_config,
    train_tiny,
    world_hierarchy,
)


@pytest.mark.slow
def test_evaluate_workflow_promotes_the_better_challenger(tmp_path):
    config = tiny_config(tmp_path)
    manifest = pd.read_parquet(make_world(config))
    hierarchy = world_hierarchy(config, manifest)
    example = Path(manifest.uri[0]).read_bytes()
    random_version = register(config, train_tiny(config, manifest, hierarchy, steps=0), hierarchy, example, "random")
    client = MlflowClient(config.resolved_tracking_uri)
    client.set_registered_model_alias("geosurge", "champion", random_version)  # as an earlier eval would have
    trained_version = register(config, train_tiny(config, manifest, hierarchy, steps=150), hierarchy, example,
                               "trained")  # takes the challenger alias
    csv = make_im2gps3k_csv(manifest, tmp_path / "im2gps3k")

    overrides = [*TINY, f"output_dir={tmp_path}", f"data_root={tmp_path / 'store'}", benchmark_overrides(csv)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "workflows/evaluate.py", *(a for kv in overrides for a in ("--set", kv))],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    out = proc.stdout
    assert f"challenger v{trained_version} geoworld_test" in out and f"champion v{random_version} im2gps3k_mini" in out
    assert "@2500km" in out and "GeoScore" in out  # the metrics table
    assert "27 rows = 24 evaluated + 3 failed (bad_coordinates=1, not_found=1, truncated=1)" in out
    assert f"decision: promote — better geoscore on geoworld_test: challenger v{trained_version}" in out
    assert "champion alias moved" in out

    assert str(client.get_model_version_by_alias("geosurge", "champion").version) == trained_version
    tags = client.get_model_version("geosurge", trained_version).tags
    assert tags["eval.decision"] == "promote" and tags["eval.previous_champion"] == random_version
    run = client.get_run(tags["eval.run_id"])
    assert run.data.tags["geosurge.job"] == "evaluate" and run.info.status == "FINISHED"
    assert run.data.metrics["challenger.geoworld_test.geoscore"] > run.data.metrics["champion.geoworld_test.geoscore"]
