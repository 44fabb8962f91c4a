"""Champion / challenger decisions (pure) and their application to a real MLflow sqlite registry."""

import pytest
from mlflow.tracking import MlflowClient

from geosurge.eval.promotion import KEEP, NO_OP, PROMOTE, decide_promotion, promote

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
