"""Helpers of the training tests (imported as `tests.train.train_helpers`)."""

from pathlib import Path

from geosurge.config import PipelineConfig, load_config

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
