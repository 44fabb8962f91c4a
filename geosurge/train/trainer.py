"""Ray Train `TorchTrainer` with DeepSpeed: the same loop on a laptop's CPUs and on a GPU cluster.

Each epoch trains on the `train` shard (augmented), measures the validation loss on the `val` shard (both read
through Ray Data; a split whose part per worker fits `train.batch_cache_mb` is read once and then served from
the worker's memory, the train rows reshuffled every epoch: `batch_cache.py`), then every rank
`engine.save_checkpoint`s and `ray.train.report(checkpoint=...)`s; Ray merges the ranks' files into one
checkpoint and keeps the best ones by validation loss (and always the latest). Training stops early after
`early_stopping_patience` epochs without a validation gain.

Fault tolerance: a lost worker makes Ray restart the worker group from the latest checkpoint (up to
`train.max_failures` times); a driver started again with the same run name and storage path resumes from it
too (a latest checkpoint that does not read back whole is passed over for the one before: `checkpoints.py`).
The checkpoint's client state carries the epoch, the optimizer step counter and the early-stopping state.
Checkpoints live under `train.storage_path` (default: `<data_root>/checkpoints` when the data root is on S3, else
`<output_dir>/ray_results`); `s3://…` goes through our S3 filesystem, so every node sees the checkpoints without a
shared file system.

The loop each worker runs is `geosurge.train.worker`; this module is the driver's side.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tempfile
import warnings
from dataclasses import dataclass

import pyarrow.fs as pafs
import ray
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from geosurge import storage
from geosurge.config import PipelineConfig
from geosurge.data.shards import decoded_bytes_per_row, model_dataset, split_rows
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.layout import DataRoot, RunFolder
from geosurge.train.augment import augmented
from geosurge.train.batch_cache import split_fits
from geosurge.train.worker import (
    TrainState,
    deepspeed_config,
    train_loop_per_worker,
)

__all__ = ["SCORE_METRIC", "TrainResult", "TrainState", "build_trainer",
           "consolidated_state_dict", "data_config", "deepspeed_config", "train"]

SCORE_METRIC = "val_loss"  # checkpoints are ranked by it (lowest first)


@dataclass
class TrainResult:
    checkpoint_path: str  # the best checkpoint by validation loss (the latest when there is no val split)
    metrics: dict  # the best checkpoint's metrics, with `final_*` entries from the latest report
    latest_checkpoint_path: str = ""


def build_trainer(
    config: PipelineConfig,
    shards_uri: str,
    hierarchy: GeocellHierarchy,
    hierarchy_uri: str,
    mlflow_run_id: str | None = None,
) -> tuple[TorchTrainer, bool]:
    """The `TorchTrainer` `train` fits, and whether it validates. Everything in it travels to Ray (the loop config
    is shown by the dashboard's train-run API): it holds no secret. Workers take S3 keys from their own AWS chain."""
    tc = config.train
    val_rows = split_rows(shards_uri, tc.val_split, config.s3) if tc.val_split else 0
    # Ray splits the val set into equal parts, one per worker (dropping the remainder): fewer rows than workers
    # would leave every part empty.
    has_val = val_rows >= tc.num_workers
    if not has_val:
        warnings.warn(f"split {tc.val_split!r} has {val_rows} rows for {tc.num_workers} workers: no validation, "
                      "no early stopping; the latest checkpoint is the result", stacklevel=3)
    # A train split whose worker parts fit the batch cache is augmented by the workers (on cached batches, afresh
    # every epoch); a larger one streams through Ray Data's augmentation, which overlaps the model's steps.
    augment_in_worker = tc.augment.enabled and split_fits(
        split_rows(shards_uri, "train", config.s3), tc.num_workers,
        decoded_bytes_per_row(config.ingest.image_size, config.ingest.label_grid, hierarchy.num_levels),
        tc.batch_cache_mb * 2**20)
    train_ds = model_dataset(shards_uri, "train", hierarchy, config.s3)
    datasets = {"train": train_ds if augment_in_worker else augmented(train_ds, tc.augment)}
    if has_val:
        datasets["val"] = model_dataset(shards_uri, tc.val_split, hierarchy, config.s3)
    worker_config = dataclasses.replace(config, s3=config.s3.without_secrets())
    storage_path, storage_filesystem = checkpoint_storage(config)
    unshared = unshared_checkpoints_warning(checkpoint_root(config), alive_nodes())
    if unshared:
        warnings.warn(unshared, stacklevel=3)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": worker_config.to_dict(redact_secrets=False),
            "hierarchy_uri": hierarchy_uri,
            "mlflow_run_id": mlflow_run_id,
            "mlflow_tracking_uri": config.resolved_tracking_uri,
            "has_val": has_val,
            "augment_in_worker": augment_in_worker,
        },
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers,
            use_gpu=tc.use_gpu,
            resources_per_worker={"CPU": tc.cpus_per_worker},
            placement_strategy=tc.placement_strategy,
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.checkpoints_to_keep,
                checkpoint_score_attribute=SCORE_METRIC if has_val else None,
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=tc.max_failures),
        ),
        datasets=datasets,
        dataset_config=data_config(tc.deterministic_split),
    )
    return trainer, has_val


