"""The eval job as one call: evaluate the challenger and the champion on the configured benchmarks, log an MLflow
eval run (metrics, plots, prediction tables, the decision), and move the champion alias when the challenger is
better. Used by `workflows/evaluate.py` and meant for the retraining workflow too.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from geosurge import storage
from geosurge.config import PipelineConfig
from geosurge.eval.benchmark import (
    BenchmarkResult,
    benchmark_manifest_uri,
    default_model_uri,
    evaluate_benchmarks,
    resolve_model_uri,
)
from geosurge.eval.promotion import PromotionDecision, decide_on_benchmarks, interrupted_promotion, promote
from geosurge.geo.metrics import format_metrics_table
from geosurge.tracking.model_card import record_benchmarks
from geosurge.tracking.runs import log_dataset, start_mlflow_run

CHALLENGER, CHAMPION = "challenger", "champion"
BELIEF_SAMPLES = 4  # images per benchmark whose belief map the eval run logs (plots/belief_<benchmark>.png)


@dataclass
class EvalOutcome:
    model_uri: str  # as asked for (e.g. models:/geosurge@challenger)
    registered_model: str
    challenger_version: str | None  # None: the URI is not a registered version (nothing to promote)
    champion_version: str | None  # the champion before the decision
    challenger: dict[str, BenchmarkResult]
    champion: dict[str, BenchmarkResult] = field(default_factory=dict)  # empty without a (different) champion
    decision: PromotionDecision | None = None
    alias_moved: bool = False
    run_id: str | None = None
    ten_crop: bool = False  # eval.ten_crop: every prediction averaged over 10 test-time views

    def table(self) -> str:
        """A title line, then challenger vs champion, one row per benchmark and role (format_metrics_table)."""
        views = "ten-crop (10 views averaged)" if self.ten_crop else "single view"
        title = f"eval of {self.model_uri}: {views}"
        rows = {}
        for name, result in self.challenger.items():
            rows[f"challenger v{self.challenger_version or '?'} {name} (n={result.evaluated})"] = result.metrics
            if name in self.champion:
                rows[f"champion v{self.champion_version} {name} (n={self.champion[name].evaluated})"] = (
                    self.champion[name].metrics)
        return f"{title}\n{format_metrics_table(rows)}"

    def report(self) -> dict:
        return {
            "model_uri": self.model_uri,
            "registered_model": self.registered_model,
            "challenger_version": self.challenger_version,
            "previous_champion": self.champion_version,
            "decision": self.decision.to_dict() if self.decision else None,
            "alias_moved": self.alias_moved,
            "run_id": self.run_id,
            "ten_crop": self.ten_crop,
            "benchmarks": {
                role: {name: {"metrics": r.metrics, "rows_in": r.rows_in, "evaluated": r.evaluated,
                              "failed": r.failed, "failed_by_reason": r.failed_by_reason, "warnings": r.warnings,
                              "model_uri": r.model_uri}
                       for name, r in results.items()}
                for role, results in ((CHALLENGER, self.challenger), (CHAMPION, self.champion))
            },
        }


def current_version(registered_model: str, alias: str, client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(registered_model, alias).version)
    except MlflowException:  # no such alias (or no such model yet)
        return None


def _open_eval_run(config: PipelineConfig, run_name: str):
    import mlflow

    if mlflow.active_run() is not None:  # called from inside another job's run (retraining): a child run
        return mlflow.start_run(run_name=run_name, nested=True)
    return start_mlflow_run(dataclasses.replace(config, run_name=run_name))


def _log_results(role: str, results: dict[str, BenchmarkResult]) -> None:
    import mlflow

    from geosurge import storage

    for name, r in results.items():
        prefix = f"{role}.{name}"
        mlflow.log_metrics({f"{prefix}.{k}": float(v) for k, v in r.metrics.items()})
        mlflow.log_metrics({f"{prefix}.rows_in": r.rows_in, f"{prefix}.failed_images": r.failed,
                            f"{prefix}.seconds": r.seconds})
        # presigned URLs and user:pass@ never reach a logged table
        mlflow.log_table(r.predictions.assign(uri=r.predictions.uri.map(storage.redact_uri)),
                         f"predictions/{role}_{name}.json")
        if r.failed:
            mlflow.log_table(r.failures.assign(uri=r.failures.uri.map(storage.redact_uri),
                                               detail=r.failures.detail.map(storage.redact_uri)),
                             f"failures/{role}_{name}.json")


def _log_decision_values(decision: PromotionDecision) -> None:
    """The two values the decision compared (over the images both models evaluated), as metrics of the eval run."""
    import math

    import mlflow

    values = {"decision.challenger_value": decision.challenger_value, "decision.champion_value": decision.champion_value,
              "decision.compared_images": decision.compared_images, "decision.benchmark_images": decision.benchmark_images}
    mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))})


def _log_benchmark_datasets(config: PipelineConfig, results: dict[str, BenchmarkResult]) -> None:
    """Each benchmark as an "evaluation" dataset input of the eval run: source its manifest (without credentials),
    digest from the manifest files' identity with the split, format and images root, rows as evaluated."""
    from geosurge import storage
    from geosurge.data.manifest import list_manifest_files

    for b in config.eval.benchmarks:
        uri, r = benchmark_manifest_uri(b, config), results[b.name]
        files = [uri] if storage.is_http(uri) else list_manifest_files(uri, config.s3)
        identity = {"split": b.split, "format": b.format,
                    "images_root": storage.redact_uri(b.images_root) if b.images_root else None}
        log_dataset(uri, b.name, "evaluation", files, config.s3, identity=identity,
                    profile={"rows_in": r.rows_in, "evaluated": r.evaluated, "failed": r.failed, **identity})


