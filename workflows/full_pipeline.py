"""The whole GeoSURGE pipeline as one Ray job.

    python workflows/full_pipeline.py                      # embedded defaults: local Ray, local folder, sqlite MLflow
    ray job submit --working-dir . -- python workflows/full_pipeline.py --config my.yaml --set train.epochs=2

GeoWorld (synthetic images) → ingest (Ray Data: fetch, decode, segment, shards + quarantine) → geocells
→ train (Ray Train + DeepSpeed) → evaluate (test split) → MLflow run + registered version (alias).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import mlflow

from geosurge.config import PipelineConfig, load_config
from geosurge.data import storage
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import GROUND_TRUTH_SEGMENTER, ingest
from geosurge.data.segment import Segmenter
from geosurge.eval.evaluate import baseline_metrics, evaluate_split
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.geo.metrics import format_metrics_table
from geosurge.models import create_model
from geosurge.pipeline import init_ray, start_mlflow_run
from geosurge.registry import log_and_register
from geosurge.train.data import read_split
from geosurge.train.trainer import consolidated_state_dict, train


def step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any subset of the config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=2")
    args = parser.parse_args(argv)
    config: PipelineConfig = load_config(args.config, args.set)
    if config.ingest.segmenter == GROUND_TRUTH_SEGMENTER:
        parser.error("ingest.segmenter=ground_truth is an oracle for benchmarks: the registered model "
                     "would have no segmenter for new photos")
    started = time.time()
    root = config.resolved_data_root
    print(f"GeoSURGE pipeline '{config.run_name}' (config {config.fingerprint()}); data root {root}")

    init_ray(config)
    run = start_mlflow_run(config)

    t = step("1/6 GeoWorld: synthetic geotagged images")
    manifest_uri = generate_geoworld(config.geoworld, storage.join(root, "geoworld"), config.s3)
    print(f"manifest: {manifest_uri} ({time.time() - t:.1f} s)")

    t = step("2/6 ingest: Ray Data fetch → decode → segment → shards")
    if config.ingest.segmenter == "random":
        print("WARNING: the segmenter is a RANDOMLY INITIALISED SegFormer: label maps carry no meaning "
              "until a trained segmenter is configured (ingest.segmenter=<hub id or checkpoint folder>).")
    mlflow.set_tag("segmenter", config.ingest.segmenter)
    mlflow.set_tag("segmenter_random_init", str(config.ingest.segmenter == "random"))
    result = ingest(manifest_uri, storage.join(root, "ingest"), config.ingest, config.s3)
    print(result.summary())
    mlflow.log_metrics({"ingest_rows_in": result.rows_in, "ingest_shard_rows": result.shard_rows,
                        "ingest_quarantined": result.quarantined, "ingest_seconds": result.seconds})
    mlflow.log_dict(result.to_dict(), "ingest_report.json")

    t = step("3/6 geocells from the training coordinates")
    train_coords = read_split(result.shards_uri, "train", config.s3).select_columns(["lat", "lon"]).to_pandas()
    hierarchy = GeocellHierarchy.build(train_coords.lat.to_numpy(), train_coords.lon.to_numpy(),
                                       config.geocells.tau_max, config.geocells.tau_min, config.geocells.max_resolution)
    hierarchy_uri = storage.join(root, "geocells.parquet")
    hierarchy.save(hierarchy_uri, config.s3)
    print(f"{hierarchy} → {hierarchy_uri}")
    mlflow.log_params({f"geocells.num_cells.level{l}": n for l, n in enumerate(hierarchy.num_cells)})

    t = step(f"4/6 train: Ray Train TorchTrainer × {config.train.num_workers} workers, DeepSpeed ZeRO-{config.train.zero_stage}")
    trained = train(config, result.shards_uri, hierarchy, hierarchy_uri, mlflow_run_id=run.info.run_id)
    print(f"checkpoint: {trained.checkpoint_path} ({time.time() - t:.1f} s)")

    t = step(f"5/6 evaluate on the '{config.eval.split}' split")
    model = create_model(config.model, hierarchy)
    state_dict = consolidated_state_dict(trained.checkpoint_path)
    model.load_state_dict(state_dict)
    metrics, predictions = evaluate_split(model, result.shards_uri, config.eval.split, config.s3,
                                          config.eval.top_k, config.eval.batch_size)
    reference = baseline_metrics(train_coords.lat.to_numpy(), train_coords.lon.to_numpy(),
                                 predictions.lat.to_numpy(), predictions.lon.to_numpy())
    mlflow.log_metrics({f"{config.eval.split}_{k}": float(v) for k, v in metrics.items()})
    mlflow.log_metrics({f"{config.eval.split}_median_guess_{k}": float(v) for k, v in reference.items()})
    mlflow.log_table(predictions, f"predictions_{config.eval.split}.json")

    t = step("6/6 register the model in the MLflow Model Registry")
    segmenter = Segmenter(config.ingest.segmenter, config.ingest.label_grid)
    example_image = read_split(result.shards_uri, config.eval.split, config.s3).take(1)[0]["image"]
    model_uri, version = log_and_register(state_dict, config, hierarchy, segmenter, example_image)
    print(f"registered {config.tracking.registered_model} version {version} as {model_uri}")
    mlflow.end_run()

    print(f"\n=== done in {time.time() - started:.0f} s ===")
    print(format_metrics_table({
        f"{config.model.name} ({config.eval.split}, n={metrics['n']:.0f})": metrics,
        "median-coordinate guess": reference,
    }))
    if config.ingest.segmenter == "random":
        print("(semantic label maps came from a randomly initialised segmenter)")
    print(json.dumps({
        "data_root": root,
        "manifest": manifest_uri,
        "shards": result.shards_uri,
        "quarantine": result.quarantine_uri,
        "geocells": hierarchy_uri,
        "checkpoint": trained.checkpoint_path,
        "mlflow_tracking_uri": config.resolved_tracking_uri,
        "mlflow_run_id": run.info.run_id,
        "model": f"{model_uri} (version {version})",
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
