"""The eval job: a model version on the benchmarks, against the champion; promote it when it is better.

    python workflows/evaluate.py                                   # models:/geosurge@challenger, GeoWorld test split
    python workflows/evaluate.py --set eval.model_uri=models:/geosurge/3 --set eval.promotion_metric=acc_25km
    ray job submit --working-dir . -- python workflows/evaluate.py --config eval.yaml

Batch inference runs on Ray Data (an actor pool that loads the model once per actor; a small CPU benchmark on a
one-node Ray runs in the job's own process, `eval.in_driver_max_images`); the MLflow eval run holds
the metrics, plots (world map, accuracy against distance), the prediction tables and the decision, which is also
written as tags on the model versions. See geosurge/eval/job.py.

The same code as `geosurge eval` (geosurge/cli.py): `--verbose`, and a mistake is one line with exit code 2.
"""

from __future__ import annotations

import sys

from geosurge.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
