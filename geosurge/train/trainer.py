"""Ray Train `TorchTrainer` with DeepSpeed: the same loop on a laptop's CPUs and on a GPU cluster.

Each epoch trains on the streamed `train` shard (augmented), measures the validation loss on the streamed
`val` shard, then every rank `engine.save_checkpoint`s and `ray.train.report(checkpoint=...)`s; Ray merges the
ranks' files into one checkpoint and keeps the best ones by validation loss (and always the latest). Training
stops early after `early_stopping_patience` epochs without a validation gain.

Fault tolerance: a lost worker makes Ray restart the worker group from the latest checkpoint (up to
`train.max_failures` times); a driver started again with the same run name and storage path resumes from it
too. The checkpoint's client state carries the epoch, the optimizer step counter and the early-stopping state.

Tracking: rank 0 alone talks to MLflow. Per-step and per-epoch metrics of an epoch are buffered and written
after that epoch's checkpoint is reported (and carried inside the checkpoint, so a restart writes any that
did not get through); the writer skips (metric, step) pairs already in the run, so a restart never
duplicates a step in the metric history.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from geosurge.config import PipelineConfig, TrainConfig
from geosurge.data import storage
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model
from geosurge.train.data import model_dataset, split_rows

DEFAULT_EXTENSIONS_DIR = str(Path.home() / ".cache" / "geosurge" / "torch_extensions")
# Metric keys: per optimizer step (MLflow step = global optimizer step) and per epoch (MLflow step = epoch).
STEP_METRICS = ("train_loss_step", "samples_per_s_step")
EPOCH_METRICS = ("train_loss", "val_loss", "best_val_loss", "lr", "samples_per_s", "epoch_seconds", "train_cpu_seconds",
                 "global_step", "epochs_without_improvement", "temperature_finest")
SCORE_METRIC = "val_loss"


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


@dataclass
class TrainState:
    """What a resumed run needs beyond the DeepSpeed engine's own state; saved as the checkpoint's client state."""

    epoch: int = -1  # last completed epoch
    global_step: int = 0  # optimizer steps so far (DeepSpeed restores its own counter too; they must agree)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    # rank 0: the checkpointed epoch's metrics as (key, value, step, timestamp_ms), until they are in MLflow
    pending_metrics: list[tuple[str, float, int, int]] = field(default_factory=list)

    @classmethod
    def from_client_state(cls, client_state: dict) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in client_state.items() if k in names})

    def update(self, val_loss: float, epoch: int, patience: int | None, min_delta: float) -> None:
        """Record one epoch's validation loss. The best epoch is the lowest val loss, the later one on a tie (as
        Ray ranks checkpoints); the patience counter restarts only on a gain of more than `min_delta`."""
        gained = val_loss < self.best_val_loss - min_delta
        if val_loss <= self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, epoch
        self.epochs_without_improvement = 0 if gained else self.epochs_without_improvement + 1
        self.stopped_early = bool(patience) and self.epochs_without_improvement >= patience  # None/0: never


class MlflowMetricWriter:
    """Rank 0's MLflow writer. It writes each (metric, step) at most once: steps at or below the last one already
    in the run's history are skipped, so replaying an epoch after a failure never duplicates history."""

    def __init__(self, tracking_uri: str, run_id: str, keys: tuple[str, ...]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.last_step = {k: max((m.step for m in self.client.get_metric_history(run_id, k)), default=-1) for k in keys}

    def write(self, metrics: list[tuple[str, float, int, int]]) -> int:
        """Log (key, value, step, timestamp_ms) rows not yet in the run; returns how many were written."""
        from mlflow.entities import Metric

        fresh = []
        for key, value, step, timestamp in sorted(metrics, key=lambda m: m[2]):
            if step > self.last_step.get(key, -1):
                fresh.append(Metric(key, float(value), int(timestamp), int(step)))
                self.last_step[key] = step
        for start in range(0, len(fresh), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=fresh[start:start + 1000])
        return len(fresh)

    def record_resume(self, after_epoch: int) -> None:
        """Tags that say this run continued from a checkpoint (and how often), e.g. after a lost worker."""
        count = int(self.client.get_run(self.run_id).data.tags.get("train.resume_count", "0")) + 1
        self.set_tags({"train.resume_count": str(count), "train.resumed_after_epoch": str(after_epoch)})

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)


