"""`geosurge plan`: what a run of this config costs on a given cluster, stage by stage, before anything starts.

Every figure comes from the per-unit rates of ONE table, `rates.yaml` beside this module: CPU rates measured on our
machine, FLOPs counted by us, GPU throughputs estimated from datasheet peaks and an assumed utilisation (no GPU was
available to measure them). Each stage's time is the slowest of the resources it streams through (download, CPU,
GPU), which is also its bottleneck; GPU-hours are the GPUs the stage holds for that time.

    geosurge plan --config configs/geosurge-mp16.yaml --gpus 8 --gpu h100 --cpus 256
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml

from geosurge.config import PipelineConfig

RATES_FILE = Path(__file__).with_name("rates.yaml")
REFERENCE_SIZE = 336  # the image size the FLOPs and shard bytes in the table were measured at
NO_GPU_SEGMENTERS = ("none", "ground_truth")  # specs that run no model at ingest


@dataclasses.dataclass(frozen=True)
class Rates:
    """The rate table: `value(section, name)` for a rate, `gpu_tflops(gpu)` for a GPU's peak."""

    table: dict

    @classmethod
    def load(cls, path: Path = RATES_FILE) -> Rates:
        return cls(yaml.safe_load(Path(path).read_text()))

    def value(self, section: str, name: str) -> float:
        return float(self.table[section][name]["value"])

    @property
    def gpu_names(self) -> list[str]:
        return sorted(self.table["gpus"])

    def gpu_tflops(self, gpu: str) -> float:
        if gpu not in self.table["gpus"]:
            raise ValueError(f"no rate for GPU {gpu!r}; the table ({RATES_FILE.name}) has {', '.join(self.gpu_names)}")
        return float(self.table["gpus"][gpu]["tflops"])

    def estimates(self) -> list[str]:
        return [f"{section}.{name}" for section, rows in self.table.items() if isinstance(rows, dict)
                for name, row in rows.items() if isinstance(row, dict) and row.get("kind") == "estimate"]


@dataclasses.dataclass(frozen=True)
class Cluster:
    gpus: int
    gpu: str
    cpus: int
    network_gbps: float

    def __post_init__(self):
        if self.gpus < 1 or self.cpus < 1 or self.network_gbps <= 0:
            raise ValueError(f"a cluster needs at least one GPU, one CPU and a network: got --gpus {self.gpus} "
                             f"--cpus {self.cpus} --network-gbps {self.network_gbps}")


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage: its wall time (the slowest limit), the GPU-hours it holds, the bytes it writes."""

    name: str
    limits_h: dict[str, float]  # hours each resource needs for the stage's work, alone
    gpus_held: int
    bytes_written: float
    written: str  # what the bytes are
    note: str = ""

    @property
    def hours(self) -> float:
        return max(self.limits_h.values())

    @property
    def bottleneck(self) -> str:
        return max(self.limits_h, key=self.limits_h.get)

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus_held


@dataclasses.dataclass(frozen=True)
class Plan:
    images: int
    train_images: int
    cluster: Cluster
    stages: list[StagePlan]

    @property
    def hours(self) -> float:
        return sum(s.hours for s in self.stages)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    def stage(self, name: str) -> StagePlan:
        (stage,) = [s for s in self.stages if s.name == name]
        return stage


def _gpu_hours_of(gflop: float, gpus: int, tflops: float, utilisation: float) -> float:
    """Wall hours for `gflop` of work spread over `gpus`, each delivering `tflops` × `utilisation`."""
    return gflop * 1e9 / (gpus * tflops * 1e12 * utilisation) / 3600


def _area(size: int) -> float:
    """Cost of an image of `size` px relative to the table's 336 px (tokens, pixels and JPEG bytes scale by area)."""
    return (size / REFERENCE_SIZE) ** 2


def backbone_params_m(config: PipelineConfig, rates: Rates) -> tuple[float, float]:
    """(all, trainable) million parameters of backbone + fusion blocks: a fusion block costs about a ViT-L block."""
    block = rates.value("flops", "vit_l14_block_params_m")
    fusion = config.model.fusion_blocks * block if config.model.fusion else 0.0
    total = rates.value("flops", "vit_l14_params_m") + fusion
    blocks = config.model.trainable_blocks
    trainable = (total - fusion if blocks is None else blocks * block) + fusion
    return total, trainable


def train_gflop_per_image(config: PipelineConfig, rates: Rates) -> float:
    """Forward through the whole backbone and the fusion blocks, backward (2 × forward) through what trains."""
    block = rates.value("flops", "vit_l14_336_block_forward_gflop")
    forward = rates.value("flops", "vit_l14_336_forward_gflop")
    fusion = config.model.fusion_blocks * block if config.model.fusion else 0.0
    blocks = config.model.trainable_blocks
    backward = 2 * ((forward if blocks is None else blocks * block) + fusion)
    return (forward + fusion + backward) * _area(config.ingest.image_size)


