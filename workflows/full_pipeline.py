"""The whole GeoSURGE pipeline as one Ray job.

    python workflows/full_pipeline.py                      # embedded defaults: local Ray, local folder, sqlite MLflow
    ray job submit --working-dir . -- python workflows/full_pipeline.py --config my.yaml --set train.epochs=2

GeoWorld (synthetic images) → segmenter (trained on GeoWorld's label maps, when ingest.segmenter=geoworld)
→ geocells (from the manifest's training coordinates) → ingest (Ray Data: fetch, decode, segment, cells →
shards + quarantine) → train (Ray Train + DeepSpeed) → register (evaluate the test split, MLflow run, new
version at @challenger) → eval job (challenger vs @champion on the fixed benchmarks; promote if better).

Every stage records what it made and the hash of the config that made it (`<data_root>/_stages/`): a rerun
skips finished stages and redoes the ones whose config (or whose inputs) changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import mlflow

from geosurge import storage
from geosurge.config import PipelineConfig, load_config
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import ingest
from geosurge.data.manifest import manifest_coordinates
from geosurge.data.shards import read_split
from geosurge.eval.evaluate import baseline_metrics, evaluate_split
from geosurge.eval.job import run_eval_job
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.geo.metrics import format_metrics_table
from geosurge.models import create_model
from geosurge.orchestration.ledger import StageLedger, StageRecord, stage_key
from geosurge.runtime import init_ray
from geosurge.segmentation import GROUND_TRUTH_SEGMENTER
from geosurge.segmentation.segmenter import (
    GEOWORLD_SEGMENTER,
    RANDOM_SEGMENTER,
    Segmenter,
)
from geosurge.tracking.registry import log_and_register
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.segmenter import train_geoworld_segmenter
from geosurge.train.trainer import consolidated_state_dict, train

STAGES = ["geoworld", "segmenter", "geocells", "ingest", "train", "register", "evaluate"]


def stage_keys(config: PipelineConfig) -> dict[str, str]:
    """Each stage's key: the config sections it reads and the keys of the stages it consumes."""
    c = dataclasses.asdict(config)
    k = {"geoworld": stage_key(c["geoworld"], c["data_root"])}
    k["segmenter"] = stage_key(c["segmenter"], c["ingest"]["image_size"], c["ingest"]["label_grid"], k["geoworld"])
    k["geocells"] = stage_key(c["geocells"], k["geoworld"])
    segmenter_key = k["segmenter"] if config.ingest.segmenter == GEOWORLD_SEGMENTER else None
    k["ingest"] = stage_key(c["ingest"], k["geoworld"], k["geocells"], segmenter_key)
    k["train"] = stage_key(c["model"], c["train"], k["ingest"])
    k["register"] = stage_key(c["eval"]["split"], c["eval"]["top_k"], c["tracking"], k["train"])
    k["evaluate"] = stage_key(c["eval"], k["register"])
    return k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any subset of the config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=2")
    parser.add_argument("--force", action="append", default=[], choices=STAGES,
                        help="redo this stage (and so everything after it) even if it is recorded as done")
    args = parser.parse_args(argv)
    config: PipelineConfig = load_config(args.config, args.set)
    if config.ingest.segmenter == GROUND_TRUTH_SEGMENTER:
        parser.error("ingest.segmenter=ground_truth is an oracle for benchmarks: the registered model "
                     "would have no segmenter for new photos")
    started = time.time()
    root, s3 = config.resolved_data_root, config.s3
    keys = stage_keys(config)
    ledger = StageLedger(root, s3)
    print(f"GeoSURGE pipeline '{config.run_name}' (config {config.fingerprint()}); data root {root}")

    done: dict[str, StageRecord] = {}
    for name in STAGES:
        if args.force and STAGES.index(name) >= min(STAGES.index(f) for f in args.force):
            break
        record = ledger.lookup(name, keys[name])
        if record is None:
            break
        done[name] = record
    if len(done) == len(STAGES):
        print("every stage is recorded as done with this config: nothing to do (--force STAGE redoes one)")
        return summarise(config, done, started)

    init_ray(config)
    run = start_mlflow_run(config)
    records = dict(done)

    def run_stage(number: int, name: str, title: str, fn) -> StageRecord:
        print(f"\n=== {number}/{len(STAGES)} {name}: {title} ===", flush=True)
        if name in done:
            print(f"done by an earlier run with the same config (stage key {keys[name]}): skipped", flush=True)
            return done[name]
        t = time.time()
        outputs, summary = fn()
        summary["seconds"] = round(time.time() - t, 1)
        records[name] = ledger.record(name, keys[name], outputs, summary)
        return records[name]

    # -- 1 GeoWorld ---------------------------------------------------------------------------------
    def make_geoworld():
        manifest_uri = generate_geoworld(config.geoworld, storage.join(root, "geoworld"), s3)
        return {"manifest": manifest_uri}, {"images": config.geoworld.num_images}

    manifest_uri = run_stage(1, "geoworld", "synthetic geotagged images", make_geoworld).outputs["manifest"]

    # -- 2 segmenter --------------------------------------------------------------------------------
    segmenter_spec = config.ingest.segmenter

    def make_segmenter():
        if config.ingest.segmenter != GEOWORLD_SEGMENTER:
            return {}, {"spec": config.ingest.segmenter, "trained_here": False}
        folder = str(Path(config.output_dir, "segmenter", keys["segmenter"]).absolute())
        seg_config = dataclasses.replace(config.segmenter, image_size=config.ingest.image_size,
                                         label_grid=config.ingest.label_grid)
        result = train_geoworld_segmenter(manifest_uri, folder, seg_config, s3)  # prints its progress and summary
        mlflow.log_dict(result.to_dict(), "segmenter_metrics.json")
        mlflow.log_metrics({"segmenter_val_miou": result.val.miou, "segmenter_val_pixel_accuracy": result.val.pixel_accuracy,
                            "segmenter_val_grid_accuracy": result.val.grid_accuracy})
        return {"folder": folder}, {"spec": folder, "trained_here": True, "val_miou": result.val.miou,
                                    "majority_baseline_miou": result.majority_baseline.miou}

    segmenter_record = run_stage(2, "segmenter", f"ingest.segmenter={segmenter_spec}", make_segmenter)
    segmenter_spec = segmenter_record.summary["spec"]
    ingest_config = dataclasses.replace(config.ingest, segmenter=segmenter_spec)
    if segmenter_spec == RANDOM_SEGMENTER:
        print("WARNING: the segmenter is a RANDOMLY INITIALISED SegFormer: label maps carry no meaning "
              "(set ingest.segmenter=geoworld to train one here, or a hub id / checkpoint folder).")
    mlflow.set_tags({"segmenter": segmenter_spec, "segmenter_random_init": str(segmenter_spec == RANDOM_SEGMENTER)})

    # -- 3 geocells ---------------------------------------------------------------------------------
    hierarchy_uri = storage.join(root, "geocells.parquet")

    def make_geocells():
        lat, lon = manifest_coordinates(manifest_uri, "train", s3)
        g = config.geocells
        hierarchy = GeocellHierarchy.build(lat, lon, g.tau_max, g.tau_min, g.max_resolution)
        hierarchy.save(hierarchy_uri, s3)
        print(f"{hierarchy} from {len(lat)} training coordinates → {hierarchy_uri}")
        return {"geocells": hierarchy_uri}, {"cells_per_level": list(hierarchy.num_cells)}

    run_stage(3, "geocells", "adaptive H3 hierarchy from the training coordinates", make_geocells)
    hierarchy = GeocellHierarchy.load(hierarchy_uri, s3)
    mlflow.log_params({f"geocells.num_cells.level{i}": n for i, n in enumerate(hierarchy.num_cells)})

    # -- 4 ingest -----------------------------------------------------------------------------------
    ingest_uri = storage.join(root, "ingest")

    def make_shards():
        result = ingest(manifest_uri, ingest_uri, ingest_config, s3, hierarchy=hierarchy)  # prints its summary
        mlflow.log_metrics({"ingest_rows_in": result.rows_in, "ingest_shard_rows": result.shard_rows,
                            "ingest_quarantined": result.quarantined, "ingest_seconds": result.seconds})
        mlflow.log_dict(result.to_dict(), "ingest_report.json")
        return ({"shards": result.shards_uri, "quarantine": result.quarantine_uri},
                {"rows_in": result.rows_in, "shard_rows": result.shard_rows,
                 "quarantined_by_reason": result.quarantined_by_reason})

    shards_uri = run_stage(4, "ingest", "Ray Data fetch → decode → segment → cells → shards", make_shards).outputs["shards"]

    # -- 5 train ------------------------------------------------------------------------------------
    def make_checkpoint():
        # Ray Train resumes a run name's latest checkpoint: a changed config must not resume an older one
        train_config = dataclasses.replace(config, run_name=f"{config.run_name}-{keys['train'][:8]}")
        trained = train(train_config, shards_uri, hierarchy, hierarchy_uri, mlflow_run_id=run.info.run_id)
        print(f"best checkpoint (epoch {trained.metrics.get('epoch')}, val_loss "
              f"{trained.metrics.get('val_loss', float('nan')):.4f}): {trained.checkpoint_path}")
        return {"checkpoint": trained.checkpoint_path}, {
            k: v for k, v in trained.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    tc = config.train
    checkpoint = run_stage(5, "train", f"Ray Train × {tc.num_workers} workers, DeepSpeed ZeRO-{tc.zero_stage}",
                           make_checkpoint).outputs["checkpoint"]

    # -- 6 register ---------------------------------------------------------------------------------
    def make_version():
        model = create_model(config.model, hierarchy)
        state_dict = consolidated_state_dict(checkpoint)
        model.load_state_dict(state_dict)
        split = config.eval.split
        metrics, predictions = evaluate_split(model, shards_uri, split, s3, config.eval.top_k, config.eval.batch_size)
        lat, lon = manifest_coordinates(manifest_uri, "train", s3)
        reference = baseline_metrics(lat, lon, predictions.lat.to_numpy(), predictions.lon.to_numpy())
        mlflow.log_metrics({f"{split}_{k}": float(v) for k, v in metrics.items()})
        mlflow.log_metrics({f"{split}_median_guess_{k}": float(v) for k, v in reference.items()})
        mlflow.log_table(predictions, f"predictions_{split}.json")
        print(format_metrics_table({f"{config.model.name} ({split}, n={metrics['n']:.0f})": metrics,
                                    "median-coordinate guess": reference}))
        segmenter = Segmenter(segmenter_spec, config.ingest.label_grid)
        example_image = read_split(shards_uri, split, s3).take(1)[0]["image"]
        registered = dataclasses.replace(config, ingest=ingest_config)  # the segmenter the model was trained with
        model_uri, version = log_and_register(state_dict, registered, hierarchy, segmenter, example_image)
        print(f"registered {config.tracking.registered_model} version {version} as {model_uri}")
        return {}, {"version": version, "model_uri": model_uri, "mlflow_run_id": run.info.run_id,
                    "metrics": metrics, "median_guess": reference}

    version = run_stage(6, "register", f"evaluate the '{config.eval.split}' split, new version at "
                        f"@{config.tracking.alias}", make_version).summary["version"]
    mlflow.end_run()

    # -- 7 eval job ---------------------------------------------------------------------------------
    def make_decision():
        outcome = run_eval_job(config, f"models:/{config.tracking.registered_model}/{version}")
        print(outcome.table())
        decision = outcome.decision.to_dict() if outcome.decision else {}
        print(f"decision: {decision.get('action')} — {decision.get('reason')}")
        return {}, {"decision": decision, "alias_moved": outcome.alias_moved, "eval_run_id": outcome.run_id}

    run_stage(7, "evaluate", f"version {version} vs @{config.eval.champion_alias} on "
              f"{[b.name for b in config.eval.benchmarks]}", make_decision)
    return summarise(config, records, started)


def summarise(config: PipelineConfig, records: dict[str, StageRecord], started: float) -> int:
    """The final report: counts, metrics, the model version and its aliases, and where everything is."""
    from mlflow.tracking import MlflowClient

    register, ingested = records["register"].summary, records["ingest"].summary
    name = config.tracking.registered_model
    client = MlflowClient(config.resolved_tracking_uri)
    aliases = sorted(client.get_registered_model(name).aliases.items())
    print(f"\n=== done in {time.time() - started:.0f} s ===")
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(ingested["quarantined_by_reason"].items())) or "none"
    print(f"ingest: {ingested['rows_in']} in = {ingested['shard_rows']} in shards + "
          f"{sum(ingested['quarantined_by_reason'].values())} quarantined ({reasons})")
    print(format_metrics_table({f"{config.model.name} v{register['version']} ({config.eval.split})": register["metrics"],
                                "median-coordinate guess": register["median_guess"]}))
    if records["segmenter"].summary["spec"] == RANDOM_SEGMENTER:
        print("(semantic label maps came from a randomly initialised segmenter)")
    decision = records["evaluate"].summary["decision"]
    print(f"promotion: {decision.get('action')} — {decision.get('reason')}")
    print(json.dumps({
        "data_root": config.resolved_data_root,
        "manifest": records["geoworld"].outputs["manifest"],
        "segmenter": records["segmenter"].summary["spec"],
        "geocells": records["geocells"].outputs["geocells"],
        "shards": records["ingest"].outputs["shards"],
        "quarantine": records["ingest"].outputs["quarantine"],
        "checkpoint": records["train"].outputs["checkpoint"],
        "mlflow_tracking_uri": config.resolved_tracking_uri,
        "mlflow_run_id": register["mlflow_run_id"],
        "model": f"{register['model_uri']} (version {register['version']})",
        "aliases": {alias: f"version {v}" for alias, v in aliases},
        "stages": {n: r.key for n, r in records.items()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
