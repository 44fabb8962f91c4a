"""The whole GeoSURGE pipeline as one Ray job.

    python workflows/full_pipeline.py                      # embedded defaults: local Ray, local folder, sqlite MLflow
    ray job submit --working-dir . -- python workflows/full_pipeline.py --config my.yaml --set train.epochs=2

    geoworld → segmenter → geocells → ingest (Ray Data) → train (Ray Train + DeepSpeed) → register (MLflow)
             → evaluate (the eval job: challenger vs @champion; promote if better)

Every stage records what it made and the hash of the config that made it (`<data_root>/_stages/`): a rerun
skips finished stages and redoes the ones whose config (or whose inputs) changed. The stages themselves are
`geosurge.orchestration.pipeline`.

The same code as `geosurge run` (geosurge/cli.py): `--verbose`, and a mistake is one line with exit code 2.
"""

from __future__ import annotations

import sys

from geosurge.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