def data_config(deterministic: bool) -> DataConfig:
    """How Ray Train splits the datasets over the workers. Deterministic: Ray Data's `preserve_order`, so the blocks
    reach the streaming split in the shards' order and each goes to the same worker on every run (without it they go
    in the order their read tasks finish: two demo runs on one machine trained on different rows per worker)."""
    if not deterministic:
        return DataConfig()
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options=options)


def train(
    config: PipelineConfig,
    shards_uri: str,
    hierarchy: GeocellHierarchy,
    hierarchy_uri: str,
    mlflow_run_id: str | None = None,
) -> TrainResult:
    """Fit on the `train` split of the shards, validating on `train.val_split` every epoch; returns the best
    (merged) DeepSpeed checkpoint. A run name whose storage already holds checkpoints resumes from the latest."""
    trainer, has_val = build_trainer(config, shards_uri, hierarchy, hierarchy_uri, mlflow_run_id)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    best, best_metrics = result.checkpoint, dict(result.metrics or {})
    if has_val and result.best_checkpoints:
        # lowest val loss, the later epoch on a tie (Ray's own order, so the one it kept)
        best, best_metrics = min(result.best_checkpoints, key=lambda cm: (cm[1][SCORE_METRIC], -cm[1]["epoch"]))
        best_metrics = dict(best_metrics)
    for key, value in (result.metrics or {}).items():
        best_metrics[f"final_{key}"] = value
    return TrainResult(checkpoint_path=_uri(best, config), metrics=best_metrics,
                       latest_checkpoint_path=_uri(result.checkpoint, config))


def checkpoint_storage(config: PipelineConfig) -> tuple[str, pafs.FileSystem | None]:
    """Where Ray Train keeps the run's checkpoints: (path, filesystem) for its RunConfig. On s3:// (every node sees
    it: no shared file system needed) the filesystem is ours, so custom endpoints (SeaweedFS, MinIO) work; it
    pickles without keys, and each worker reads them from its AWS chain."""
    uri = checkpoint_root(config)
    if storage.is_s3(uri):
        return storage.resolve(uri, config.s3)[1], storage.s3_filesystem(config.s3)
    return uri, None


def checkpoint_root(config: PipelineConfig) -> str:
    """`train.storage_path`; unset: beside the data when the data root is a bucket (the state a cluster shares),
    else the driver's own output folder."""
    if config.train.storage_path:
        return config.train.storage_path
    if storage.is_s3(config.resolved_data_root):
        return DataRoot(config.resolved_data_root).checkpoints
    return RunFolder(config.output_dir).ray_results


def alive_nodes() -> int:
    """The Ray cluster's live nodes (1 before Ray starts: `train` then starts a local one)."""
    return sum(1 for node in ray.nodes() if node.get("Alive")) if ray.is_initialized() else 1


def unshared_checkpoints_warning(root: str, nodes: int) -> str | None:
    """What to tell a user whose checkpoints go to a local folder on a cluster of several nodes: each node would
    write its workers' part to its own disk, and a resume or the registration would find them incomplete, unless the
    folder is one file system mounted at the same path everywhere."""
    if nodes <= 1 or storage.is_s3(root):
        return None
    return (f"checkpoints go to the local folder {root} on a cluster of {nodes} nodes: unless it is one shared file "
            "system mounted at the same path on every node, use an s3:// data_root (checkpoints go beside the data) "
            "or set train.storage_path=s3://…")


def _uri(checkpoint: Checkpoint, config: PipelineConfig) -> str:
    """A checkpoint's location as our storage names it (`s3://bucket/…` on S3, a local path otherwise)."""
    return f"s3://{checkpoint.path}" if storage.is_s3(checkpoint_root(config)) else checkpoint.path


def consolidated_state_dict(checkpoint_path: str, s3: storage.S3Config | None = None) -> dict[str, torch.Tensor]:
    """The model weights, as fp32 tensors, of a DeepSpeed checkpoint of any ZeRO stage (bf16 at stage 0: the bf16
    weights widened): a local folder, or an s3:// one (copied to a temporary folder first)."""
    if not storage.is_s3(checkpoint_path):
        return _fp32_state_dict(checkpoint_path)
    fs, path = storage.resolve(checkpoint_path, s3)
    with tempfile.TemporaryDirectory() as local:
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return _fp32_state_dict(local)


def _fp32_state_dict(folder: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_file = os.path.join(folder, "latest")  # the engine's pointer to the tag (sub-folder) it saved last
    if not os.path.isfile(tag_file):
        raise FileNotFoundError(f"{folder} is not a DeepSpeed checkpoint: it has no 'latest' file")
    with open(tag_file) as f:
        tag = os.path.join(folder, f.read().strip())
    if glob.glob(os.path.join(tag, "*_optim_states.pt")):  # ZeRO 1-3: the fp32 weights are in the partitions
        return get_fp32_state_dict_from_zero_checkpoint(folder)
    # ZeRO-0 partitions nothing: the engine saved the whole model in its model-states file (our own trainer's, so its
    # pickled extras are trusted as DeepSpeed's own loader trusts them); under bf16 that is the bf16 copy the model
    # computed with, widened here (its fp32 master weights sit in the optimizer's flat groups, without names)
    states = torch.load(os.path.join(tag, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    return {name: tensor.float() for name, tensor in states["module"].items()}
