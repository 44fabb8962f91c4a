"""The loop every Ray Train worker runs: build the model, resume, then per epoch train → validate → checkpoint.

Tracking: rank 0 alone talks to MLflow. Per-step and per-epoch metrics of an epoch are buffered and written
after that epoch's checkpoint is reported (and carried inside the checkpoint, so a restart writes any that
did not get through); the writer skips (metric, step) pairs already in the run, so a restart never
duplicates a step in the metric history.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import ray.train
import torch
from ray.train import Checkpoint

from geosurge import storage
from geosurge.config import PipelineConfig, TrainConfig
from geosurge.device import device_for
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model
from geosurge.tracking.metrics import MlflowMetricWriter
from geosurge.train.augment import augment_batch
from geosurge.train.batch_cache import EpochBatches
from geosurge.train.checkpoints import agreed_checkpoint, has_optimizer_files
from geosurge.train.deepspeed_ops import use_extensions_cache

# Metric keys: per optimizer step (MLflow step = global optimizer step) and per epoch (MLflow step = epoch).
STEP_METRICS = ("train_loss_step", "samples_per_s_step")
EPOCH_METRICS = ("train_loss", "val_loss", "best_val_loss", "lr", "samples_per_s", "epoch_seconds", "train_cpu_seconds",
                 "global_step", "epochs_without_improvement", "temperature_finest")

Metric = tuple[str, float, int, int]  # (key, value, step, timestamp_ms)


def deepspeed_config(train: TrainConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "optimizer": {"type": "AdamW", "params": {"lr": train.lr, "weight_decay": train.weight_decay}},
        "zero_optimization": {"stage": train.zero_stage,
                              "stage3_param_persistence_threshold": train.zero3_param_persistence_threshold},
        "bf16": {"enabled": train.bf16},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,  # progress is ours to report (MLflow), not DeepSpeed's stdout
    }


def epoch_lr(train: TrainConfig, epoch: int) -> float:
    """The lr of `epoch` once any warm-up is over: `lr × lr_decay^epoch`."""
    return train.lr * train.lr_decay**epoch


def scheduled_lr(train: TrainConfig, epoch: int, step: int) -> float:
    """The lr of optimizer step `step` (counted over the whole run) in `epoch`: `epoch_lr`, ramped up linearly over
    the first `warmup_steps` steps (a from-scratch ViT's first Adam steps at full lr are the unsteady part of a
    short run)."""
    return epoch_lr(train, epoch) * min(1.0, (step + 1) / (train.warmup_steps + 1))


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
    pending_metrics: list[Metric] = field(default_factory=list)

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


def _all_ranks_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum over ranks. Every rank receives the same values, so decisions taken from them agree everywhere."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def validation_loss(engine, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """Mean loss over every rank's validation batches, and the number of images they cover (0: no validation data).

    Every rank runs the same number of forward passes (Ray splits the shard into equal parts), which ZeRO-3's
    per-layer all-gathers need."""
    engine.eval()
    loss_sum, count = torch.zeros((), dtype=torch.float64, device=engine.device), 0
    for batch in batches:
        n = len(batch["lat"])
        loss_sum += engine(batch)["loss"].detach().double() * n
        count += n
    engine.train()
    total, images = _all_ranks_sum([float(loss_sum), float(count)], engine.device)
    return (total / images if images else math.nan), int(images)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker."""
    TrainWorker(loop_config).fit()