def inference_gflop_per_image(config: PipelineConfig, rates: Rates) -> float:
    block = rates.value("flops", "vit_l14_336_block_forward_gflop")
    fusion = config.model.fusion_blocks * block if config.model.fusion else 0.0
    return (rates.value("flops", "vit_l14_336_forward_gflop") + fusion) * _area(config.ingest.image_size)


def plan_ingest(config: PipelineConfig, cluster: Cluster, rates: Rates, images: int, source_bytes: float) -> StagePlan:
    """Fetch, decode + resize, segment, encode and write shards: a stream, as fast as its slowest resource."""
    per_image_cpu_s = (1 / rates.value("cpu", "decode_resize_per_cpu_s")
                       + 1 / rates.value("cpu", "encode_shard_jpeg_per_cpu_s"))
    limits = {"download": images * source_bytes * 8 / (cluster.network_gbps * 1e9) / 3600,
              "cpu decode": images * per_image_cpu_s / cluster.cpus / 3600}
    gpus, note = 0, ""
    if config.ingest.segmenter not in NO_GPU_SEGMENTERS:
        wanted = max(1, round(config.ingest.segment_actors * config.ingest.gpus_per_segment_actor))
        gpus = min(wanted, cluster.gpus)
        gflop = images * rates.value("flops", "oneformer_swin_l_336_forward_gflop") * _area(config.ingest.image_size)
        limits["gpu segment"] = _gpu_hours_of(gflop, gpus, rates.gpu_tflops(cluster.gpu),
                                              rates.value("utilisation", "segment"))
        if gpus < cluster.gpus:
            note = (f"segments on {gpus} of {cluster.gpus} GPUs: raise ingest.segment_actors "
                    f"(× gpus_per_segment_actor={config.ingest.gpus_per_segment_actor:g}) to use them all")
    shard_bytes = images * rates.value("data", "shard_bytes_per_image") * _area(config.ingest.image_size)
    return StagePlan("ingest+segment", limits, gpus, shard_bytes, "shards", note)


def plan_geocells(config: PipelineConfig, rates: Rates, train_images: int) -> StagePlan:
    """One process on one core builds the hierarchy from the training coordinates (no GPU)."""
    seconds = train_images / 1e6 * rates.value("cpu", "geocells_build_s_per_million_images")
    cells = train_images / 1e6 * rates.value("data", "geocells_per_million_images")
    row_bytes = rates.value("data", "geocell_row_bytes")
    return StagePlan("geocells", {"cpu": seconds / 3600}, 0, cells * row_bytes, "geocells.parquet")


def checkpoint_bytes(config: PipelineConfig, rates: Rates, train_images: int) -> float:
    """A DeepSpeed checkpoint: every weight in bf16 (2 B) + fp32 master and two Adam moments of what trains (12 B)."""
    total_m, trainable_m = backbone_params_m(config, rates)
    cells = train_images / 1e6 * rates.value("data", "geocells_per_million_images") * config.model.embed_dim
    return (total_m * 1e6 + cells) * 2 + (trainable_m * 1e6 + cells) * 12


def plan_train(config: PipelineConfig, cluster: Cluster, rates: Rates, train_images: int, val_images: int) -> StagePlan:
    """`train.epochs` epochs (early stopping may end it sooner) on `train.num_workers` GPUs; validation every epoch."""
    workers = config.train.num_workers
    if workers > cluster.gpus:
        raise ValueError(f"train.num_workers={workers} needs {workers} GPUs and the cluster has {cluster.gpus}: "
                         f"--set train.num_workers={cluster.gpus} (and train.gradient_accumulation_steps to keep "
                         "the global batch), or plan a bigger cluster")
    epochs = config.train.epochs
    gflop = epochs * (train_images * train_gflop_per_image(config, rates)
                      + val_images * inference_gflop_per_image(config, rates))
    loader_cpu_s = epochs * (train_images + val_images) / rates.value("cpu", "decode_shard_jpeg_per_cpu_s")
    limits = {"gpu train": _gpu_hours_of(gflop, workers, rates.gpu_tflops(cluster.gpu),
                                         rates.value("utilisation", "train")),
              "cpu loader": loader_cpu_s / cluster.cpus / 3600}
    kept = config.train.checkpoints_to_keep + 1
    one = checkpoint_bytes(config, rates, train_images)
    note = f"up to {epochs} epochs; one checkpoint {_human_bytes(one)}, {kept} kept ({_human_bytes(kept * one)})"
    return StagePlan(f"train ({epochs} epochs)", limits, workers, epochs * one, "checkpoints", note)


def benchmark_images(config: PipelineConfig, rates: Rates) -> int:
    sizes = rates.table["benchmarks"]
    return sum(int(sizes.get(b.name, sizes["default"])["images"]) for b in config.eval.benchmarks)


