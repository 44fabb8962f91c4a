"""Champion / challenger decisions (pure) and their application to a real MLflow sqlite registry."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from geosurge.eval.benchmark import FAILURE_COLUMNS, PREDICTION_COLUMNS, BenchmarkResult
from geosurge.eval.promotion import (
    KEEP,
    NO_OP,
    PROMOTE,
    decide_on_benchmarks,
    decide_promotion,
    interrupted_promotion,
    promote,
)
from geosurge.geo.metrics import geolocation_metrics

GOOD = {"acc_1km": 0.1, "acc_25km": 0.3, "acc_200km": 0.5, "acc_750km": 0.8, "acc_2500km": 0.9,
        "median_km": 150.0, "mean_km": 900.0, "geoscore": 3500.0, "n": 100.0}
BAD = {"acc_1km": 0.0, "acc_25km": 0.05, "acc_200km": 0.1, "acc_750km": 0.2, "acc_2500km": 0.4,
       "median_km": 4000.0, "mean_km": 5000.0, "geoscore": 900.0, "n": 100.0}


def test_no_champion_promotes_and_says_so():
    d = decide_promotion("3", BAD, None, None, benchmark="geoworld_test")
    assert d.action == PROMOTE and d.promotes
    assert "no champion yet" in d.reason and d.champion_version is None
    assert d.challenger_value == 900.0


def test_same_version_is_a_no_op():
    d = decide_promotion("2", GOOD, "2", GOOD)
    assert d.action == NO_OP and not d.promotes
    assert "already is the champion" in d.reason


@pytest.mark.parametrize("metric", ["geoscore", "acc_2500km", "acc_25km", "median_km", "mean_km"])
def test_better_promotes_worse_keeps_on_every_metric_direction(metric):
    better = decide_promotion("2", GOOD, "1", BAD, metric=metric)
    worse = decide_promotion("2", BAD, "1", GOOD, metric=metric)
    assert better.action == PROMOTE and better.champion_value == BAD[metric] and better.challenger_value == GOOD[metric]
    assert worse.action == KEEP and "not better" in worse.reason
    assert ("lower is better" in better.reason) == (metric in ("median_km", "mean_km"))


def test_tie_and_min_improvement_keep_the_champion():
    assert decide_promotion("2", GOOD, "1", GOOD).action == KEEP  # a tie keeps the champion
    slightly = {**BAD, "geoscore": BAD["geoscore"] + 50}
    assert decide_promotion("2", slightly, "1", BAD, min_improvement=100).action == KEEP
    assert decide_promotion("2", slightly, "1", BAD, min_improvement=10).action == PROMOTE


def test_unknown_metric_and_missing_champion_metrics_are_errors():
    with pytest.raises(ValueError, match="unknown promotion metric"):
        decide_promotion("2", GOOD, "1", BAD, metric="accuracy")
    with pytest.raises(ValueError, match="metrics are needed"):
        decide_promotion("2", GOOD, "1", None)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real sqlite registry (created once: MLflow's schema setup takes seconds)."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}")


@pytest.fixture
def client(registry, request, tmp_path):
    """A fresh registered model 'geo-<test>' with three versions (sources are plain folders: only the registry's
    aliases and tags are exercised here); `promote` is given its name through `model`."""
    name = f"geo-{request.node.name}"
    registry.create_registered_model(name)
    for i in range(3):
        (tmp_path / f"m{i}").mkdir()
        registry.create_model_version(name, (tmp_path / f"m{i}").as_uri())
    registry.model = name
    return registry


def champion(c):
    return c.get_model_version_by_alias(c.model, "champion").version


def tags(c, version):
    return c.get_model_version(c.model, version).tags


def test_promote_moves_alias_and_tags_both_versions(client):
    first = decide_promotion("1", BAD, None, None, benchmark="b")
    assert promote(first, client.model, "champion", {"b": BAD}, run_id="run1", client=client)
    assert str(champion(client)) == "1"
    assert tags(client, "1")["eval.decision"] == PROMOTE
    assert tags(client, "1")["eval.previous_champion"] == "none"

    second = decide_promotion("2", GOOD, "1", BAD, benchmark="b")
    assert promote(second, client.model, "champion", {"b": GOOD}, run_id="run2", client=client)
    assert str(champion(client)) == "2"
    t2 = tags(client, "2")
    assert t2["eval.previous_champion"] == "1" and t2["eval.run_id"] == "run2"
    assert float(t2["eval.b.geoscore"]) == GOOD["geoscore"] and float(t2["eval.b.acc_2500km"]) == 0.9
    assert "better geoscore on b" in t2["eval.reason"]
    t1 = tags(client, "1")
    assert t1["eval.superseded_by"] == "2" and t1["eval.last_challenger"] == "2"


def test_keep_leaves_alias_and_records_the_loss(client):
    promote(decide_promotion("2", GOOD, None, None), client.model, client=client)
    lost = decide_promotion("3", BAD, "2", GOOD)
    assert not promote(lost, client.model, client=client)
    assert str(champion(client)) == "2"
    assert tags(client, "3")["eval.decision"] == KEEP and tags(client, "3")["eval.previous_champion"] == "2"
    assert tags(client, "2")["eval.last_challenge_decision"] == KEEP and "eval.superseded_by" not in tags(client, "2")


def test_no_op_changes_nothing(client):
    promote(decide_promotion("2", GOOD, None, None), client.model, client=client)
    before = tags(client, "2")
    assert not promote(decide_promotion("2", GOOD, "2", GOOD), client.model, client=client)
    assert str(champion(client)) == "2" and tags(client, "2") == before


def test_dry_run_records_but_does_not_move(client):
    promote(decide_promotion("1", BAD, None, None), client.model, client=client)
    assert not promote(decide_promotion("2", GOOD, "1", BAD), client.model, move_alias=False, client=client)
    assert str(champion(client)) == "1"
    assert tags(client, "2")["eval.decision"].startswith("promote (not applied")


def test_refuses_when_champion_moved_since_the_decision(client):
    promote(decide_promotion("1", BAD, None, None), client.model, client=client)
    stale = decide_promotion("3", GOOD, "1", BAD)
    promote(decide_promotion("2", GOOD, "1", BAD), client.model, client=client)  # another job got there first
    with pytest.raises(RuntimeError, match="decide again"):
        promote(stale, client.model, client=client)
    assert str(champion(client)) == "2"


# ---------------------------------------------------------------- the eval job's decision over benchmark results


def _result(name: str, errors_deg: list[float | None], reasons: dict[int, tuple[str, str]] | None = None,
            manifest_rejects: int = 0) -> BenchmarkResult:
    """A model's result on a benchmark of images i = 0..n-1 at (0, i): image i predicted `errors_deg[i]` degrees of
    latitude off, or failed with `reasons[i]` = (stage, reason); plus `manifest_rejects` quarantined manifest rows."""
    reasons = reasons or {}
    rows = [(f"img{i}", 0.0, float(i), e, float(i)) for i, e in enumerate(errors_deg) if i not in reasons]
    p = pd.DataFrame(rows, columns=["image_id", "lat", "lon", "pred_lat", "pred_lon"])
    p = p.assign(benchmark=name, uri="", score=1.0, pred_cell=0, error_km=0.0)[PREDICTION_COLUMNS]
    failures = pd.DataFrame(
        [(name, f"img{i}", "", 0.0, float(i), stage, reason, "") for i, (stage, reason) in reasons.items()]
        + [(name, None, "", 99.0, 0.0, "manifest", "bad_coordinates", "") for _ in range(manifest_rejects)],
        columns=FAILURE_COLUMNS)
    metrics = geolocation_metrics(p.pred_lat, p.pred_lon, p.lat, p.lon)
    return BenchmarkResult(name, "models:/m/1", "1", metrics, p, failures, len(errors_deg) + manifest_rejects)


EXACT, NEAR, FAR = 0.0, 0.5, 45.0  # degrees of latitude off: 0 km, ~56 km, ~5,000 km


def test_a_partial_eval_keeps_the_champion_and_says_why():
    n = 100
    champion = {"b": _result("b", [FAR] * n)}
    unread = {i: ("fetch", "fetch_error") for i in range(90, 100)}  # 10 % of the reads failed for good
    challenger = {"b": _result("b", [EXACT] * n, unread)}
    d = decide_on_benchmarks("2", challenger, "1", champion, min_evaluated_fraction=0.98)
    assert d.action == KEEP and not d.promotes
    assert "partial eval on b" in d.reason and "90 of its 100 images" in d.reason and "min_evaluated_fraction" in d.reason
    assert (d.compared_images, d.benchmark_images) == (90, 100)
    # the same reads with a laxer threshold: compared on the 90 images both read, and better there
    assert decide_on_benchmarks("2", challenger, "1", champion, min_evaluated_fraction=0.9).action == PROMOTE
    # no champion yet: a partial eval does not name one either
    first = decide_on_benchmarks("1", challenger, None, None, min_evaluated_fraction=0.98)
    assert first.action == KEEP and first.champion_version is None and "partial eval" in first.reason


def test_both_models_are_compared_on_the_identical_images():
    # the champion is exact on 9 images and far off on img9; the challenger is near on 9 and could not read img9.
    # Over what each read, the challenger looks better (it never met img9); over the same 9 images it is worse.
    champion = {"b": _result("b", [EXACT] * 9 + [FAR])}
    challenger = {"b": _result("b", [NEAR] * 10, {9: ("fetch", "timeout")})}
    assert challenger["b"].metrics["geoscore"] > champion["b"].metrics["geoscore"]  # the trap
    d = decide_on_benchmarks("2", challenger, "1", champion, min_evaluated_fraction=0.5)
    assert d.action == KEEP and d.compared_images == 9
    assert d.champion_value == pytest.approx(5000.0) and d.challenger_value < d.champion_value


def test_images_broken_for_every_model_leave_the_benchmark_but_one_sided_failures_count():
    broken = {3: ("fetch", "not_found"), 4: ("decode", "truncated")}
    champion = {"b": _result("b", [FAR] * 50, broken, manifest_rejects=2)}
    challenger = {"b": _result("b", [EXACT] * 50, broken, manifest_rejects=2)}
    d = decide_on_benchmarks("2", challenger, "1", champion, min_evaluated_fraction=0.98)
    assert d.action == PROMOTE and (d.compared_images, d.benchmark_images) == (48, 48)
    one_sided = {"b": _result("b", [FAR] * 50, {3: ("fetch", "not_found"), 5: ("fetch", "not_found")})}
    d = decide_on_benchmarks("2", challenger, "1", one_sided, min_evaluated_fraction=0.98)
    assert (d.compared_images, d.benchmark_images) == (47, 49) and d.action == KEEP  # 47/49 < 0.98


def test_the_decision_follows_decision_benchmark_and_promotion_metric_when_they_disagree():
    # benchmark "a": the challenger is better; benchmark "b": the champion is
    challenger = {"a": _result("a", [EXACT] * 10), "b": _result("b", [FAR] * 10)}
    champion = {"a": _result("a", [FAR] * 10), "b": _result("b", [EXACT] * 10)}
    assert decide_on_benchmarks("2", challenger, "1", champion).benchmark == "a"  # default: the first
    assert decide_on_benchmarks("2", challenger, "1", champion).action == PROMOTE
    assert decide_on_benchmarks("2", challenger, "1", champion, decision_benchmark="b").action == KEEP
    with pytest.raises(ValueError, match="not one of the benchmarks"):
        decide_on_benchmarks("2", challenger, "1", champion, decision_benchmark="c")
    # metrics that disagree: half exact and half far (acc_1km 0.5) vs all near (acc_1km 0, better GeoScore)
    split = {"a": _result("a", [EXACT] * 5 + [FAR] * 5)}
    steady = {"a": _result("a", [NEAR] * 10)}
    assert decide_on_benchmarks("2", split, "1", steady, metric="acc_1km").action == PROMOTE
    assert decide_on_benchmarks("2", split, "1", steady, metric="geoscore").action == KEEP
    assert decide_on_benchmarks("2", split, "1", steady, metric="median_km").action == KEEP  # ~2,500 km vs ~56 km
    same = decide_on_benchmarks("1", split, "1", split)
    assert same.action == NO_OP


class _CrashingClient(MlflowClient):
    """The real registry client, with the process dying (an exception) at one named call: where a killed eval job
    could stop."""

    def __init__(self, uri: str, model: str, crash_at: str):
        super().__init__(uri)
        self.model, self.crash_at = model, crash_at

    def set_registered_model_alias(self, *args):
        if self.crash_at == "alias":
            raise KeyboardInterrupt("killed before the alias move")
        return super().set_registered_model_alias(*args)

    def set_model_version_tag(self, name, version, key, value):
        if self.crash_at == "tags" and key == "eval.decision":
            raise KeyboardInterrupt("killed after the alias move")
        return super().set_model_version_tag(name, version, key, value)


def test_an_interrupted_promotion_is_told_apart_from_a_finished_one(client):
    promote(decide_promotion("1", BAD, None, None), client.model, client=client)
    assert interrupted_promotion(client.model, "1", client) is None  # finished: no pending record left
    for crash_at, version, landed in (("alias", "2", False), ("tags", "3", True)):
        crashing = _CrashingClient(client.tracking_uri, client.model, crash_at)
        champion_now = str(champion(client))
        with pytest.raises(KeyboardInterrupt):
            promote(decide_promotion(version, GOOD, champion_now, BAD), client.model, client=crashing)
        said = interrupted_promotion(client.model, version, client)
        assert str(champion(client)) == (version if landed else champion_now)
        assert ("the move is done, the record incomplete" in said) if landed else ("did not happen" in said)
