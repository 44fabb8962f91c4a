"""Champion / challenger: decide whether a challenger version replaces the champion, then apply and record it.

`decide_promotion` is a pure function of the two versions' metrics; `promote` moves the alias (only for a
"promote" decision, and only if the champion is still the one the decision was made against) and writes the
decision as tags on the model versions it concerns:

- challenger version (promote / keep): `eval.decision`, `eval.reason`, `eval.previous_champion`, `eval.metric`,
  `eval.benchmark`, `eval.run_id`, and its metrics as `eval.<benchmark>.<metric>`;
- the previous champion (when it was challenged by another version): `eval.last_challenger`,
  `eval.last_challenge_decision`, `eval.last_challenge_reason`, and `eval.superseded_by` when it lost.

A no-op (the challenger already is the champion) moves nothing and leaves the version's tags as they are (they
say how it became champion); the eval run still records it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from geosurge.geo.metrics import ACCURACY_THRESHOLDS_KM

PROMOTE, KEEP, NO_OP = "promote", "keep", "no_op"
LOWER_IS_BETTER = frozenset({"median_km", "mean_km"})
HIGHER_IS_BETTER = frozenset({*(f"acc_{t}km" for t in ACCURACY_THRESHOLDS_KM), "geoscore"})
TAGGED_METRICS = (*(f"acc_{t}km" for t in ACCURACY_THRESHOLDS_KM), "median_km", "mean_km", "geoscore", "n")


@dataclass(frozen=True)
class PromotionDecision:
    action: str  # PROMOTE, KEEP or NO_OP
    reason: str
    metric: str
    benchmark: str
    challenger_version: str
    champion_version: str | None  # the champion when the decision was made (None: there was none)
    challenger_value: float
    champion_value: float | None

    @property
    def promotes(self) -> bool:
        return self.action == PROMOTE

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def decide_promotion(
    challenger_version: str,
    challenger_metrics: Mapping[str, float],
    champion_version: str | None,
    champion_metrics: Mapping[str, float] | None,
    metric: str = "geoscore",
    benchmark: str = "",
    min_improvement: float = 0.0,
) -> PromotionDecision:
    """Promote when there is no champion, or when the challenger beats the champion on `metric` by more than
    `min_improvement` (higher is better for acc_*km and geoscore, lower for median_km and mean_km); no-op when
    the challenger already is the champion; keep the champion otherwise (a tie keeps it)."""
    if metric not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
        raise ValueError(f"unknown promotion metric {metric!r}; one of {sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER)}")
    challenger_version = str(challenger_version)
    value = float(challenger_metrics[metric])
    on = f" on {benchmark}" if benchmark else ""
    common = {"metric": metric, "benchmark": benchmark, "challenger_version": challenger_version,
              "challenger_value": value}
    if champion_version is None:
        return PromotionDecision(PROMOTE, f"no champion yet: version {challenger_version} becomes champion "
                                          f"({metric}{on} = {_fmt(value)})", champion_version=None,
                                 champion_value=None, **common)
    champion_version = str(champion_version)
    if champion_version == challenger_version:
        return PromotionDecision(NO_OP, f"version {challenger_version} already is the champion; nothing to do",
                                 champion_version=champion_version, champion_value=value, **common)
    if champion_metrics is None:
        raise ValueError(f"champion version {champion_version} exists: its metrics are needed to decide")
    best = float(champion_metrics[metric])
    gain = best - value if metric in LOWER_IS_BETTER else value - best
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    comparison = (f"{metric}{on}: challenger v{challenger_version} {_fmt(value)} vs champion v{champion_version} "
                  f"{_fmt(best)} ({direction} is better; gain {_fmt(gain)}, required > {_fmt(min_improvement)})")
    if gain > min_improvement:
        return PromotionDecision(PROMOTE, f"better {comparison}", champion_version=champion_version,
                                 champion_value=best, **common)
    return PromotionDecision(KEEP, f"not better {comparison}", champion_version=champion_version,
                             champion_value=best, **common)


def decision_tags(
    decision: PromotionDecision, metrics: Mapping[str, Mapping[str, float]], run_id: str | None = None
) -> dict[str, str]:
    """The challenger version's tags for a decision; `metrics`: {benchmark: its metrics}."""
    tags = {
        "eval.decision": decision.action,
        "eval.reason": decision.reason,
        "eval.previous_champion": decision.champion_version or "none",
        "eval.metric": decision.metric,
        "eval.benchmark": decision.benchmark,
    }
    if run_id:
        tags["eval.run_id"] = run_id
    for bench, values in metrics.items():
        tags.update({f"eval.{bench}.{k}": f"{float(values[k]):.6g}" for k in TAGGED_METRICS if k in values})
    return tags


def promote(
    decision: PromotionDecision,
    registered_model: str,
    champion_alias: str = "champion",
    challenger_metrics: Mapping[str, Mapping[str, float]] | None = None,
    run_id: str | None = None,
    move_alias: bool = True,
    client=None,
) -> bool:
    """Apply a decision: move `champion_alias` to the challenger for PROMOTE (if `move_alias`), and tag the
    versions. Returns whether the alias moved. Refuses (RuntimeError) if the champion changed since the
    decision was made (another eval job got there first): decide again against the new champion."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    try:
        current = str(client.get_model_version_by_alias(registered_model, champion_alias).version)
    except MlflowException:
        current = None
    if current != decision.champion_version:
        raise RuntimeError(f"{registered_model}@{champion_alias} is version {current}, not version "
                           f"{decision.champion_version} as when the decision was made; decide again")
    if decision.action == NO_OP:
        return False
    moved = decision.promotes and move_alias
    if moved:
        client.set_registered_model_alias(registered_model, champion_alias, decision.challenger_version)
    tags = decision_tags(decision, challenger_metrics or {}, run_id)
    if decision.promotes and not move_alias:
        tags["eval.decision"] = f"{PROMOTE} (not applied: eval.promote=false)"
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, decision.challenger_version, key, value[:5000])
    if decision.champion_version is not None:
        champion = decision.champion_version
        client.set_model_version_tag(registered_model, champion, "eval.last_challenger", decision.challenger_version)
        client.set_model_version_tag(registered_model, champion, "eval.last_challenge_decision", tags["eval.decision"])
        client.set_model_version_tag(registered_model, champion, "eval.last_challenge_reason", decision.reason[:5000])
        if moved:
            client.set_model_version_tag(registered_model, champion, "eval.superseded_by", decision.challenger_version)
    return moved
