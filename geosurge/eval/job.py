"""The eval job as one call: evaluate the challenger and the champion on the configured benchmarks, log an MLflow
eval run (metrics, plots, prediction tables, the decision), and move the champion alias when the challenger is
better. Used by `workflows/evaluate.py` and meant for the retraining workflow too.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from geosurge.config import PipelineConfig
from geosurge.eval.benchmark import (
    BenchmarkResult,
    default_model_uri,
    evaluate_benchmarks,
    resolve_model_uri,
)
from geosurge.eval.promotion import PromotionDecision, decide_promotion, promote
from geosurge.geo.metrics import format_metrics_table
from geosurge.tracking.runs import start_mlflow_run

CHALLENGER, CHAMPION = "challenger", "champion"


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

    for name, r in results.items():
        prefix = f"{role}.{name}"
        mlflow.log_metrics({f"{prefix}.{k}": float(v) for k, v in r.metrics.items()})
        mlflow.log_metrics({f"{prefix}.rows_in": r.rows_in, f"{prefix}.failed_images": r.failed,
                            f"{prefix}.seconds": r.seconds})
        mlflow.log_table(r.predictions, f"predictions/{role}_{name}.json")
        if r.failed:
            mlflow.log_table(r.failures, f"failures/{role}_{name}.json")


def _log_plots(outcome: EvalOutcome) -> None:
    import mlflow

    from geosurge.eval import plots

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
            mlflow.log_artifact(str(world), "plots")
            mlflow.log_artifact(str(accuracy), "plots")


def run_eval_job(config: PipelineConfig, model_uri: str | None = None) -> EvalOutcome:
    """Evaluate `model_uri` (default: eval.model_uri, else models:/<registered_model>@<tracking.alias>) and the
    champion on `eval.benchmarks`, log one MLflow eval run, decide on `eval.promotion_metric` over
    `eval.decision_benchmark`, and promote. Needs Ray initialised (`geosurge.runtime.init_ray`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    model_uri = model_uri or default_model_uri(config)
    tracking_uri = config.resolved_tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    load_uri, name, version = resolve_model_uri(model_uri, tracking_uri)
    registered_model = name or config.tracking.registered_model
    champion_version = current_version(registered_model, config.eval.champion_alias, client)
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
        _log_plots(outcome)

        if version is None:
            mlflow.set_tags({"eval.decision": "none", "eval.reason": f"{model_uri} is not a registered model "
                                                                       f"version: nothing to promote"})
        else:
            outcome.decision = decide_promotion(
                version, outcome.challenger[decision_benchmark].metrics, champion_version,
                outcome.champion[decision_benchmark].metrics if decision_benchmark in outcome.champion else None,
                metric=config.eval.promotion_metric, benchmark=decision_benchmark,
                min_improvement=config.eval.min_improvement,
            )
            challenger_metrics = {n: r.metrics for n, r in outcome.challenger.items()}
            outcome.alias_moved = promote(outcome.decision, registered_model, config.eval.champion_alias,
                                          challenger_metrics, run.info.run_id, config.eval.promote, client)
            mlflow.set_tags({"eval.decision": outcome.decision.action, "eval.reason": outcome.decision.reason[:5000],
                             "eval.metric": outcome.decision.metric, "eval.benchmark": decision_benchmark,
                             "eval.alias_moved": str(outcome.alias_moved)})
        mlflow.log_dict(outcome.report(), "eval_report.json")
        mlflow.log_text(outcome.table(), "metrics_table.txt")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return outcome


def outcome_json(outcome: EvalOutcome) -> str:
    return json.dumps(outcome.report(), indent=2, default=str)
