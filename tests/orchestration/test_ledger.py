"""Stage records: a stage is skipped only when its key matches and its outputs still exist."""

from geosurge import storage
from geosurge.orchestration.ledger import StageLedger, stage_key


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
