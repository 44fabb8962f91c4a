"""Scheduled retraining on new imagery (what `workflows/retrain.py` runs):

lock (one run at a time, in the bucket) → new manifests under `retrain.incoming` since the watermark → ingest
only those (Ray Data; cells from the champion's fixed geocell hierarchy) → fine-tune from `@champion` on all
shards (Ray Train + DeepSpeed) → register a new version as `@challenger` → eval job on the fixed benchmarks →
promote to `@champion` only if better → advance the watermark → release the lock.

Exit codes: 0 done (or nothing new: says so), 75 another retraining run holds the lock (or took it over from this
one, which then stops before writing anything), 1 error.

A run killed after registering and resubmitted does not register again: the version carries an idempotency key
(the new manifests and the training run they name), and the rerun evaluates that version and advances the
watermark. The lock is renewed while the run lives and checked (fencing) before registering, before the champion
alias may move and before the watermark is saved; the watermark is saved only over the version this run read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time

import mlflow
import torch

from geosurge import storage
from geosurge.config import PipelineConfig
from geosurge.layout import DataRoot
from geosurge.models import create_model
from geosurge.orchestration.retraining import (
    EXIT_LOCKED,
    BucketLock,
    IncomingManifest,
    LockHeld,
    LockLost,
    Watermark,
    find_new_manifests,
)
from geosurge.orchestration.steps import (
    evaluate_version,
    header,
    idempotency_key,
    ingest_manifests,
    register_model,
    train_model,
)
from geosurge.runtime import init_ray
from geosurge.serving import GeoLocator
from geosurge.tracking.registry import check_lineage, find_version_by_key, load_locator
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import consolidated_state_dict


def run_retrain(config: PipelineConfig) -> int:
    """One retraining run under the bucket lock; returns the exit code."""
    root = DataRoot(config.resolved_data_root)
    lock = BucketLock(root.retrain_lock, config.retrain.lock_ttl_s, config.s3)
    try:
        lock.acquire()
    except LockHeld as e:
        print(f"another retraining run is in progress, so this one does nothing: {e}", flush=True)
        return EXIT_LOCKED
    try:
        return retrain(config, root, lock)
    except LockLost as e:
        print(f"retrain: this run lost the lock, so it stops here without writing more: {e}", flush=True)
        return EXIT_LOCKED
    except LockHeld as e:  # the eval job's promotion lock: the version stays registered; the next run evaluates it
        print(f"retrain: another eval job is deciding, so this run stops before its eval: {e}", flush=True)
        return EXIT_LOCKED
    finally:
        lock.release()


def retrain_run_name(config: PipelineConfig, new: list[IncomingManifest]) -> str:
    """The training run's name, fixed by the new manifests: a killed run resubmitted for the same new imagery
    resumes its training (and finds the version it registered) instead of starting over."""
    digest = hashlib.sha256(" ".join(m.uri for m in new).encode()).hexdigest()[:8]
    return f"{config.run_name}-retrain-{digest}"


def fine_tune_config(config: PipelineConfig, champion: GeoLocator, new: list[IncomingManifest],
                     init_weights: str) -> PipelineConfig:
    """The run's config for fine-tuning the champion: the model, its input size, segmenter and geocells stay the
    champion's (so versions stay comparable); epochs and lr come from `retrain`; training starts from
    `init_weights`. The run name is fixed by the new manifests, so a killed run resubmitted for the same new
    imagery resumes its training instead of starting over."""
    return dataclasses.replace(
        config,
        run_name=retrain_run_name(config, new),
        model=champion.config.model,
        geocells=champion.config.geocells,
        ingest=dataclasses.replace(config.ingest, image_size=champion.config.ingest.image_size,
                                   label_grid=champion.config.ingest.label_grid,
                                   segmenter=champion.config.ingest.segmenter),
        train=dataclasses.replace(config.train, epochs=config.retrain.epochs, lr=config.retrain.lr,
                                  init_weights=init_weights),
    )


def retrain(config: PipelineConfig, root: DataRoot, lock: BucketLock | None = None) -> int:
    started = time.time()
    s3 = config.s3
    fence = lock.check if lock is not None else (lambda: None)
    incoming = config.retrain.incoming or root.incoming
    watermark = Watermark.load(root.retrain_watermark, s3)
    new = find_new_manifests(incoming, watermark, s3)
    if not new:
        print(f"no new imagery under {incoming} since the watermark ({len(watermark.ingested)} manifest(s) "
              f"ingested before): nothing to do", flush=True)
        return 0
    print(f"{len(new)} new manifest(s) under {incoming}:" + "".join(f"\n  {m.uri}" for m in new), flush=True)

    init_ray(config)
    mlflow.set_tracking_uri(config.resolved_tracking_uri)
    name = config.tracking.registered_model
    work_key = f"retrain|{name}|{retrain_run_name(config, new)}"  # the new manifests and the training run
    earlier = find_version_by_key(name, idempotency_key(work_key))
    if earlier is not None:
        parent = mlflow.MlflowClient().get_model_version(name, earlier).tags.get("retrain.parent_version", "?")
        print(f"version {earlier} (fine-tuned from version {parent}) was registered for these manifests by an "
              "earlier attempt that stopped before advancing the watermark: it is not trained or registered "
              "again; it is evaluated, and the watermark advanced", flush=True)
        run, totals, champion_version, version = None, None, parent, earlier  # the eval job opens its own run
    else:
        run, totals, champion_version, version = _fine_tune_and_register(config, root, new, work_key, fence)

    header("5/5 evaluate challenger vs champion on the fixed benchmarks; promote only if better")
    outcome = evaluate_version(config, version, before_promote=fence)
    mlflow.end_run()

    watermark.advance(new)
    watermark.save(root.retrain_watermark, s3, lock=lock)  # fenced, and only over the version read above
    print(f"\n=== retraining done in {time.time() - started:.0f} s ===")
    print(json.dumps({
        "new_manifests": [m.uri for m in new],
        "new_rows_in": totals.rows_in if totals else None,  # None: ingested by the earlier attempt
        "new_shard_rows": totals.shard_rows if totals else None,
        "parent_version": str(champion_version),
        "new_version": version,
        "promoted": bool(outcome.alias_moved),
        "watermark": root.retrain_watermark,
        "mlflow_run_id": run.info.run_id if run else None,
    }, indent=2))
    return 0


def _fine_tune_and_register(config: PipelineConfig, root: DataRoot, new: list[IncomingManifest], work_key: str,
                            fence) -> tuple:
    """Steps 1–4: load the champion, ingest only the new imagery, fine-tune from the champion's weights and
    register the result. Returns (MLflow run, ingest totals, champion version, new version)."""
    s3, name = config.s3, config.tracking.registered_model
    champion_uri = f"models:/{name}@{config.eval.champion_alias}"
    t = header(f"1/5 load the champion {champion_uri}")
    try:
        champion_version = mlflow.MlflowClient().get_model_version_by_alias(name, config.eval.champion_alias).version
    except mlflow.exceptions.MlflowException as e:
        raise SystemExit(f"retrain: no {champion_uri} in {config.resolved_tracking_uri} to fine-tune from: run "
                         f"workflows/full_pipeline.py first (its eval step names the first champion). ({e.message})")
    check_lineage(name, champion_version)  # only a version this pipeline registered is fine-tuned
    champion = load_locator(f"models:/{name}/{champion_version}")
    hierarchy, hierarchy_uri = champion.hierarchy, root.champion_geocells(champion_version)
    hierarchy.save(hierarchy_uri, s3)
    init_uri = root.champion_weights(champion_version)
    buffer = io.BytesIO()
    torch.save(champion.model.state_dict(), buffer)
    storage.write_bytes(init_uri, buffer.getvalue(), s3)
    config = fine_tune_config(config, champion, new, init_uri)
    print(f"champion version {champion_version}: {config.model.name}, {hierarchy} ({time.time() - t:.1f} s)")

    run = start_mlflow_run(config)
    mlflow.set_tags({"geosurge.job": "retrain", "retrain.parent_version": str(champion_version),
                     "retrain.manifests": json.dumps([m.uri for m in new])[:5000],
                     "segmenter": config.ingest.segmenter, "segmenter_random_init": str(champion.segmenter.is_random)})

    header("2/5 ingest only the new imagery (Ray Data)")
    totals = ingest_manifests([m.uri for m in new], root.ingest, config.ingest, s3, hierarchy, "retrain_new",
                              val_fraction=config.data.val_fraction)

    t = header(f"3/5 fine-tune from version {champion_version} on all shards, {config.train.epochs} epoch(s)")
    trained = train_model(config, totals.shards_uri, hierarchy, hierarchy_uri, run.info.run_id)
    state_dict = consolidated_state_dict(trained.checkpoint_path, s3)
    print(f"checkpoint: {trained.checkpoint_path} ({time.time() - t:.1f} s)")

    header("4/5 register the fine-tuned model as the challenger")
    fence()
    model = create_model(config.model, hierarchy, pretrained=False)  # the bundle keeps what it derives for inference
    model.load_state_dict(state_dict)
    _, version = register_model(state_dict, config, hierarchy, champion.segmenter, totals.shards_uri, "train",
                                tags={"retrain.parent_version": str(champion_version)}, work_key=work_key,
                                checkpoint_uri=trained.checkpoint_path, model=model.eval())
    return run, totals, str(champion_version), version
