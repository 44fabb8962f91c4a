"""Scheduled retraining on new imagery, as one Ray job (a cron schedule runs it; see infra/kuberay).

    python workflows/retrain.py                      # same config and overrides as full_pipeline.py
    ray job submit --working-dir . -- python workflows/retrain.py --config my.yaml

lock (one run at a time, in the bucket) → new manifests under `retrain.incoming` since the watermark → ingest
only those (Ray Data; cells from the champion's fixed geocell hierarchy) → fine-tune from `@champion` on all
shards (Ray Train + DeepSpeed) → register a new version as `@challenger` → eval job on the fixed benchmarks →
promote to `@champion` only if better → advance the watermark → release the lock.

Exit codes: 0 done (or nothing new: says so), 75 another retraining run holds the lock, 1 error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import time

import mlflow
import torch

from geosurge import storage
from geosurge.config import PipelineConfig, load_config
from geosurge.data.ingest import ingest
from geosurge.data.shards import read_split
from geosurge.eval.job import run_eval_job
from geosurge.orchestration.retraining import (
    BucketLock,
    LockHeld,
    Watermark,
    find_new_manifests,
)
from geosurge.runtime import init_ray
from geosurge.tracking.registry import load_locator, log_and_register
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import consolidated_state_dict, train

EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later


def step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any subset of the config (the pipeline's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. retrain.epochs=1")
    args = parser.parse_args(argv)
    config: PipelineConfig = load_config(args.config, args.set)
    root = config.resolved_data_root
    incoming = config.retrain.incoming or storage.join(root, "incoming")
    state = storage.join(root, "retrain")
    lock = BucketLock(storage.join(state, "lock.json"), config.retrain.lock_ttl_s, config.s3)
    try:
        lock.acquire()
    except LockHeld as e:
        print(f"another retraining run is in progress, so this one does nothing: {e}", flush=True)
        return EXIT_LOCKED
    try:
        return retrain(config, incoming, state)
    finally:
        lock.release()


def retrain(config: PipelineConfig, incoming: str, state: str) -> int:
    started = time.time()
    s3, root = config.s3, config.resolved_data_root
    watermark_uri = storage.join(state, "watermark.json")
    watermark = Watermark.load(watermark_uri, s3)
    new = find_new_manifests(incoming, watermark, s3)
    if not new:
        print(f"no new imagery under {incoming} since the watermark ({len(watermark.ingested)} manifest(s) "
              f"ingested before): nothing to do", flush=True)
        return 0
    print(f"{len(new)} new manifest(s) under {incoming}:" + "".join(f"\n  {m.uri}" for m in new), flush=True)

    init_ray(config)
    mlflow.set_tracking_uri(config.resolved_tracking_uri)
    name = config.tracking.registered_model
    champion_uri = f"models:/{name}@{config.eval.champion_alias}"
    t = step(f"1/5 load the champion {champion_uri}")
    try:
        champion_version = mlflow.MlflowClient().get_model_version_by_alias(name, config.eval.champion_alias).version
    except mlflow.exceptions.MlflowException as e:
        raise SystemExit(f"retrain: no {champion_uri} in {config.resolved_tracking_uri} to fine-tune from: run "
                         f"workflows/full_pipeline.py first (its eval step names the first champion). ({e.message})")
    champion = load_locator(f"models:/{name}/{champion_version}")
    # The model, its input size and the geocells stay the champion's, so versions stay comparable.
    config = dataclasses.replace(
        config,
        # a killed run resubmitted for the same new imagery resumes its training instead of starting over
        run_name=f"{config.run_name}-retrain-{hashlib.sha256(' '.join(m.uri for m in new).encode()).hexdigest()[:8]}",
        model=champion.config.model,
        geocells=champion.config.geocells,
        ingest=dataclasses.replace(config.ingest, image_size=champion.config.ingest.image_size,
                                   label_grid=champion.config.ingest.label_grid,
                                   segmenter=champion.config.ingest.segmenter),
        train=dataclasses.replace(config.train, epochs=config.retrain.epochs, lr=config.retrain.lr),
    )
    hierarchy = champion.hierarchy
    hierarchy_uri = storage.join(state, f"geocells-v{champion_version}.parquet")
    hierarchy.save(hierarchy_uri, s3)
    init_uri = storage.join(state, f"init-v{champion_version}.pt")
    buffer = io.BytesIO()
    torch.save(champion.model.state_dict(), buffer)
    storage.write_bytes(init_uri, buffer.getvalue(), s3)
    config.train.init_weights = init_uri
    print(f"champion version {champion_version}: {config.model.name}, {hierarchy} ({time.time() - t:.1f} s)")

    run = start_mlflow_run(config)
    mlflow.set_tags({"geosurge.job": "retrain", "retrain.parent_version": str(champion_version),
                     "retrain.manifests": json.dumps([m.uri for m in new])[:5000]})

    step("2/5 ingest only the new imagery (Ray Data)")
    ingest_uri = storage.join(root, "ingest")
    rows_in = shard_rows = 0
    for manifest in new:
        result = ingest(manifest.uri, ingest_uri, config.ingest, s3, hierarchy=hierarchy)  # prints its summary
        rows_in, shard_rows = rows_in + result.rows_in, shard_rows + result.shard_rows
    mlflow.log_metrics({"retrain_new_rows_in": rows_in, "retrain_new_shard_rows": shard_rows})
    shards_uri = storage.join(ingest_uri, "shards")

    t = step(f"3/5 fine-tune from version {champion_version} on all shards, {config.train.epochs} epoch(s)")
    trained = train(config, shards_uri, hierarchy, hierarchy_uri, mlflow_run_id=run.info.run_id)
    state_dict = consolidated_state_dict(trained.checkpoint_path)
    print(f"checkpoint: {trained.checkpoint_path} ({time.time() - t:.1f} s)")

    step("4/5 register the fine-tuned model as the challenger")
    example_image = read_split(shards_uri, "train", s3).take(1)[0]["image"]
    model_uri, version = log_and_register(state_dict, config, hierarchy, champion.segmenter, example_image)
    mlflow.MlflowClient().set_model_version_tag(name, version, "retrain.parent_version", str(champion_version))
    print(f"registered {name} version {version} as {model_uri}")

    step("5/5 evaluate challenger vs champion on the fixed benchmarks; promote only if better")
    outcome = run_eval_job(config, f"models:/{name}/{version}")
    print(outcome.table())
    print(f"decision: {outcome.decision.action if outcome.decision else 'none'} — "
          f"{outcome.decision.reason if outcome.decision else ''}")
    mlflow.end_run()

    watermark.advance(new)
    watermark.save(storage.join(state, "watermark.json"), s3)
    print(f"\n=== retraining done in {time.time() - started:.0f} s ===")
    print(json.dumps({
        "new_manifests": [m.uri for m in new],
        "new_rows_in": rows_in,
        "new_shard_rows": shard_rows,
        "parent_version": str(champion_version),
        "new_version": version,
        "promoted": bool(outcome.alias_moved),
        "watermark": watermark_uri,
        "mlflow_run_id": run.info.run_id,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
