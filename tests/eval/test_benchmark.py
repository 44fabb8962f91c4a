"""The eval job end to end in-process: a real MLflow sqlite registry with two tiny GeoSURGE versions (random
weights vs trained), inference on a local Ray (in the calling process, as small benchmarks on one node are, and
through Ray Data's actor pool), benchmarks in the GeoWorld and Im2GPS3k formats."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from geosurge.eval.benchmark import evaluate_model
from geosurge.eval.job import run_eval_job
from geosurge.eval.promotion import KEEP, NO_OP, PROMOTE
from geosurge.geo.metrics import geolocation_metrics
from tests.eval.eval_helpers import (
    BAD_COORDINATES_ID,
    BROKEN_IMAGE_ID,
    IM2GPS_COLUMNS,
    MISSING_IMAGE_ID,
    benchmarks,
    make_im2gps3k_csv,
    make_world,
    register,
    tiny_config,
    train_tiny,
    world_hierarchy,
)

pytestmark = pytest.mark.slow  # a minute or so: eight evaluations, each loading a model, one through Ray Data


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("evalworld")
    config = tiny_config(out)
    manifest = pd.read_parquet(make_world(config))
    hierarchy = world_hierarchy(config, manifest)
    example = Path(manifest.uri[0]).read_bytes()
    random_version = register(config, train_tiny(config, manifest, hierarchy, steps=0), hierarchy, example, "random")
    trained_version = register(config, train_tiny(config, manifest, hierarchy, steps=150), hierarchy, example,
                               "trained")
    csv = make_im2gps3k_csv(manifest, out / "im2gps3k")
    config.eval.benchmarks = benchmarks(csv)
    return SimpleNamespace(config=config, manifest=manifest, csv=csv, random=random_version,
                           trained=trained_version, client=MlflowClient(config.resolved_tracking_uri))


def test_metrics_match_a_direct_computation_and_bad_rows_are_counted(world):
    bench = world.config.eval.benchmarks[1]
    uri = f"models:/geosurge/{world.trained}"
    # through Ray Data's actor pool, as a benchmark too large to predict in the calling process goes
    pool = dataclasses.replace(world.config, eval=dataclasses.replace(world.config.eval, in_driver_max_images=0))
    result = evaluate_model(uri, bench, pool)

    # Every row is accounted for: 24 evaluated, the broken, missing and out-of-range ones reported with a reason.
    assert result.rows_in == 27 and result.evaluated == 24 and result.failed == 3 and result.reconciles
    assert result.failed_by_reason == {"bad_coordinates": 1, "not_found": 1, "truncated": 1}
    reasons = dict(zip(result.failures.image_id, result.failures.reason))
    assert reasons == {BROKEN_IMAGE_ID: "truncated", MISSING_IMAGE_ID: "not_found", BAD_COORDINATES_ID: "bad_coordinates"}
    assert set(result.failures.stage) == {"manifest", "fetch", "decode"}
    assert result.model_version == world.trained and result.model_uri == uri

    # The same images through the consumer's API, in-process, one call: the same predictions and metrics.
    csv = pd.read_csv(world.csv).set_index("IMG_ID").loc[result.predictions.image_id]
    model = mlflow.pyfunc.load_model(uri)
    direct = model.predict([(world.csv.parent / i).read_bytes() for i in csv.index])
    pred_lat = np.array([p.lat[0] for p in direct])
    pred_lon = np.array([p.lon[0] for p in direct])
    np.testing.assert_allclose(result.predictions.pred_lat, pred_lat, atol=1e-6)
    np.testing.assert_allclose(result.predictions.pred_lon, pred_lon, atol=1e-6)
    np.testing.assert_allclose(result.predictions.lat, csv.LAT)
    expected = geolocation_metrics(pred_lat, pred_lon, csv.LAT.to_numpy(), csv.LON.to_numpy())
    assert result.metrics == pytest.approx(expected, rel=1e-9)

    # A benchmark this small (27 rows) is predicted in the calling process by default: the same rows, the same
    # failures, the same predictions and metrics as the actor pool gives.
    assert world.config.eval.in_driver_max_images >= result.rows_in
    here = evaluate_model(uri, bench, world.config)
    assert here.reconciles and here.failed_by_reason == result.failed_by_reason
    # (Ray Data's pandas strings are Arrow-backed, pyarrow's are not: the values are compared)
    pd.testing.assert_frame_equal(here.predictions, result.predictions, atol=1e-6, check_dtype=False)
    pd.testing.assert_frame_equal(here.failures.reset_index(drop=True), result.failures.reset_index(drop=True),
                                  check_dtype=False)
    assert here.metrics == pytest.approx(result.metrics, rel=1e-6)


def test_a_benchmark_whose_every_row_is_quarantined_is_a_clear_error_on_both_paths(world, tmp_path):
    csv = tmp_path / "all_bad.csv"  # Im2GPS3k's columns, both rows off the globe
    rows = [["a.jpg", "x", 123.0, 0.0, 1, 5, 100, 0.1, 0.6, 0.3], ["b.jpg", "y", 0.0, 999.0, 1, 5, 100, 0.1, 0.6, 0.3]]
    pd.DataFrame(rows, columns=IM2GPS_COLUMNS).to_csv(csv, index=False)
    bench = dataclasses.replace(world.config.eval.benchmarks[1], name="all_bad", manifest=str(csv))
    pool = dataclasses.replace(world.config, eval=dataclasses.replace(world.config.eval, in_driver_max_images=0))
    for config in (world.config, pool):
        with pytest.raises(ValueError, match="none of its 2 rows could be evaluated.*bad_coordinates"):
            evaluate_model(f"models:/geosurge/{world.trained}", bench, config)


@pytest.fixture(scope="module")
def jobs(world):
    """The sequence a registry lives through: random v1 first (no champion), then trained v2 (the challenger
    alias), then v1 again (worse), then v2 again (already champion)."""
    first = run_eval_job(world.config, f"models:/geosurge/{world.random}")
    champion_after_first = world.client.get_model_version_by_alias("geosurge", "champion").version
    better = run_eval_job(world.config)  # default URI: models:/geosurge@challenger, the trained version
    worse = run_eval_job(world.config, f"models:/geosurge/{world.random}")
    again = run_eval_job(world.config)
    return SimpleNamespace(first=first, better=better, worse=worse, again=again,
                           champion_after_first=str(champion_after_first))


def champion(world) -> str:
    return str(world.client.get_model_version_by_alias("geosurge", "champion").version)


def test_no_champion_the_challenger_becomes_champion(world, jobs):
    d = jobs.first.decision
    assert d.action == PROMOTE and "no champion yet" in d.reason and d.champion_version is None
    assert jobs.champion_after_first == world.random
    assert jobs.first.champion == {}  # nothing to compare against


def test_champion_moves_only_when_the_challenger_is_better(world, jobs):
    better, worse, again = jobs.better, jobs.worse, jobs.again
    assert better.challenger_version == world.trained and better.champion_version == world.random
    assert better.decision.action == PROMOTE and better.alias_moved
    for name in ("geoworld_test", "im2gps3k_mini"):
        assert better.challenger[name].metrics["geoscore"] > better.champion[name].metrics["geoscore"]
        # the champion re-evaluated on the same benchmark gives the figures it had as a challenger
        assert better.champion[name].metrics == jobs.first.challenger[name].metrics
    assert worse.decision.action == KEEP and not worse.alias_moved and "not better" in worse.decision.reason
    assert worse.decision.champion_version == world.trained
    assert again.decision.action == NO_OP and not again.alias_moved and again.champion == {}
    assert champion(world) == world.trained


def test_decision_is_recorded_on_the_versions(world, jobs):
    trained = world.client.get_model_version("geosurge", world.trained).tags
    assert trained["eval.decision"] == PROMOTE and trained["eval.previous_champion"] == world.random
    assert trained["eval.run_id"] == jobs.better.run_id and trained["eval.metric"] == "geoscore"
    assert float(trained["eval.geoworld_test.geoscore"]) == pytest.approx(
        jobs.better.challenger["geoworld_test"].metrics["geoscore"], rel=1e-5)
    assert "better geoscore on geoworld_test" in trained["eval.reason"]
    random = world.client.get_model_version("geosurge", world.random).tags
    assert random["eval.superseded_by"] == world.trained
    assert random["eval.decision"] == KEEP and random["eval.previous_champion"] == world.trained  # its second try


def test_eval_run_holds_metrics_plots_predictions_and_decision(world, jobs, tmp_path):
    outcome = jobs.better
    run = world.client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["eval.decision"] == PROMOTE and run.data.tags["eval.previous_champion"] == world.random
    for role, results in (("challenger", outcome.challenger), ("champion", outcome.champion)):
        for name, r in results.items():
            assert run.data.metrics[f"{role}.{name}.geoscore"] == pytest.approx(r.metrics["geoscore"])
            assert run.data.metrics[f"{role}.{name}.acc_2500km"] == pytest.approx(r.metrics["acc_2500km"])
            assert run.data.metrics[f"{role}.{name}.failed_images"] == r.failed
    assert run.data.metrics["challenger.im2gps3k_mini.failed_images"] == 3

    local = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, dst_path=str(tmp_path),
                                                     tracking_uri=world.config.resolved_tracking_uri))
    for name in ("geoworld_test", "im2gps3k_mini"):
        for plot in (f"plots/world_map_{name}.png", f"plots/accuracy_{name}.png"):
            with Image.open(local / plot) as img:
                img.verify()
                assert img.format == "PNG"
        table = json.loads((local / f"predictions/challenger_{name}.json").read_text())
        assert len(table["data"]) == outcome.challenger[name].evaluated
    failures = json.loads((local / "failures/challenger_im2gps3k_mini.json").read_text())
    assert len(failures["data"]) == 3
    report = json.loads((local / "eval_report.json").read_text())
    assert report["decision"]["action"] == PROMOTE and report["previous_champion"] == world.random
    assert report["benchmarks"]["challenger"]["im2gps3k_mini"]["failed_by_reason"]["truncated"] == 1


def test_eval_run_logs_benchmarks_as_datasets_and_pictures_and_fills_the_model_card(world, jobs, tmp_path):
    outcome = jobs.better
    run = world.client.get_run(outcome.run_id)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"geoworld_test", "im2gps3k_mini"}
    for name, dataset_input in inputs.items():
        assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "evaluation"
        profile = json.loads(dataset_input.dataset.profile)
        r = outcome.challenger[name]
        assert (profile["rows_in"], profile["evaluated"], profile["failed"]) == (r.rows_in, r.evaluated, r.failed)
    assert json.loads(inputs["im2gps3k_mini"].dataset.source)["uri"] == str(world.csv)
    assert json.loads(inputs["geoworld_test"].dataset.profile)["split"] == "test"
    # the same benchmark files give the same digest in every eval run
    first = {i.dataset.name: i.dataset.digest for i in world.client.get_run(jobs.first.run_id).inputs.dataset_inputs}
    assert first == {name: i.dataset.digest for name, i in inputs.items()}

    local = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="plots",
                                                     dst_path=str(tmp_path),
                                                     tracking_uri=world.config.resolved_tracking_uri))
    for name in ("geoworld_test", "im2gps3k_mini"):
        for plot in (f"belief_{name}.png", f"error_by_region_{name}.png"):
            with Image.open(local / plot) as img:
                assert img.format == "PNG" and img.width > 800
        with Image.open(local / f"belief_{name}.png") as img:
            assert img.height > 1000  # four images: two rows of maps

    card = world.client.get_model_version("geosurge", world.trained).description
    assert f"# geosurge version {world.trained}" in card and "**Parent version:** none" in card
    benchmarks_section = card.split("## Benchmarks", 1)[1]
    # the trained version was evaluated twice; its card holds the latest eval's table, run and decision
    assert jobs.again.table() in benchmarks_section
    assert f"`{jobs.again.run_id}`" in benchmarks_section and "no_op" in benchmarks_section.lower()
