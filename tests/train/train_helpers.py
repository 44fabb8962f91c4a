"""Helpers of the training tests (imported as `tests.train.train_helpers`)."""

import time
from pathlib import Path

import pyarrow.fs as pafs

from geosurge import storage
from geosurge.config import PipelineConfig, load_config
from geosurge.storage import S3Config

# A model small enough that an epoch over ~160 images takes about a second on one core.
SMALL_MODEL = ["model.backbone_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 48, num_heads: 2}",
               "model.embed_dim=16", "model.fusion_heads=2", "model.fusion_blocks=1"]


def small_run_overrides(output_dir: Path, *overrides: str) -> list[str]:
    """2 CPU workers, ZeRO-2, batch 8 per worker, 3 epochs, per-step metrics every 2 steps; MLflow on sqlite
    under output_dir. Later overrides win."""
    return [f"output_dir={output_dir}", "train.batch_size=8", "train.epochs=3", "train.log_every_n_steps=2",
            *SMALL_MODEL, *overrides]


def small_run_config(output_dir: Path, *overrides: str) -> PipelineConfig:
    return load_config(overrides=small_run_overrides(output_dir, *overrides))


def steps_per_epoch(train_rows: int, config: PipelineConfig) -> int:
    """Optimizer steps per epoch: Ray splits the rows equally over the workers (remainder dropped), each worker
    drops its last partial batch."""
    t = config.train
    return (train_rows // t.num_workers) // t.batch_size // t.gradient_accumulation_steps


def a_checkpoint_is_registered(checkpoints: str, s3: S3Config | None = None) -> bool:
    """Whether Ray Train has registered a checkpoint of any run under `checkpoints`: its checkpoint-manager
    snapshot is written after the upload (a checkpoint folder alone may still be half-copied)."""
    fs, root = storage.resolve(checkpoints, s3)
    files = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return any(f.base_name == "checkpoint_manager_snapshot.json" for f in files)


def wait_for_first_checkpoint(checkpoints: str, s3: S3Config | None = None, timeout_s: float = 300) -> None:
    """Until Ray Train has registered a checkpoint under `checkpoints` (a run's storage folder or prefix)."""
    deadline = time.time() + timeout_s
    while not a_checkpoint_is_registered(checkpoints, s3):
        if time.time() > deadline:
            raise TimeoutError(f"no checkpoint registered under {checkpoints} in {timeout_s} s")
        time.sleep(0.1)