def _log_plots(outcome: EvalOutcome, config: PipelineConfig) -> None:
    import mlflow

    from geosurge.eval import plots
    from geosurge.tracking.registry import load_locator

    locator = None  # the challenger, as every inference actor loaded it, for the belief maps
    with tempfile.TemporaryDirectory() as tmp:
        for name, r in outcome.challenger.items():
            p = r.predictions
            world = Path(tmp, f"world_map_{name}.png")
            plots.world_map(str(world), p.pred_lat.to_numpy(), p.pred_lon.to_numpy(), p.lat.to_numpy(),
                            p.lon.to_numpy(), title=f"{name}: challenger v{outcome.challenger_version or '?'} "
                                                    f"predictions (n={r.evaluated}) against truth")
            curves = {f"challenger v{outcome.challenger_version or '?'}": r.errors_km}
            if name in outcome.champion:
                curves[f"champion v{outcome.champion_version}"] = outcome.champion[name].errors_km
            accuracy = Path(tmp, f"accuracy_{name}.png")
            plots.accuracy_curve(str(accuracy), curves, title=f"{name}: accuracy within distance")
            regions = Path(tmp, f"error_by_region_{name}.png")
            plots.error_region_map(str(regions), p.lat.to_numpy(), p.lon.to_numpy(), r.errors_km,
                                   title=f"{name}: challenger v{outcome.challenger_version or '?'} median error by "
                                         f"region (H3 resolution 0; numbers: images per region)")
            locator = locator or load_locator(r.model_uri, config.resolved_tracking_uri)  # one load, every benchmark
            figures = [world, accuracy, regions]
            try:  # reads the sample's images again: a picture must never cost the decision that follows
                figures.append(_belief_sample(Path(tmp, f"belief_{name}.png"), r, locator, config,
                                              outcome.challenger_version))
            except Exception as e:  # noqa: BLE001
                print(f"WARNING: no belief map for {name}: {storage.redact_uri(str(e))}", flush=True)
            for figure in figures:
                mlflow.log_artifact(str(figure), "plots")


def _belief_sample(path: Path, r: BenchmarkResult, locator, config: PipelineConfig, version: str | None) -> Path:
    """Belief maps of the challenger on the first `BELIEF_SAMPLES` evaluated images of a benchmark, truth marked."""
    from geosurge.eval import plots
    from geosurge.eval.benchmark import retry_policy

    sample = r.predictions.head(BELIEF_SAMPLES)
    fetcher = storage.Fetcher(config.s3, retry_policy(config), max_bytes=config.ingest.max_image_bytes)
    beliefs = locator.beliefs_bytes([fetcher.read(uri)[0] for uri in sample.uri])
    panels = [plots.BeliefPanel(b.lat, b.lon, b.prob, b.cell, top_k=config.eval.top_k, true_lat=row.lat,
                                true_lon=row.lon, title=f"{r.name} v{version or '?'}: {row.image_id}")
              for b, row in zip(beliefs, sample.itertuples())]
    return plots.belief_map(path, panels)


