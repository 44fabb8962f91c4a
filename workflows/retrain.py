"""Scheduled retraining on new imagery, as one Ray job (a cron schedule runs it; see infra/kuberay).

    python workflows/retrain.py                      # same config and overrides as full_pipeline.py
    ray job submit --working-dir . -- python workflows/retrain.py --config my.yaml

    lock → new manifests under incoming/ since the watermark → ingest only those (Ray Data) → fine-tune from
    @champion on all shards (Ray Train + DeepSpeed) → register as @challenger → eval job (promote only if
    better) → advance the watermark → release the lock

Exit codes: 0 done (or nothing new: says so), 75 another retraining run holds the lock, 1 error.
The steps themselves are `geosurge.orchestration.retrain`.

The same code as `geosurge retrain` (geosurge/cli.py): `--verbose`, and a mistake is one line with exit code 2.
"""

from __future__ import annotations

import sys

from geosurge.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
