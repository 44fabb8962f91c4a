"""The steps both workflows take: ingest (Ray Data) → train (Ray Train + DeepSpeed) → register (MLflow) → eval job.

`orchestration.pipeline` (the full pipeline) and `orchestration.retrain` (scheduled retraining) are each a list of
these steps with their own bookkeeping around them (stage records; the lock and watermark). Each step runs inside
the caller's active MLflow run, prints what it did, and returns what the next step needs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow

from geosurge.config import IngestConfig, PipelineConfig
from geosurge.data.ingest import IngestResult, ingest
from geosurge.data.shards import split_batches
from geosurge.eval.job import EvalOutcome, run_eval_job
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.layout import DataRoot, IngestLayout
from geosurge.orchestration.retraining import BucketLock
from geosurge.segmentation.segmenter import Segmenter
from geosurge.tracking.registry import log_and_register
from geosurge.train.trainer import TrainResult, train

if TYPE_CHECKING:
    import torch


def header(title: str) -> float:
    """A step's header line; returns its start time."""
    print(f"\n=== {title} ===", flush=True)
    return time.time()


@dataclass
class IngestTotals:
    """What one ingest step added to the shards, over every manifest it ingested."""

    shards_uri: str
    quarantine_uri: str
    rows_in: int = 0
    shard_rows: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reports: list[dict] = field(default_factory=list)

    def add(self, result: IngestResult) -> None:
        self.rows_in += result.rows_in
        self.shard_rows += result.shard_rows
        for reason, n in result.quarantined_by_reason.items():
            self.quarantined_by_reason[reason] = self.quarantined_by_reason.get(reason, 0) + n
        self.seconds += result.seconds
        self.reports.append(result.to_dict())

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())


def ingest_manifests(manifests: list[str], output: IngestLayout, config: IngestConfig, s3,
                     hierarchy: GeocellHierarchy, metric_prefix: str = "ingest", val_fraction: float = 0.0
                     ) -> IngestTotals:
    """Ingest each manifest into the one shared output (resumable; each prints its own summary) and log the
    totals to the active MLflow run as `<metric_prefix>_rows_in`, `_shard_rows`, `_quarantined`, `_seconds`.
    `val_fraction`: rows without a split of their own held out for validation (`data.val_fraction`)."""
    totals = IngestTotals(shards_uri=output.shards, quarantine_uri=output.quarantine)
    for manifest in manifests:
        totals.add(ingest(manifest, output.root, config, s3, hierarchy=hierarchy, val_fraction=val_fraction))
    mlflow.log_metrics({f"{metric_prefix}_rows_in": totals.rows_in, f"{metric_prefix}_shard_rows": totals.shard_rows,
                        f"{metric_prefix}_quarantined": totals.quarantined, f"{metric_prefix}_seconds": totals.seconds})
    mlflow.log_dict(totals.reports[0] if len(totals.reports) == 1 else {"manifests": totals.reports},
                    f"{metric_prefix}_report.json")
    return totals


def train_model(config: PipelineConfig, shards_uri: str, hierarchy: GeocellHierarchy, hierarchy_uri: str,
                mlflow_run_id: str) -> TrainResult:
    """Ray Train + DeepSpeed on the shards' train split (resumes the run name's latest checkpoint)."""
    trained = train(config, shards_uri, hierarchy, hierarchy_uri, mlflow_run_id=mlflow_run_id)
    print(f"best checkpoint (epoch {trained.metrics.get('epoch')}, val_loss "
          f"{trained.metrics.get('val_loss', float('nan')):.4f}): {trained.checkpoint_path}", flush=True)
    return trained


def register_model(state_dict: dict, config: PipelineConfig, hierarchy: GeocellHierarchy, segmenter: Segmenter,
                   shards_uri: str, example_split: str, tags: dict[str, str] | None = None,
                   work_key: str = "", checkpoint_uri: str = "", model: torch.nn.Module | None = None,
                   ) -> tuple[str, str]:
    """Log the model (with one shard image as its input example) in the active MLflow run, register a new
    version at `tracking.alias` with `tags`; returns (model URI by alias, version). Idempotent: `work_key` (what
    was trained, and in which training run) gives the version's idempotency key, so a rerun of the same work
    reuses the version it registered before a crash (see `idempotency_key`). `model`: the model holding
    `state_dict`, if at hand: what it derived for inference goes into the bundle (`write_bundle`)."""
    example = next(split_batches(shards_uri, example_split, config.s3, 1, ["image"]), None)
    if example is None:
        raise ValueError(f"the shards ({shards_uri}) have no '{example_split}' row for the model's input example")
    example_image = example.column("image")[0].as_py()
    key = idempotency_key(work_key) if work_key else None  # no key: nothing to reuse, a new version
    model_uri, version = log_and_register(state_dict, config, hierarchy, segmenter, example_image,
                                          shards_uri=shards_uri, checkpoint_uri=checkpoint_uri,
                                          idempotency_key=key, tags=tags, model=model)
    print(f"registered {config.tracking.registered_model} version {version} as {model_uri}", flush=True)
    return model_uri, version


# An eval job is minutes long and its heartbeat renews the lease every third of this; a killed one blocks
# promotion for at most this long (the retraining lock's hours would block every eval behind a crash).
PROMOTION_LOCK_TTL_S = 900.0


def promotion_lock(config: PipelineConfig) -> BucketLock:
    """The lock every eval job holds from reading the champion to moving it (`<data_root>/eval/`); LockHeld
    (with who holds it) when another eval job is deciding."""
    return BucketLock(DataRoot(config.resolved_data_root).promotion_lock, PROMOTION_LOCK_TTL_S, config.s3)


def idempotency_key(work_key: str) -> str:
    """The registered version's idempotency key for a unit of work (a short hash of it)."""
    return hashlib.sha256(work_key.encode()).hexdigest()[:24]


def evaluate_version(config: PipelineConfig, version: str, before_promote: Callable[[], None] | None = None
                     ) -> EvalOutcome:
    """The eval job on a registered version: against @champion on the fixed benchmarks; promote it if better.
    `before_promote`: the caller's fencing check, right before the champion alias may move. Eval jobs are
    serialised by the promotion lock in the bucket, so two never decide against the same champion at once."""
    with promotion_lock(config) as lock:
        def fence() -> None:
            lock.check()
            if before_promote is not None:
                before_promote()

        outcome = run_eval_job(config, f"models:/{config.tracking.registered_model}/{version}", fence)
    print(outcome.table())
    decision = outcome.decision
    print(f"decision: {decision.action if decision else 'none'} — {decision.reason if decision else ''}", flush=True)
    return outcome
