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

`decide_on_benchmarks` is what the eval job calls: it compares both models on the identical set of images (those
both could read) of the decision benchmark, and keeps the champion when too few images were read
(`eval.min_evaluated_fraction`), so a partial eval never promotes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import pandas as pd

from geosurge.geo.metrics import ACCURACY_THRESHOLDS_KM, geolocation_metrics

PROMOTE, KEEP, NO_OP = "promote", "keep", "no_op"
PENDING_TAG = "eval.pending_promotion"  # on the challenger while its alias move and decision tags are being written
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
    compared_images: int | None = None  # images of the benchmark both models were compared on
    benchmark_images: int | None = None  # its images that are not broken (missing or undecodable for every model)

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


# A failure that says the image itself is bad (gone, not an image): the same for every model, so it leaves the
# benchmark rather than counting as a partial eval. Any other failure (fetch_error, timeout) is a read that failed.
BROKEN_IMAGE_REASONS = frozenset({"not_found"})
BROKEN_IMAGE_STAGES = frozenset({"decode"})
MANIFEST_STAGE = "manifest"  # a row the manifest reader quarantined: never an image of the benchmark


@dataclass(frozen=True)
class Comparison:
    """Both models' metrics over the images both evaluated, and how many images the benchmark had."""

    compared: int
    benchmark_images: int
    challenger_metrics: dict[str, float] | None  # None when no image was evaluated by both
    champion_metrics: dict[str, float] | None

    @property
    def fraction(self) -> float:
        return self.compared / self.benchmark_images if self.benchmark_images else 0.0


def _broken_ids(result) -> set[str]:
    f = result.failures
    bad = f.reason.isin(BROKEN_IMAGE_REASONS) | f.stage.isin(BROKEN_IMAGE_STAGES)
    return set(f.image_id[bad].astype(str))


def _metrics_on(predictions: pd.DataFrame, ids: list[str]) -> dict[str, float]:
    p = predictions.assign(image_id=predictions.image_id.astype(str)).drop_duplicates("image_id").set_index("image_id")
    p = p.loc[ids]
    return geolocation_metrics(p.pred_lat.to_numpy(), p.pred_lon.to_numpy(), p.lat.to_numpy(), p.lon.to_numpy())


def compare_on_common_images(challenger, champion=None) -> Comparison:
    """Metrics of the challenger (and the champion) over the identical set of images both evaluated.

    `challenger`, `champion`: a `BenchmarkResult` each (predictions, failures, rows_in). An image that is broken
    for every model (missing, undecodable, a bad manifest row) leaves the benchmark; one that only one model
    failed to read counts as not compared."""
    results = [r for r in (challenger, champion) if r is not None]
    broken = set.intersection(*(_broken_ids(r) for r in results))
    images = challenger.rows_in - int((challenger.failures.stage == MANIFEST_STAGE).sum()) - len(broken)
    evaluated = [set(r.predictions.image_id.astype(str)) for r in results]
    common = sorted(set.intersection(*evaluated) - broken)
    if not common:
        return Comparison(0, images, None, None)
    return Comparison(len(common), images, _metrics_on(challenger.predictions, common),
                      _metrics_on(champion.predictions, common) if champion is not None else None)


def decide_on_benchmarks(
    challenger_version: str,
    challenger: Mapping,
    champion_version: str | None,
    champion: Mapping | None,
    metric: str = "geoscore",
    decision_benchmark: str | None = None,
    min_improvement: float = 0.0,
    min_evaluated_fraction: float = 0.0,
) -> PromotionDecision:
    """The eval job's decision: `challenger`/`champion` are {benchmark: BenchmarkResult} (the champion's empty or
    None without a champion). Decides on `decision_benchmark` (None: the first) over the images both models
    evaluated; keeps the champion, saying why, when those are fewer than `min_evaluated_fraction` of the
    benchmark's images."""
    names = list(challenger)
    benchmark = decision_benchmark or names[0]
    if benchmark not in challenger:
        raise ValueError(f"eval.decision_benchmark {benchmark!r} is not one of the benchmarks {names}")
    if metric not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
        raise ValueError(f"unknown promotion metric {metric!r}; one of {sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER)}")
    challenger_version = str(challenger_version)
    champion_version = None if champion_version is None else str(champion_version)
    if champion_version == challenger_version:
        return decide_promotion(challenger_version, challenger[benchmark].metrics, champion_version,
                                challenger[benchmark].metrics, metric, benchmark, min_improvement)
    rival = (champion or {}).get(benchmark) if champion_version is not None else None
    if champion_version is not None and rival is None:
        raise ValueError(f"champion version {champion_version} has no result on {benchmark!r}: needed to decide")
    c = compare_on_common_images(challenger[benchmark], rival)
    counts = {"compared_images": c.compared, "benchmark_images": c.benchmark_images}
    if c.fraction < min_evaluated_fraction:
        who = "both models" if rival is not None else "the challenger"
        reason = (f"partial eval on {benchmark}: {who} evaluated only {c.compared} of its {c.benchmark_images} "
                  f"images ({c.fraction:.1%}), below eval.min_evaluated_fraction={min_evaluated_fraction:g}; "
                  f"the champion stays (v{champion_version or ' none'}) and nothing is compared")
        value = c.challenger_metrics[metric] if c.challenger_metrics else math.nan
        best = (c.champion_metrics or {}).get(metric) if rival is not None else None
        return PromotionDecision(KEEP, reason, metric, benchmark, challenger_version, champion_version, value,
                                 best, **counts)
    decision = decide_promotion(challenger_version, c.challenger_metrics, champion_version, c.champion_metrics,
                                metric, benchmark, min_improvement)
    return replace(decision, reason=f"{decision.reason}; on the {c.compared} of {c.benchmark_images} images both "
                                    f"models evaluated" if rival is not None else decision.reason, **counts)


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
    if moved:  # the intent first: a crash from here on is told apart from a finished move (interrupted_promotion)
        intent = json.dumps({"run_id": run_id, "alias": champion_alias, "from": decision.champion_version})
        client.set_model_version_tag(registered_model, decision.challenger_version, PENDING_TAG, intent)
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
    if moved:  # every tag is written: the decision is complete
        client.delete_model_version_tag(registered_model, decision.challenger_version, PENDING_TAG)
    return moved


def interrupted_promotion(registered_model: str, version: str, client) -> str | None:
    """What an eval job that crashed while promoting `version` left: None when no promotion of it is pending;
    else whether the alias move landed (the decision tags may be missing) or not (nothing changed)."""
    tags = client.get_model_version(registered_model, str(version)).tags
    if PENDING_TAG not in tags:
        return None
    intent = json.loads(tags[PENDING_TAG])
    try:
        current = str(client.get_model_version_by_alias(registered_model, intent["alias"]).version)
    except Exception:  # noqa: BLE001 - no such alias: the move did not land
        current = None
    run = intent.get("run_id")
    if current == str(version):
        return (f"eval run {run} moved @{intent['alias']} to version {version} and stopped before recording "
                "every decision tag: the move is done, the record incomplete")
    return (f"eval run {run} stopped before moving @{intent['alias']} to version {version} (it is version "
            f"{current}): the promotion did not happen")