def _all_ranks_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum over ranks. Every rank receives the same values, so decisions taken from them agree everywhere."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def validation_loss(engine, shard, batch_size: int) -> tuple[float, int]:
    """Mean loss over every rank's validation shard, and the number of images it covers (0: no validation data).

    Every rank runs the same number of forward passes (Ray splits the shard into equal parts), which ZeRO-3's
    per-layer all-gathers need."""
    engine.eval()
    loss_sum, count = torch.zeros((), dtype=torch.float64, device=engine.device), 0
    for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=False):
        n = len(batch["lat"])
        loss_sum += engine(batch)["loss"].detach().double() * n
        count += n
    engine.train()
    total, images = _all_ranks_sum([float(loss_sum), float(count)], engine.device)
    return (total / images if images else math.nan), int(images)


def train_loop_per_worker(loop_config: dict) -> None:
    # DeepSpeed JIT-compiles two small C++ ops on first use; a shared cache makes later runs skip it.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR)
    # DeepSpeed calls torch.distributed collectives that torch deprecates; one warning per step drowns the log.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    import deepspeed

    config = PipelineConfig.from_dict(loop_config["config"])
    tc = config.train
    hierarchy = GeocellHierarchy.load(loop_config["hierarchy_uri"], config.s3)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(tc.seed)

    model = create_model(config.model, hierarchy)
    if tc.init_weights:
        state_dict = torch.load(io.BytesIO(storage.read_bytes(tc.init_weights, config.s3)), map_location="cpu",
                                weights_only=True)
        model.load_state_dict(state_dict)  # strict: fine-tuning needs the same architecture and geocells
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(tc),
    )
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group, or the same run name started again: continue from the latest
        with checkpoint.as_directory() as ckpt_dir:
            _, client_state = engine.load_checkpoint(ckpt_dir)
        state = TrainState.from_client_state(client_state)
        if engine.global_steps != state.global_step:
            raise RuntimeError(f"checkpoint of epoch {state.epoch}: DeepSpeed restored step {engine.global_steps}, "
                               f"the run state says {state.global_step}")
        if rank == 0:
            print(f"[train] resumed after epoch {state.epoch} at optimizer step {state.global_step}", flush=True)

    writer = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        writer = MlflowMetricWriter(loop_config["mlflow_tracking_uri"], loop_config["mlflow_run_id"],
                                    STEP_METRICS + EPOCH_METRICS)
        writer.write(state.pending_metrics)  # the resumed checkpoint's epoch, if its metrics did not get through
        if checkpoint:
            writer.record_resume(state.epoch)
    state.pending_metrics = []

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config["has_val"] else None
    for epoch in range(state.epoch + 1, tc.epochs):
        if state.stopped_early:
            break
        lr = tc.lr * tc.lr_decay**epoch
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        pending: list[tuple[str, float, int, int]] = []
        started = window_start = time.time()
        cpu_started = time.process_time()  # this worker's CPU time (all its threads: compute, data prefetch, gloo)
        loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)  # summed on device: no sync per step
        window_loss = torch.zeros_like(loss_sum)
        samples = window_samples = window_batches = batches = 0
        for batch in train_shard.iter_torch_batches(batch_size=tc.batch_size, drop_last=True):
            steps_before = engine.global_steps
            loss = engine(batch)["loss"]
            engine.backward(loss)
            engine.step()
            n = len(batch["lat"])
            loss_sum += loss.detach().double()
            window_loss += loss.detach().double()
            samples, window_samples, batches, window_batches = samples + n, window_samples + n, batches + 1, window_batches + 1
            stepped = engine.global_steps != steps_before  # an optimizer step (end of gradient accumulation)
            if rank == 0 and stepped and engine.global_steps % tc.log_every_n_steps == 0:
                now = time.time()
                pending.append(("train_loss_step", float(window_loss) / window_batches, engine.global_steps, int(now * 1000)))
                pending.append(("samples_per_s_step", window_samples * world_size / max(now - window_start, 1e-9),
                                engine.global_steps, int(now * 1000)))
                window_loss.zero_()
                window_samples = window_batches = 0
                window_start = now
        seconds = time.time() - started
        train_loss_total, train_batches, cpu_seconds = _all_ranks_sum(
            [float(loss_sum), float(batches), time.process_time() - cpu_started], engine.device)
        val_loss, val_images = (validation_loss(engine, val_shard, tc.batch_size) if val_shard is not None
                                else (math.nan, 0))
        state.epoch, state.global_step = epoch, engine.global_steps
        if val_images:
            state.update(val_loss, epoch, tc.early_stopping_patience, tc.early_stopping_min_delta)
        metrics = {
            "epoch": epoch,
            "global_step": engine.global_steps,
            "train_loss": train_loss_total / max(train_batches, 1),
            "lr": lr,
            "samples_per_s": samples * world_size / max(seconds, 1e-9),
            "epoch_seconds": seconds,
            "train_cpu_seconds": cpu_seconds,  # summed over workers: samples per CPU-second, whatever the load
        }
        if val_images:
            metrics.update(val_loss=val_loss, best_val_loss=state.best_val_loss, best_epoch=state.best_epoch,
                           epochs_without_improvement=state.epochs_without_improvement,
                           stopped_early=state.stopped_early)
        if hasattr(engine.module, "log_temperature"):  # GeoSURGE's learned per-level temperatures
            metrics["temperature_finest"] = float(engine.module.log_temperature[-1].detach().exp())
        if rank == 0:
            now = int(time.time() * 1000)
            pending += [(k, float(v), epoch, now) for k, v in metrics.items() if k in EPOCH_METRICS]
            state.pending_metrics = pending
        with tempfile.TemporaryDirectory() as ckpt_dir:
            engine.save_checkpoint(ckpt_dir, client_state=dataclasses.asdict(state))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(ckpt_dir))
        state.pending_metrics = []
        if writer is not None:  # only now: a replay of this epoch would log its steps a second time
            writer.write(pending)
        if rank == 0:
            val = f" val_loss={val_loss:.3f}" if val_images else ""
            print(f"[train] epoch {epoch + 1}/{tc.epochs} step {engine.global_steps} "
                  f"loss={metrics['train_loss']:.3f}{val} lr={lr:.2e} {metrics['samples_per_s']:.0f} samples/s", flush=True)
    if state.stopped_early and rank == 0:
        print(f"[train] early stop after epoch {state.epoch}: no val gain for {state.epochs_without_improvement} "
              f"epochs; best epoch {state.best_epoch} (val_loss {state.best_val_loss:.4f})", flush=True)
    if writer is not None:
        writer.set_tags({"train.best_epoch": str(state.best_epoch), "train.stopped_early": str(state.stopped_early),
                         "train.last_epoch": str(state.epoch)})