def plan_eval(config: PipelineConfig, cluster: Cluster, rates: Rates, eval_images: int) -> StagePlan:
    """Challenger and champion on every benchmark (ten crops each when eval.ten_crop), segmenting each image once."""
    crops = 10 if config.eval.ten_crop else 1
    gflop = eval_images * (2 * crops * inference_gflop_per_image(config, rates)
                           + rates.value("flops", "oneformer_swin_l_336_forward_gflop") * _area(config.ingest.image_size))
    gpus = min(cluster.gpus, max(1, round(config.eval.actors * config.eval.gpus_per_actor)))
    limits = {"gpu inference": _gpu_hours_of(gflop, gpus, rates.gpu_tflops(cluster.gpu),
                                             rates.value("utilisation", "evaluate"))}
    written = eval_images * 2 * rates.value("data", "prediction_row_bytes")
    return StagePlan("eval", limits, gpus, written, "prediction tables", f"{eval_images:,} images, 2 models")


def plan_pipeline(config: PipelineConfig, cluster: Cluster, rates: Rates, images: int,
                  source_bytes: float | None = None) -> Plan:
    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    rates.gpu_tflops(cluster.gpu)  # an unknown GPU fails here, before any arithmetic
    val_images = round(images * config.data.val_fraction)
    train_images = images - val_images
    source = rates.value("data", "source_bytes_per_image") if source_bytes is None else source_bytes
    stages = [plan_ingest(config, cluster, rates, images, source),
              plan_geocells(config, rates, train_images),
              plan_train(config, cluster, rates, train_images, val_images),
              plan_eval(config, cluster, rates, benchmark_images(config, rates))]
    return Plan(images, train_images, cluster, stages)


def paper_comparison(config: PipelineConfig, rates: Rates, images: int) -> tuple[float, float]:
    """(our estimate of training hours on the paper's cluster, the paper's hours)."""
    paper = rates.table["paper"]
    cluster = Cluster(int(paper["gpus"]), paper["gpu"], 1_000_000, 1e6)  # CPUs and network never limit here
    val_images = round(images * config.data.val_fraction)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, num_workers=int(paper["gpus"])))
    return plan_train(config, cluster, rates, images - val_images, val_images).hours, float(paper["hours"])


# -- output ------------------------------------------------------------------------------------------------------
def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def format_plan(plan: Plan, config: PipelineConfig, rates: Rates) -> str:
    c = plan.cluster
    lines = [(f"{plan.images:,} images ({plan.train_images:,} train, {plan.images - plan.train_images:,} val) on "
              f"{c.gpus} × {c.gpu}, {c.cpus} CPUs, {c.network_gbps:g} Gbit/s; model {config.model.name} "
              f"({config.model.backbone}) at {config.ingest.image_size} px"),
             "",
             f"{'stage':<22}{'time':>10}{'GPU-h':>9}{'written':>12}  bottleneck (hours each resource needs alone)"]
    for s in plan.stages:
        limits = ", ".join(f"{k} {v:.2f}" for k, v in s.limits_h.items())
        lines.append(f"{s.name:<22}{_hours(s.hours):>10}{s.gpu_hours:>9.1f}{_human_bytes(s.bytes_written):>12}"
                     f"  {s.bottleneck} ({limits})")
        if s.note:
            lines.append(f"{'':<22}  {s.written}; {s.note}")
    total_bytes = _human_bytes(sum(s.bytes_written for s in plan.stages))
    lines += [f"{'total':<22}{_hours(plan.hours):>10}{plan.gpu_hours:>9.1f}{total_bytes:>12}", ""]
    ours, paper = paper_comparison(config, rates, plan.images)
    p = rates.table["paper"]
    lines.append(f"paper: {p['gpus']} × {p['gpu']} trained for {paper:g} h ({p['gpus'] * paper:g} GPU-h); this config's "
                 f"training on {p['gpus']} × {p['gpu']}: {_hours(ours)} by these rates (× {ours / paper:.2f})")
    lines.append(f"rates: {RATES_FILE} (CPU rates and FLOPs measured; estimates: {', '.join(rates.estimates())}, "
                 "and every GPU's throughput, a datasheet peak × an assumed utilisation)")
    return "\n".join(lines)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster to plan for; `--config`/`--set` come from the shared parser."""
    rates = Rates.load()
    parser.add_argument("--gpus", type=int, default=8, help="GPUs in the cluster (default 8)")
    parser.add_argument("--gpu", default="h100", choices=rates.gpu_names, help="GPU model (default h100)")
    parser.add_argument("--cpus", type=int, default=256, help="CPU cores for ingest and data loading (default 256)")
    parser.add_argument("--images", type=int, default=int(rates.value("data", "mp16_images")),
                        help="images in the manifest (default: MP-16's 4.72 M)")
    parser.add_argument("--network-gbps", type=float, default=rates.value("data", "network_gbps"),
                        help="download bandwidth into the cluster, Gbit/s")
    parser.add_argument("--source-kb", type=float, default=rates.value("data", "source_bytes_per_image") / 1000,
                        help="mean size of a source image, KB")


def plan_command(config: PipelineConfig, args: argparse.Namespace) -> int:
    rates = Rates.load()
    try:
        cluster = Cluster(args.gpus, args.gpu, args.cpus, args.network_gbps)
        plan = plan_pipeline(config, cluster, rates, args.images, source_bytes=args.source_kb * 1000)
    except ValueError as e:
        print(f"geosurge plan: {e}")
        return 2
    print(format_plan(plan, config, rates))
    return 0
