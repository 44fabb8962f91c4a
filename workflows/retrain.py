"""Scheduled retraining on new imagery, as one Ray job (a cron schedule runs it; see infra/kuberay).

    python workflows/retrain.py                      # same config and overrides as full_pipeline.py
    ray job submit --working-dir . -- python workflows/retrain.py --config my.yaml

    lock → new manifests under incoming/ since the watermark → ingest only those (Ray Data) → fine-tune from
    @champion on all shards (Ray Train + DeepSpeed) → register as @challenger → eval job (promote only if
    better) → advance the watermark → release the lock

Exit codes: 0 done (or nothing new: says so), 75 another retraining run holds the lock, 1 error.
The steps themselves are `geosurge.orchestration.retrain`.
"""

from __future__ import annotations

import argparse
import sys

from geosurge.config import add_config_arguments, config_from_args
from geosurge.orchestration.retrain import run_retrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    return run_retrain(config_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
