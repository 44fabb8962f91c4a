"""Benchmark: throughput of the Ray Train + DeepSpeed training loop against a bare single-process PyTorch loop.

    python benchmarks/train_overhead.py [--images 1500] [--epochs 3] [--workers 2] [--batch-size 32] [--stream-too]
        [--variant train.zero_stage=1 ...]

Both sides, in one run: the same model (the run config's default GeoSURGE), the same GeoWorld train split
(ingested once, ground-truth label maps), the same batch size per process, AdamW with the same lr, weight
decay and gradient clipping, and the same number of optimizer steps per process.

  bare: the train split decoded once into memory, one process, `torch.set_num_threads(cores)`, a plain
        forward / backward / clip / AdamW step loop (after 2 warm-up steps);
  Ray:  the pipeline's own `geosurge.train.trainer.train` (TorchTrainer, `--workers` workers × 1 CPU, DeepSpeed
        ZeRO-2 on gloo) on its defaults: shards streamed and JPEG-decoded by Ray Data in the first epoch, then
        served from each worker's batch cache (`train.batch_cache_mb`). With `--stream-too` the same fit runs a
        second time with `train.batch_cache_mb=0` (Ray Data reads and decodes every epoch, its rows mixed in the
        default `train.shuffle_buffer_rows`), side by side; each `--variant KEY=VALUE[;KEY=VALUE]` fits once more
        with those overrides (another ZeRO stage, say), side by side too.
        Its figure is the trainer's own per-epoch `samples_per_s` (the training loop of each epoch: data wait,
        forward, backward, gradient all-reduce, optimizer), averaged over the epochs after the first (DeepSpeed
        and Ray Data warm-up). Augmentation and validation are off so both sides do the same work; the
        end-to-end fit time (worker start, checkpoints) is printed too.

Cores: the Ray loop uses `--workers` workers with one torch thread each, and its Ray Data feeding tasks run on
the same cores. The bare loop runs twice, with 1 torch thread and with `--workers` threads. The per-core ratio is
(Ray samples/s per core) / (bare samples/s per core, the better of its two), against a 0.85 target. The
machine may be shared, so samples per CPU-second are printed too: the Ray workers' own CPU time (the trainer's
`train_cpu_seconds`), the CPU time of every process of the Ray run over the measured epochs, and the bare
process's CPU time. Each fit also prints where the cores went over its measured epochs: the training workers, each
of Ray's processes by title, this driver, the rest of the machine, and the cores left idle.
Shards are generated into --out once and reused by later runs (delete --out after changing --images).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

# the sibling benchmark module (benchmarks/ is on sys.path when a script there runs)
from process_cpu import CpuSnapshot, cores_by_process, print_cores

from geosurge import storage
from geosurge.config import load_config
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import ingest
from geosurge.data.shards import read_split, split_rows, to_model_batch
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model
from geosurge.runtime import init_ray
from geosurge.segmentation import GROUND_TRUTH_SEGMENTER
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import train

TARGET_PER_CORE_RATIO = 0.85


def bare_loop(config, hierarchy, shards_uri: str, steps: int, threads: int) -> tuple[float, float]:
    """A plain PyTorch loop over the train split held decoded in memory, `steps` AdamW steps: (samples/s,
    samples per CPU-second of the process)."""
    torch.set_num_threads(threads)
    torch.manual_seed(config.train.seed)
    model = create_model(config.model, hierarchy).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.train.lr, weight_decay=config.train.weight_decay)
    batches = []
    for table in read_split(shards_uri, "train", config.s3).iter_batches(
            batch_size=config.train.batch_size, batch_format="pyarrow", drop_last=True):
        batches.append({k: torch.from_numpy(v) for k, v in to_model_batch(table, hierarchy).items()})

    def one_step(batch):
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # DeepSpeed's gradient_clipping=1.0
        optimizer.step()

    for i in range(2):
        one_step(batches[i % len(batches)])
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(steps):
        one_step(batches[i % len(batches)])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    samples = steps * config.train.batch_size
    return samples / seconds, samples / cpu_seconds


class RayCpuMeter(threading.Thread):
    """CPU seconds of the Ray run's processes, sampled every 0.5 s and kept per process (workers exit when the
    fit ends): from the moment the first epoch's metrics reach MLflow (warm-up over) to the end of the fit, and,
    for the breakdown, from that moment to the moment the last epoch's metrics arrive (the measured epochs only,
    no teardown), by process title, beside this driver process and the whole machine's busy time."""

    def __init__(self, tracking_uri: str, run_id: str, epochs: int):
        super().__init__(daemon=True)
        self.client, self.run_id, self.epochs = MlflowClient(tracking_uri), run_id, epochs
        self.first: CpuSnapshot | None = None
        self.last: CpuSnapshot | None = None
        self.latest_cpu: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            snapshot = CpuSnapshot.take()
            if self.first is None or self.last is None:
                epochs_logged = len(self.client.get_metric_history(self.run_id, "samples_per_s"))
                if self.first is None and epochs_logged:
                    self.first = snapshot
                if self.last is None and epochs_logged >= self.epochs:
                    self.last = snapshot
            self.latest_cpu.update(snapshot.tree)
            time.sleep(0.5)  # this thread's own CPU (psutil over the tree, MLflow queries) is in the breakdown

    def cpu_seconds(self) -> float:
        self.stop.set()
        self.join()
        if self.first is None:
            return float("nan")
        start = self.first.tree
        return sum(cpu - start.get(pid, ("", 0.0))[1] for pid, (_, cpu) in self.latest_cpu.items())

    def breakdown(self) -> tuple[float, dict[str, float]]:
        """(seconds, {title: cores}) over the measured epochs: each title's CPU seconds / wall seconds, plus this
        driver (it calls the fit and runs this meter), everything else on the machine and the idle cores."""
        if self.first is None or self.last is None:
            return float("nan"), {}
        return cores_by_process(self.first, self.last, driver="this driver process (the fit's caller, this meter)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="GeoWorld images (80%% train)")
    parser.add_argument("--epochs", type=int, default=3, help="Ray epochs; the first is warm-up")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers = bare-loop torch threads = cores")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="runs/train_overhead")  # its MLflow run lands in <out>/mlflow.db
    parser.add_argument("--stream-too", action="store_true",
                        help="also fit with train.batch_cache_mb=0 (Ray Data every epoch), side by side")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[;KEY=VALUE]",
                        help="also fit with these overrides, side by side (e.g. train.zero_stage=1); repeatable")
    args = parser.parse_args(argv)
    for variant in args.variant:  # the variants share the shards, geocells, batch size and step count
        for kv in filter(None, (kv.strip() for kv in variant.split(";"))):
            if not kv.startswith(("train.", "model.")) or kv.startswith(("train.batch_size", "train.num_workers")):
                parser.error(f"--variant {kv!r}: only train.* (not batch_size, num_workers) and model.* settings vary")
    if len(set(args.variant)) != len(args.variant):
        parser.error("--variant: each variant once")

    out = Path(args.out).absolute()
    base_overrides = [
        f"output_dir={out}", "run_name=train-overhead", f"geoworld.num_images={args.images}",
        f"ingest.segmenter={GROUND_TRUTH_SEGMENTER}", f"train.num_workers={args.workers}", "train.cpus_per_worker=1",
        f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", "train.augment.enabled=false",
        "train.val_split=", "train.early_stopping_patience=null", *args.set]
    config = load_config(overrides=base_overrides)
    root = config.resolved_data_root
    init_ray(config)
    shards_uri = storage.join(root, "ingest", "shards")
    if not split_rows_or_zero(shards_uri, config):
        manifest = generate_geoworld(config.geoworld, storage.join(root, "geoworld"), config.s3, progress=False)
        shards_uri = ingest(manifest, storage.join(root, "ingest"), config.ingest, config.s3).shards_uri
    coords = read_split(shards_uri, "train", config.s3).select_columns(["lat", "lon"]).to_pandas()
    hierarchy = GeocellHierarchy.build(coords.lat.to_numpy(), coords.lon.to_numpy(), config.geocells.tau_max,
                                       config.geocells.tau_min, config.geocells.max_resolution)
    hierarchy_uri = storage.join(root, "geocells.parquet")
    hierarchy.save(hierarchy_uri, config.s3)
    train_rows = len(coords)
    steps_per_epoch = train_rows // args.workers // args.batch_size
    measured_steps = steps_per_epoch * (args.epochs - 1)
    print(f"train split: {train_rows} images; {steps_per_epoch} steps of {args.batch_size} per worker per epoch; "
          f"model {config.model.name} ({config.model.backbone}, {config.model.backbone_kwargs}); "
          f"{os.cpu_count()} cores on this machine", flush=True)

    load_before = os.getloadavg()[0]
    default = f"batch cache (default), ZeRO-{config.train.zero_stage}"
    fits = {default: ray_fit(config, shards_uri, hierarchy, hierarchy_uri, measured_steps, args)}
    if args.stream_too:
        streamed = dataclasses.replace(config, run_name="train-overhead-streamed",
                                       train=dataclasses.replace(config.train, batch_cache_mb=0))
        fits["streamed every epoch"] = ray_fit(streamed, shards_uri, hierarchy, hierarchy_uri, measured_steps, args)
    for i, variant in enumerate(args.variant):
        overrides = [kv.strip() for kv in variant.split(";") if kv.strip()]
        varied = load_config(overrides=[*base_overrides, *overrides, f"run_name=train-overhead-variant{i}"])
        fits[" ".join(overrides)] = ray_fit(varied, shards_uri, hierarchy, hierarchy_uri, measured_steps, args)

    # The bare loop at 1 thread (its best per-core figure on small models) and at `cores` threads (same cores as
    # Ray); the ratio is taken against the better per-core one of the two.
    cores = args.workers
    bare = {threads: bare_loop(config, hierarchy, shards_uri, measured_steps, threads) for threads in sorted({1, cores})}
    best_threads = max(bare, key=lambda t: bare[t][0] / t)
    print(f"\nload average (1 min): {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"(the machine is shared; {os.cpu_count()} cores)")
    bare_cpu = max(per_cpu for _, per_cpu in bare.values())
    for name, fit in fits.items():
        ratio = (fit.samples_per_s / cores) / (bare[best_threads][0] / best_threads)
        print(f"Ray Train + DeepSpeed, {name}: {fit.samples_per_s:7.1f} samples/s on "
              f"{cores} cores = {fit.samples_per_s / cores:6.1f} per core ({args.workers} workers x 1 thread; epochs "
              f"after warm-up: {', '.join(f'{v:.1f}' for v in fit.epochs)}); fit {fit.fit_seconds:.0f} s end to end "
              f"for {args.epochs} epochs")
        print(f"    per CPU-second: {fit.per_worker_cpu:6.1f} samples (training workers' own CPU time); "
              f"{fit.per_tree_cpu:6.1f} samples (every process of this Ray: workers, Ray Data feeding, controller, "
              f"checkpoints, and Ray's own GCS/raylet/dashboard daemons, from the end of epoch 0 to the end of the "
              f"fit)")
        print(f"    per-core ratio Ray / bare ({best_threads} thread(s), the better per core): {ratio:.2f} "
              f"(target >= {TARGET_PER_CORE_RATIO}: {'met' if ratio >= TARGET_PER_CORE_RATIO else 'NOT met'}); "
              f"per-CPU-second ratio (load-independent): {fit.per_worker_cpu / bare_cpu:.2f} training workers only, "
              f"{fit.per_tree_cpu / bare_cpu:.2f} whole Ray run")
        print(f"    where the {os.cpu_count()} cores went over the measured epochs ({fit.window_seconds:.1f} s, of "
              f"which {fit.loop_seconds:.1f} s training loops, the rest checkpoints and reports), in cores:")
        print_cores(fit.cores)
    for threads, (value, per_cpu) in bare.items():
        print(f"bare PyTorch loop, 1 process: {value:7.1f} samples/s on {threads} core(s) = {value / threads:6.1f} "
              f"per core; {per_cpu:6.1f} samples per CPU-second ({threads} torch thread(s), {measured_steps} steps, "
              f"data in memory)")
    return 0


@dataclasses.dataclass
class RayFit:
    epochs: list[float]  # samples/s of each epoch after the first
    per_worker_cpu: float  # samples per CPU-second of the training workers
    per_tree_cpu: float  # samples per CPU-second of every process of this Ray
    fit_seconds: float
    window_seconds: float  # from the first epoch's metrics to the last's: the measured epochs, checkpoints included
    loop_seconds: float  # the training loops within that window (the trainer's epoch_seconds)
    cores: dict[str, float]  # cores used over the window, by process title (RayCpuMeter.breakdown)

    @property
    def samples_per_s(self) -> float:
        return statistics.mean(self.epochs)


def ray_fit(config, shards_uri: str, hierarchy, hierarchy_uri: str, measured_steps: int, args) -> RayFit:
    """One fresh fit through the pipeline's trainer, with its own MLflow run; its figures after the first epoch."""
    shutil.rmtree(Path(config.output_dir) / "ray_results", ignore_errors=True)  # never a resume of the last fit
    run = start_mlflow_run(config)
    meter = RayCpuMeter(config.resolved_tracking_uri, run.info.run_id, config.train.epochs)
    meter.start()
    started = time.time()
    train(config, shards_uri, hierarchy, hierarchy_uri, run.info.run_id)
    fit_seconds = time.time() - started
    tree_cpu = meter.cpu_seconds()
    mlflow.end_run()
    client = MlflowClient(config.resolved_tracking_uri)

    def after_warm_up(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
                if m.step >= 1]

    measured_samples = measured_steps * args.batch_size * args.workers
    window_seconds, cores = meter.breakdown()
    return RayFit(epochs=after_warm_up("samples_per_s"),
                  per_worker_cpu=measured_samples / sum(after_warm_up("train_cpu_seconds")),
                  per_tree_cpu=measured_samples / tree_cpu, fit_seconds=fit_seconds, window_seconds=window_seconds,
                  loop_seconds=sum(after_warm_up("epoch_seconds")), cores=cores)


def split_rows_or_zero(shards_uri: str, config) -> int:
    try:
        return split_rows(shards_uri, "train", config.s3)
    except (FileNotFoundError, OSError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
