"""The eval job: a model version on the benchmarks, against the champion; promote it when it is better.

    python workflows/evaluate.py                                   # models:/geosurge@challenger, GeoWorld test split
    python workflows/evaluate.py --set eval.model_uri=models:/geosurge/3 --set eval.promotion_metric=acc_25km
    ray job submit --working-dir . -- python workflows/evaluate.py --config eval.yaml

Batch inference runs on Ray Data (an actor pool that loads the model once per actor); the MLflow eval run holds
the metrics, plots (world map, accuracy against distance), the prediction tables and the decision, which is also
written as tags on the model versions. See geosurge/eval/job.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from geosurge.config import add_config_arguments, config_from_args
from geosurge.eval.job import outcome_json, run_eval_job
from geosurge.runtime import init_ray


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(argv))

    init_ray(config)
    outcome = run_eval_job(config)

    for role, results in (("challenger", outcome.challenger), ("champion", outcome.champion)):
        for result in results.values():
            print(f"{role}: {result.summary()}")
            for warning in result.warnings:
                print(f"  warning: {warning}")
    print()
    print(outcome.table())
    print()
    if outcome.decision is None:
        print(f"decision: none ({outcome.model_uri} is not a registered model version)")
    else:
        moved = "champion alias moved" if outcome.alias_moved else "champion alias unchanged"
        print(f"decision: {outcome.decision.action} — {outcome.decision.reason} ({moved})")
    print(json.dumps({"mlflow_tracking_uri": config.resolved_tracking_uri, "mlflow_run_id": outcome.run_id,
                      "decision": json.loads(outcome_json(outcome))["decision"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
