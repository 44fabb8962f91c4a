"""The model card of a registered version: its description in the MLflow registry (Markdown, as the MLflow UI shows
it) and the tags that carry the same facts for code: the data it was trained on (the training shards as an MLflow
dataset: source, digest, rows), the config fingerprint, the parent version, the training run and its checkpoint,
the held-out metrics measured at registration, and the benchmark table that the eval job fills in later.
"""

from __future__ import annotations

from collections.abc import Mapping

from geosurge.geo.metrics import ACCURACY_THRESHOLDS_KM, format_metrics_table

BENCHMARKS_MARK = "<!-- geosurge:benchmarks -->"  # everything after it is the eval job's section, replaced each time
NOT_EVALUATED = "Not evaluated on the benchmarks yet: the eval job writes this section."
CARD_METRICS = [*(f"acc_{t}km" for t in ACCURACY_THRESHOLDS_KM), "median_km", "geoscore"]
MAX_DESCRIPTION_CHARS = 60_000  # MLflow's registry keeps descriptions up to 65,535 characters


def metric_rows(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """A run's metrics grouped into table rows by prefix: `test_acc_1km` … `test_geoscore` → row "test"; only
    prefixes that have every column of `format_metrics_table`."""
    rows: dict[str, dict[str, float]] = {}
    for key in metrics:
        if key.endswith(CARD_METRICS[0]):
            prefix = key[: -len(CARD_METRICS[0])]
            if all(f"{prefix}{m}" in metrics for m in CARD_METRICS):
                rows[prefix.rstrip("_.") or "run"] = {m: float(metrics[f"{prefix}{m}"]) for m in CARD_METRICS}
    return dict(sorted(rows.items()))


def registration_card(
    *,
    name: str,
    version: str,
    model: str,
    config_fingerprint: str,
    run_id: str | None,
    parent_version: str | None,
    training_data: Mapping[str, object] | None,
    checkpoint_uri: str | None,
    run_metrics: Mapping[str, float],
) -> str:
    """The description written when a version is registered (Markdown)."""
    if training_data:
        rows = training_data.get("num_rows")
        data = (f"`{training_data['name']}` at `{training_data['source']}` — "
                f"{f'{rows:,} rows, ' if rows is not None else ''}{training_data.get('files', '?')} files, "
                f"digest `{training_data['digest']}` (the training run's MLflow dataset input)")
    else:
        data = "not recorded (no training shards were found at registration)"
    parent = (f"version {parent_version} (fine-tuned from it)" if parent_version
              else "none (trained from scratch)")
    lines = [
        f"# {name} version {version}",
        "",
        f"- **Model:** `{model}`",
        f"- **Config fingerprint:** `{config_fingerprint}` (the whole config is `config.yaml` in the training run)",
        f"- **Parent version:** {parent}",
        f"- **Training data:** {data}",
        f"- **Training run:** `{run_id or 'none'}`",
        f"- **Checkpoint:** `{checkpoint_uri}`" if checkpoint_uri else "- **Checkpoint:** not recorded",
    ]
    table = metric_rows(run_metrics)
    if table:
        lines += ["", "## Held-out metrics at registration", "", "```text", format_metrics_table(table), "```"]
    lines += ["", BENCHMARKS_MARK, "## Benchmarks", "", NOT_EVALUATED]
    return "\n".join(lines)


def with_benchmarks(description: str, table: str, eval_run_id: str | None, decision: str) -> str:
    """`description` with its benchmark section replaced by the eval job's table and decision."""
    head = description.split(BENCHMARKS_MARK, 1)[0].rstrip()
    section = [BENCHMARKS_MARK, "## Benchmarks", "", "```text", table, "```", "",
               f"- **Decision:** {decision}", f"- **Eval run:** `{eval_run_id or 'none'}`"]
    text = "\n".join([head, "", *section]) if head else "\n".join(section)
    return text[:MAX_DESCRIPTION_CHARS]


def record_benchmarks(client, name: str, version: str, table: str, eval_run_id: str | None, decision: str) -> str:
    """Write the eval job's benchmark table and decision into the version's description (keeping the rest of the
    card). Returns the new description."""
    current = client.get_model_version(name, version).description or ""
    description = with_benchmarks(current, table, eval_run_id, decision)
    client.update_model_version(name, version, description=description)
    return description
