"""Ray Train `TorchTrainer` with DeepSpeed: the same loop on a laptop's CPUs and on a GPU cluster.

Each epoch ends with a per-rank `engine.save_checkpoint` and `ray.train.report(checkpoint=...)`, which
Ray merges into one checkpoint; a run started again with the same name and storage path resumes from it.
Rank 0 alone talks to MLflow.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from geosurge.config import PipelineConfig, TrainConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model
from geosurge.train.data import read_split, to_model_batch

DEFAULT_EXTENSIONS_DIR = str(Path.home() / ".cache" / "geosurge" / "torch_extensions")


def deepspeed_config(train: TrainConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "optimizer": {"type": "AdamW", "params": {"lr": train.lr, "weight_decay": train.weight_decay}},
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.bf16},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,  # progress is ours to report (MLflow), not DeepSpeed's stdout
    }


def train_loop_per_worker(loop_config: dict) -> None:
    # DeepSpeed JIT-compiles two small C++ ops on first use; a shared cache makes later runs skip it.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR)
    # DeepSpeed calls torch.distributed collectives that torch deprecates; one warning per step drowns the log.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    import deepspeed

    config = PipelineConfig.from_dict(loop_config["config"])
    hierarchy = GeocellHierarchy.load(loop_config["hierarchy_uri"], config.s3)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(config.train.seed)

    model = create_model(config.model, hierarchy)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(config.train),
    )
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume: same run name, same storage → Ray hands back the latest checkpoint
        with checkpoint.as_directory() as ckpt_dir:
            _, client_state = engine.load_checkpoint(ckpt_dir)
        start_epoch = int(client_state["epoch"]) + 1

    mlflow = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from mlflow.tracking import MlflowClient

        mlflow = MlflowClient(loop_config["mlflow_tracking_uri"])
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, config.train.epochs):
        lr = config.train.lr * config.train.lr_decay**epoch
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        started, samples, loss_sum, batches = time.time(), 0, 0.0, 0
        for batch in shard.iter_torch_batches(batch_size=config.train.batch_size, drop_last=True):
            out = engine(batch)
            engine.backward(out["loss"])
            engine.step()
            samples += len(batch["lat"])
            loss_sum += out["loss"].item()
            batches += 1
        seconds = time.time() - started
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(batches, 1),
            "lr": lr,
            "samples_per_s": samples * context.get_world_size() / max(seconds, 1e-9),
        }
        if hasattr(engine.module, "log_temperature"):  # GeoSURGE's learned per-level temperatures
            metrics["temperature_finest"] = float(engine.module.log_temperature[-1].detach().exp())
        with tempfile.TemporaryDirectory() as ckpt_dir:
            engine.save_checkpoint(ckpt_dir, client_state={"epoch": epoch})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(ckpt_dir))
        if mlflow is not None:
            for key, value in metrics.items():
                if key != "epoch":
                    mlflow.log_metric(loop_config["mlflow_run_id"], key, value, step=epoch)
        if rank == 0:
            print(f"[train] epoch {epoch + 1}/{config.train.epochs} loss={metrics['train_loss']:.3f} "
                  f"lr={lr:.2e} {metrics['samples_per_s']:.0f} samples/s", flush=True)


@dataclass
class TrainResult:
    checkpoint_path: str
    metrics: dict


def train(
    config: PipelineConfig,
    shards_uri: str,
    hierarchy: GeocellHierarchy,
    hierarchy_uri: str,
    mlflow_run_id: str | None = None,
) -> TrainResult:
    """Fit on the `train` split of the shards; returns the final (merged) DeepSpeed checkpoint."""
    train_ds = read_split(shards_uri, "train", config.s3).map_batches(
        to_model_batch, fn_kwargs={"hierarchy": hierarchy}, batch_format="pyarrow"
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(redact_secrets=False),
            "hierarchy_uri": hierarchy_uri,
            "mlflow_run_id": mlflow_run_id,
            "mlflow_tracking_uri": config.resolved_tracking_uri,
        },
        scaling_config=ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker},
        ),
        run_config=RunConfig(name=config.run_name, storage_path=str(Path(config.output_dir, "ray_results").absolute())),
        datasets={"train": train_ds},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    return TrainResult(checkpoint_path=result.checkpoint.path, metrics=dict(result.metrics or {}))


def consolidated_state_dict(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """The fp32 model weights of a (possibly ZeRO-partitioned) DeepSpeed checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(checkpoint_path)