class TrainWorker:
    """One Ray Train worker: its DeepSpeed engine, its data shards, the run state and (rank 0) the metric writer."""

    def __init__(self, loop_config: dict):
        use_extensions_cache()  # DeepSpeed's C++ ops, compiled once per machine (`geosurge build-ops`)
        # DeepSpeed calls torch.distributed collectives that torch deprecates; one warning per step drowns the log.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        self.config = PipelineConfig.from_dict(loop_config["config"])
        self.tc = self.config.train
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = device_for(self.tc.use_gpu)  # train.use_gpu and no GPU here: a clear error, not a CPU run
        torch.manual_seed(self.tc.seed)
        self.engine = self._engine(GeocellHierarchy.load(loop_config["hierarchy_uri"], self.config.s3))
        # a corrupt latest checkpoint: the one before
        checkpoint = agreed_checkpoint(ray.train.get_checkpoint(), self.rank,
                                       has_optimizer_files(self.tc.zero_stage))
        self.state = self._resume(checkpoint) if checkpoint else TrainState()
        self.writer = None
        if self.rank == 0 and loop_config.get("mlflow_run_id"):
            self.writer = MlflowMetricWriter(loop_config["mlflow_tracking_uri"], loop_config["mlflow_run_id"],
                                             STEP_METRICS + EPOCH_METRICS)
            self.writer.write(self.state.pending_metrics)  # the resumed checkpoint's epoch, if it did not get through
            if checkpoint:
                self.writer.record_resume(self.state.epoch)
        self.state.pending_metrics = []
        budget = self.tc.batch_cache_mb * 2**20
        augment_here = loop_config.get("augment_in_worker", False)
        # the first epoch this worker runs is in the seeds: a resumed run deals new orders and draws new
        # augmentations, not the first ones again
        first_epoch = self.state.epoch + 1
        augment_rng = np.random.default_rng([self.tc.seed, self.rank, first_epoch, 1])  # 1: not the shuffle's stream
        # a train split that Ray Data augments is streamed every epoch: caching it would freeze one augmentation
        self.train_batches = EpochBatches(
            ray.train.get_dataset_shard("train"), self.tc.batch_size, drop_last=True, device=self.engine.device,
            budget_bytes=budget if augment_here or not self.tc.augment.enabled else 0,
            transform=functools.partial(augment_batch, config=self.tc.augment, rng=augment_rng) if augment_here
            else None,
            shuffle_seed=[self.tc.seed, self.rank, first_epoch],
            shuffle_buffer_rows=self.tc.shuffle_buffer_rows)
        self.val_batches = EpochBatches(
            ray.train.get_dataset_shard("val"), self.tc.batch_size, drop_last=False, device=self.engine.device,
            budget_bytes=budget) if loop_config["has_val"] else None

    def _engine(self, hierarchy: GeocellHierarchy):
        import deepspeed

        # fine-tuning starts from its own weights: no hub or pretrained-file read first
        pretrained = False if self.tc.init_weights else None
        model = create_model(self.config.model, hierarchy, s3=self.config.s3, pretrained=pretrained)
        if self.tc.init_weights:
            state_dict = torch.load(io.BytesIO(storage.read_bytes(self.tc.init_weights, self.config.s3)),
                                    map_location="cpu", weights_only=True)
            model.load_state_dict(state_dict)  # strict: fine-tuning needs the same architecture and geocells
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(self.tc),
        )
        return engine

    def _resume(self, checkpoint: Checkpoint) -> TrainState:
        """A restarted worker group, or the same run name started again: continue from the latest checkpoint."""
        with checkpoint.as_directory() as ckpt_dir:
            _, client_state = self.engine.load_checkpoint(ckpt_dir)
        state = TrainState.from_client_state(client_state)
        if self.engine.global_steps != state.global_step:
            raise RuntimeError(f"checkpoint of epoch {state.epoch}: DeepSpeed restored step {self.engine.global_steps}, "
                               f"the run state says {state.global_step}")
        if self.rank == 0:
            print(f"[train] resumed after epoch {state.epoch} at optimizer step {state.global_step}", flush=True)
        return state

    def fit(self) -> None:
        tc, state = self.tc, self.state
        for epoch in range(state.epoch + 1, tc.epochs):
            if state.stopped_early:
                break
            metrics, pending = self._epoch(epoch)
            self._checkpoint(metrics, pending)
        if state.stopped_early and self.rank == 0:
            print(f"[train] early stop after epoch {state.epoch}: no val gain for {state.epochs_without_improvement} "
                  f"epochs; best epoch {state.best_epoch} (val_loss {state.best_val_loss:.4f})", flush=True)
        if self.writer is not None:
            self.writer.set_tags({"train.best_epoch": str(state.best_epoch),
                                  "train.stopped_early": str(state.stopped_early),
                                  "train.last_epoch": str(state.epoch)})

    def _epoch(self, epoch: int) -> tuple[dict, list[Metric]]:
        """Train one epoch, then validate; returns the epoch's metrics and rank 0's buffered step metrics."""
        tc, engine, state = self.tc, self.engine, self.state
        lr = epoch_lr(tc, epoch)  # logged as the epoch's lr
        self._set_lr(lr)
        pending: list[Metric] = []
        started = window_start = time.time()
        cpu_started = time.process_time()  # this worker's CPU time (all its threads: compute, data prefetch, gloo)
        loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)  # summed on device: no sync per step
        window_loss = torch.zeros_like(loss_sum)
        samples = window_samples = window_batches = batches = 0
        for batch in self.train_batches:
            steps_before = engine.global_steps
            if 0 < tc.warmup_steps and steps_before <= tc.warmup_steps:  # the warm-up's ramp, then the epoch's lr
                self._set_lr(scheduled_lr(tc, epoch, steps_before))
            loss = engine(batch)["loss"]
            engine.backward(loss)
            engine.step()
            n = len(batch["lat"])
            loss_sum += loss.detach().double()
            window_loss += loss.detach().double()
            samples, window_samples, batches, window_batches = samples + n, window_samples + n, batches + 1, window_batches + 1
            stepped = engine.global_steps != steps_before  # an optimizer step (end of gradient accumulation)
            if self.rank == 0 and stepped and engine.global_steps % tc.log_every_n_steps == 0:
                now = time.time()
                pending.append(("train_loss_step", float(window_loss) / window_batches, engine.global_steps, int(now * 1000)))
                pending.append(("samples_per_s_step", window_samples * self.world_size / max(now - window_start, 1e-9),
                                engine.global_steps, int(now * 1000)))
                window_loss.zero_()
                window_samples = window_batches = 0
                window_start = now
        seconds = time.time() - started
        train_loss_total, train_batches, cpu_seconds = _all_ranks_sum(
            [float(loss_sum), float(batches), time.process_time() - cpu_started], engine.device)
        val_loss, val_images = (validation_loss(engine, self.val_batches) if self.val_batches is not None
                                else (math.nan, 0))
        self._settle_batch_caches()
        state.epoch, state.global_step = epoch, engine.global_steps
        if val_images:
            state.update(val_loss, epoch, tc.early_stopping_patience, tc.early_stopping_min_delta)
        metrics = {
            "epoch": epoch,
            "global_step": engine.global_steps,
            "train_loss": train_loss_total / max(train_batches, 1),
            "lr": lr,
            "samples_per_s": samples * self.world_size / max(seconds, 1e-9),
            "epoch_seconds": seconds,
            "train_cpu_seconds": cpu_seconds,  # summed over workers: samples per CPU-second, whatever the load
        }
        if val_images:
            metrics.update(val_loss=val_loss, best_val_loss=state.best_val_loss, best_epoch=state.best_epoch,
                           epochs_without_improvement=state.epochs_without_improvement,
                           stopped_early=state.stopped_early)
        if hasattr(engine.module, "log_temperature"):  # GeoSURGE's learned per-level temperatures
            import deepspeed

            log_temperature = engine.module.log_temperature
            # ZeRO-3 holds a slice of it on each rank: gather it whole (every rank takes part) to read it
            with deepspeed.zero.GatheredParameters([log_temperature], enabled=tc.zero_stage == 3):
                metrics["temperature_finest"] = float(log_temperature[-1].detach().exp())
        return metrics, pending

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _settle_batch_caches(self) -> None:
        """After the first epoch: keep the splits every rank holds whole in memory, stream the others."""
        pending = [b for b in (self.train_batches, self.val_batches) if b is not None and b.pending]
        if not pending:
            return
        holding = _all_ranks_sum([float(b.holds_whole_part) for b in pending], self.engine.device)
        for batches, ranks in zip(pending, holding):
            batches.agree(ranks == self.world_size)
        if self.rank == 0:
            kept = [f"{name} {b.cached_bytes / 2**20:.2f} MiB" for name, b in
                    (("train", self.train_batches), ("val", self.val_batches)) if b is not None and b.in_memory]
            print(f"[train] splits served from memory from now on: {', '.join(kept) or 'none'} "
                  f"(train.batch_cache_mb={self.tc.batch_cache_mb} per split; train rows reshuffled every epoch)",
                  flush=True)

    def _checkpoint(self, metrics: dict, pending: list[Metric]) -> None:
        """Every rank saves and reports the epoch's checkpoint; only then does rank 0 write the epoch's metrics."""
        state, epoch = self.state, metrics["epoch"]
        if self.rank == 0:
            now = int(time.time() * 1000)
            pending += [(k, float(v), epoch, now) for k, v in metrics.items() if k in EPOCH_METRICS]
            state.pending_metrics = pending
        with tempfile.TemporaryDirectory() as ckpt_dir:
            self.engine.save_checkpoint(ckpt_dir, client_state=dataclasses.asdict(state))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(ckpt_dir))
        state.pending_metrics = []
        if self.writer is not None:  # only now: a replay of this epoch would log its steps a second time
            self.writer.write(pending)
        if self.rank == 0:
            val = f" val_loss={metrics['val_loss']:.3f}" if "val_loss" in metrics else ""
            print(f"[train] epoch {epoch + 1}/{self.tc.epochs} step {self.engine.global_steps} "
                  f"loss={metrics['train_loss']:.3f}{val} lr={metrics['lr']:.2e} "
                  f"{metrics['samples_per_s']:.0f} samples/s", flush=True)
