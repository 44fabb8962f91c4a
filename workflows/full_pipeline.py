"""The whole GeoSURGE pipeline as one Ray job.

    python workflows/full_pipeline.py                      # embedded defaults: local Ray, local folder, sqlite MLflow
    ray job submit --working-dir . -- python workflows/full_pipeline.py --config my.yaml --set train.epochs=2

    geoworld → segmenter → geocells → ingest (Ray Data) → train (Ray Train + DeepSpeed) → register (MLflow)
             → evaluate (the eval job: challenger vs @champion; promote if better)

Every stage records what it made and the hash of the config that made it (`<data_root>/_stages/`): a rerun
skips finished stages and redoes the ones whose config (or whose inputs) changed. The stages themselves are
`geosurge.orchestration.pipeline`.
"""

from __future__ import annotations

import argparse
import sys

from geosurge.config import add_config_arguments, config_from_args
from geosurge.orchestration.pipeline import STAGES, check_pipeline_config, run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--force", action="append", default=[], choices=STAGES,
                        help="redo this stage (and so everything after it) even if it is recorded as done")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    try:
        check_pipeline_config(config)
    except ValueError as e:
        parser.error(str(e))
    return run_pipeline(config, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