def run_eval_job(config: PipelineConfig, model_uri: str | None = None,
                 before_promote: Callable[[], None] | None = None) -> EvalOutcome:
    """Evaluate `model_uri` (default: eval.model_uri, else models:/<registered_model>@<tracking.alias>) and the
    champion on `eval.benchmarks`, log one MLflow eval run, decide on `eval.promotion_metric` over
    `eval.decision_benchmark`, and promote. Needs Ray initialised (`geosurge.runtime.init_ray`).

    Registered versions are loaded only if this pipeline registered them (`check_lineage`). `before_promote`:
    called right before the decision is applied (the caller's fencing check: it raises if its lock was lost)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from geosurge.tracking.registry import check_lineage

    model_uri = model_uri or default_model_uri(config)
    tracking_uri = config.resolved_tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    load_uri, name, version = resolve_model_uri(model_uri, tracking_uri)
    registered_model = name or config.tracking.registered_model
    champion_version = current_version(registered_model, config.eval.champion_alias, client)
    for v in {version, champion_version} - {None}:
        check_lineage(registered_model, v, client)
        if interrupted := interrupted_promotion(registered_model, v, client):  # a crashed eval job before this one
            print(f"WARNING: {interrupted}", flush=True)
    benchmarks = config.eval.benchmarks
    decision_benchmark = config.eval.decision_benchmark or benchmarks[0].name
    if decision_benchmark not in {b.name for b in benchmarks}:
        raise ValueError(f"eval.decision_benchmark {decision_benchmark!r} is not one of the benchmarks "
                         f"{[b.name for b in benchmarks]}")

    run = _open_eval_run(config, f"eval-{registered_model}-v{version or 'unregistered'}")
    try:
        mlflow.set_tags({"geosurge.job": "evaluate", "eval.model_uri": model_uri, "eval.loaded_uri": load_uri,
                         "eval.challenger_version": version or "none",
                         "eval.previous_champion": champion_version or "none",
                         "eval.ten_crop": str(config.eval.ten_crop)})  # metrics differ with and without it
        outcome = EvalOutcome(model_uri=model_uri, registered_model=registered_model, challenger_version=version,
                              champion_version=champion_version, challenger=evaluate_benchmarks(load_uri, benchmarks, config),
                              run_id=run.info.run_id, ten_crop=config.eval.ten_crop)
        if champion_version is not None and champion_version != version:
            outcome.champion = evaluate_benchmarks(f"models:/{registered_model}/{champion_version}", benchmarks, config)
        _log_results(CHALLENGER, outcome.challenger)
        _log_results(CHAMPION, outcome.champion)
        _log_benchmark_datasets(config, outcome.challenger)
        _log_plots(outcome, config)

        if version is None:
            mlflow.set_tags({"eval.decision": "none", "eval.reason": f"{model_uri} is not a registered model "
                                                                       f"version: nothing to promote"})
        else:
            ec = config.eval
            outcome.decision = decide_on_benchmarks(
                version, outcome.challenger, champion_version, outcome.champion, ec.promotion_metric,
                decision_benchmark, ec.min_improvement, ec.min_evaluated_fraction)
            _log_decision_values(outcome.decision)
            challenger_metrics = {n: r.metrics for n, r in outcome.challenger.items()}
            if before_promote is not None:
                before_promote()
            outcome.alias_moved = promote(outcome.decision, registered_model, config.eval.champion_alias,
                                          challenger_metrics, run.info.run_id, config.eval.promote, client)
            mlflow.set_tags({"eval.decision": outcome.decision.action, "eval.reason": outcome.decision.reason[:5000],
                             "eval.metric": outcome.decision.metric, "eval.benchmark": decision_benchmark,
                             "eval.alias_moved": str(outcome.alias_moved)})
            record_benchmarks(client, registered_model, version, outcome.table(), run.info.run_id,
                              f"{outcome.decision.action} (alias moved: {outcome.alias_moved}) — "
                              f"{outcome.decision.reason}")
        mlflow.log_dict(outcome.report(), "eval_report.json")
        mlflow.log_text(outcome.table(), "metrics_table.txt")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return outcome


def outcome_json(outcome: EvalOutcome) -> str:
    return json.dumps(outcome.report(), indent=2, default=str)
