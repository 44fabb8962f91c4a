"""Stage records: a stage is skipped only when its key matches and its outputs still exist."""

import time

from geosurge import storage
from geosurge.orchestration.ledger import StageLedger, StageRunner, stage_key


def test_stage_key_changes_with_config_and_upstream():
    base = stage_key({"epochs": 2}, "upstream-a")
    assert base == stage_key({"epochs": 2}, "upstream-a")
    assert base != stage_key({"epochs": 3}, "upstream-a")
    assert base != stage_key({"epochs": 2}, "upstream-b")


def test_ledger_lookup(tmp_path):
    ledger = StageLedger(str(tmp_path))
    out = storage.join(str(tmp_path), "shards")
    storage.ensure_dir(out)
    assert ledger.lookup("ingest", "k1") is None
    ledger.record("ingest", "k1", {"shards": out}, {"rows": 5})
    found = ledger.lookup("ingest", "k1")
    assert found is not None and found.summary == {"rows": 5}
    assert ledger.lookup("ingest", "k2") is None  # config changed: redo
    storage.resolve(out)[0].delete_dir(out)
    assert ledger.lookup("ingest", "k1") is None  # output gone: redo


def _runner(tmp_path, keys, force=None):
    return StageRunner(StageLedger(str(tmp_path)), keys, force)


def _make(calls, name):
    def make():
        calls.append(name)
        return {}, {"made_by": name}
    return make


def test_runner_skips_the_done_prefix_and_redoes_from_the_first_changed_or_forced_stage(tmp_path, capsys):
    keys = {"a": "ka", "b": "kb", "c": "kc"}
    calls: list[str] = []
    first = _runner(tmp_path, keys)
    assert not first.all_done
    for name in keys:
        first.run(name, "title", _make(calls, name))
    assert calls == ["a", "b", "c"]
    assert "=== 2/3 b: title ===" in capsys.readouterr().out

    again = _runner(tmp_path, keys)
    assert again.all_done and set(again.records) == {"a", "b", "c"}

    calls.clear()  # b's config changed: b and everything after it runs, a is skipped
    changed = _runner(tmp_path, {**keys, "b": "kb2"})
    for name in keys:
        changed.run(name, "title", _make(calls, name))
    assert calls == ["b", "c"]
    assert "skipped" in capsys.readouterr().out

    calls.clear()  # a stage after an undone one runs even when its own record matches
    forced = _runner(tmp_path, {**keys, "b": "kb2"}, force=["a"])
    assert forced.done == {}
    for name in keys:
        forced.run(name, "title", _make(calls, name))
    assert calls == ["a", "b", "c"]
    assert forced.records["c"].summary["made_by"] == "c" and "seconds" in forced.records["c"].summary


def test_runner_says_how_long_each_stage_it_ran_took(tmp_path):
    keys = {"a": "ka", "b": "kb"}
    first = _runner(tmp_path, keys)
    first.run("a", "title", _make([], "a"))
    first.run("b", "title", lambda: (time.sleep(0.3), ({}, {}))[1])
    assert list(first.seconds()) == ["a", "b"] and first.seconds()["b"] >= 0.3 > first.seconds()["a"]

    changed = _runner(tmp_path, {**keys, "b": "kb2"})  # a is done before: only b's time is this run's
    for name in keys:
        changed.run(name, "title", _make([], name))
    assert list(changed.seconds()) == ["b"] and changed.seconds()["b"] < 0.3
    assert _runner(tmp_path, {**keys, "b": "kb2"}).seconds() == {}  # nothing ran