@dataclass
class TrainResult:
    checkpoint_path: str  # the best checkpoint by validation loss (the latest when there is no val split)
    metrics: dict  # the best checkpoint's metrics, with `final_*` entries from the latest report
    latest_checkpoint_path: str = ""


def train(
    config: PipelineConfig,
    shards_uri: str,
    hierarchy: GeocellHierarchy,
    hierarchy_uri: str,
    mlflow_run_id: str | None = None,
) -> TrainResult:
    """Fit on the `train` split of the shards, validating on `train.val_split` every epoch; returns the best
    (merged) DeepSpeed checkpoint. A run name whose storage already holds checkpoints resumes from the latest."""
    tc = config.train
    val_rows = split_rows(shards_uri, tc.val_split, config.s3) if tc.val_split else 0
    # Ray splits the val set into equal parts, one per worker (dropping the remainder): fewer rows than workers
    # would leave every part empty.
    has_val = val_rows >= tc.num_workers
    if not has_val:
        warnings.warn(f"split {tc.val_split!r} has {val_rows} rows for {tc.num_workers} workers: no validation, "
                      "no early stopping; the latest checkpoint is the result", stacklevel=2)
    datasets = {"train": model_dataset(shards_uri, "train", hierarchy, config.s3, augment=tc.augment)}
    if has_val:
        datasets["val"] = model_dataset(shards_uri, tc.val_split, hierarchy, config.s3)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(redact_secrets=False),
            "hierarchy_uri": hierarchy_uri,
            "mlflow_run_id": mlflow_run_id,
            "mlflow_tracking_uri": config.resolved_tracking_uri,
            "has_val": has_val,
        },
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers,
            use_gpu=tc.use_gpu,
            resources_per_worker={"CPU": tc.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=str(Path(config.output_dir, "ray_results").absolute()),
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.checkpoints_to_keep,
                checkpoint_score_attribute=SCORE_METRIC if has_val else None,
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=tc.max_failures),
        ),
        datasets=datasets,
    )
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
    return TrainResult(checkpoint_path=best.path, metrics=best_metrics, latest_checkpoint_path=result.checkpoint.path)


def consolidated_state_dict(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """The fp32 model weights of a (possibly ZeRO-partitioned) DeepSpeed checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(checkpoint_path)
