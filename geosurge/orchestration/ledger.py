"""Stage records: what each pipeline stage made, and from which config, so a rerun skips finished work.

A stage's key is a hash of the config sections it reads plus the keys of the stages it consumes, so
changing `train.lr` redoes training and everything after it, while GeoWorld, ingest and geocells are
skipped. A record lives beside the data (`<data_root>/_stages/<stage>.json`, local or s3://) and counts as
done only while every output it names still exists.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from geosurge import storage
from geosurge.layout import DataRoot


def stage_key(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (config sections as dicts, upstream keys as strings)."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    stage: str
    key: str
    outputs: dict[str, str]  # name → URI; the stage is done only while all of them exist
    summary: dict[str, Any] = field(default_factory=dict)  # counts, metrics, versions: for the final report
    finished_at: float = 0.0


class StageLedger:
    """Reads and writes the stage records of one data root."""

    def __init__(self, root_uri: str, s3: storage.S3Config | None = None):
        self.root = DataRoot(root_uri).stages
        self.s3 = s3

    def _uri(self, stage: str) -> str:
        return storage.join(self.root, f"{stage}.json")

    def lookup(self, stage: str, key: str) -> StageRecord | None:
        """The record of `stage` made with `key`, if its outputs are all still there; else None."""
        uri = self._uri(stage)
        if not storage.exists(uri, self.s3):
            return None
        record = StageRecord(**json.loads(storage.read_bytes(uri, self.s3)))
        if record.key != key:
            return None
        if not all(storage.exists(out, self.s3) for out in record.outputs.values()):
            return None
        return record

    def record(self, stage: str, key: str, outputs: dict[str, str], summary: dict[str, Any] | None = None) -> StageRecord:
        record = StageRecord(stage=stage, key=key, outputs=outputs, summary=summary or {}, finished_at=time.time())
        storage.write_bytes(self._uri(stage), json.dumps(asdict(record), indent=2, default=str).encode(), self.s3)
        return record


class StageRunner:
    """Runs a workflow's stages in order, each under its header: a stage recorded as done with the same key is
    skipped, as long as every stage before it was skipped too; the first stage that runs (or is forced) makes
    every later one run. What a stage makes is recorded, so the next run can skip it."""

    def __init__(self, ledger: StageLedger, keys: dict[str, str], force: list[str] | None = None):
        self.ledger, self.keys = ledger, keys
        self.stages = list(keys)
        unknown = sorted(set(force or []) - set(self.stages))
        if unknown:
            raise ValueError(f"--force {', '.join(unknown)}: no such stage; the stages are {', '.join(self.stages)}")
        first_forced = min((self.stages.index(f) for f in force or []), default=len(self.stages))
        self.done: dict[str, StageRecord] = {}
        for name in self.stages[:first_forced]:
            record = ledger.lookup(name, keys[name])
            if record is None:
                break
            self.done[name] = record
        self.records: dict[str, StageRecord] = dict(self.done)

    @property
    def all_done(self) -> bool:
        return len(self.done) == len(self.stages)

    def run(self, name: str, title: str, make: Callable[[], tuple[dict[str, str], dict[str, Any]]]) -> StageRecord:
        """Print the stage's header; then its earlier record, or `make()`'s (outputs, summary), recorded."""
        print(f"\n=== {self.stages.index(name) + 1}/{len(self.stages)} {name}: {title} ===", flush=True)
        if name in self.done:
            print(f"done by an earlier run with the same config (stage key {self.keys[name]}): skipped", flush=True)
            return self.done[name]
        started = time.time()
        outputs, summary = make()
        summary["seconds"] = round(time.time() - started, 1)
        self.records[name] = self.ledger.record(name, self.keys[name], outputs, summary)
        return self.records[name]

    def seconds(self) -> dict[str, float]:
        """How long each stage this run made took, in stage order (a stage an earlier run made is not in it)."""
        return {name: record.summary.get("seconds", 0.0) for name, record in self.records.items()
                if name not in self.done}
