"""Benchmark: the pipeline's GPU figures in one table, on one GPU, in under 8 minutes.

    python benchmarks/gpu.py [--out runs/gpu_bench] [--seg-seconds 15] [--train-images 6000] [--train-epochs 3]
                             [--eval-seconds 10] [--set KEY=VALUE ...]
    python benchmarks/gpu.py --smoke      # the CPU check: tiny models, 64 px, a few steps, the same code paths

Every figure goes through the project's own code (no model is re-implemented here); random weights throughout
(the hubs are unreachable and weights do not change speed). The paper's configuration is
configs/geosurge-mp16.yaml, with one GPU and GeoWorld data in place of MP-16.

  segmentation  images/s of `Segmenter.label_maps` (uint8 images on the host → ADE20K label maps on the 24×24
                patch grid back on the host: upload, normalisation, the model under bf16 autocast as
                `geosurge.device` decides on a GPU, pooling, download), batches of `ingest.segment_batch_size`
                at 336 px, for SegFormer-B0 and SegFormer-B5 (published MiT widths and depths) and a OneFormer
                with a Swin-L backbone (embed 192, depths 2-2-18-2, heads 6-12-24-48, window 12, 250 queries).
  train         samples/s of the pipeline's own `geosurge.train.trainer.train`: Ray Train, one worker, one GPU,
                DeepSpeed ZeRO-2 in bf16, the paper's ViT-L/14 at 336 px (last 4 blocks trainable, 3 fusion
                blocks, 768-d cells), batch 128, shards streamed and decoded (and augmented) by Ray Data. The
                figure is the trainer's own per-epoch `samples_per_s` (data wait + forward + backward +
                optimizer, no checkpointing), averaged over the epochs after the first (warm-up: CUDA/DeepSpeed
                init, Ray Data start). A failed bf16 fit is a row with its error; then the same fit runs in
                fp32 for 2 epochs (unless --no-fp32-fallback). Shards: GeoWorld rendered at 336 px, ingested
                once with its ground-truth label maps (`ingest.segmenter=ground_truth`), kept in --out.
  eval          images/s of `GeoLocator.predict_arrays` on the trained model (weights consolidated from the
                DeepSpeed checkpoint), batches of `eval.batch_size`, with the OneFormer Swin-L segmenter above:
                without and with ten-crop (`eval.ten_crop`: the model runs on 10 views, the segmenter once).
                Two more rows wrap the same call in `geosurge.device.autocast(bf16)`, which the library does
                not do for the geo model (it runs in fp32 on a GPU; only the segmenter autocasts).

MFU = achieved FLOP/s ÷ the GPU's peak dense bf16 FLOP/s (table below, by `torch.cuda.get_device_name()`;
unknown GPU or CPU → n/a). FLOPs per image or sample are counted by `torch.utils.flop_counter.FlopCounterMode`
on one real call (matmuls, convolutions, attention; elementwise ops and OneFormer's grid-sample deformable
attention are not counted, so MFU is a lower bound there). Training: the FLOPs of one executed forward +
backward (frozen blocks run no backward), not the 3 × forward convention, which assumes a fully trainable
model; the 3 × forward figure is in the notes. Timed regions start after warm-up calls and are closed by
`torch.cuda.synchronize`. The table is printed at the end and written to <out>/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "configs" / "geosurge-mp16.yaml"
SMOKE = REPO / "configs" / "smoke.yaml"
TARGET_MINUTES = 8.0
# Peak dense bf16 tensor FLOP/s (TFLOP/s, no sparsity) from NVIDIA's data sheets; first substring match of the
# device name wins, so the more specific names come first ("L40S" before "L4", "A100" before anything "A10").
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 836.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("RTX A6000", 154.8), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
)


@dataclass
class Row:
    part: str
    setting: str
    rate: float  # images/s (segmentation, eval) or samples/s (train)
    unit: str
    mfu: float | None  # fraction of the peak; None: n/a
    notes: str
    flops_per_item: float | None = None
    seconds: float = 0.0  # wall time of the part's row, warm-up and set-up included


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, device name or why there is none)."""
    if device.type != "cuda":
        return None, "CPU: no bf16 tensor peak to compare with"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, name
    return None, f"{name}: not in the peak table (PEAK_BF16_TFLOPS)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(fn, items: int, seconds: float, warmup: int, device: torch.device, min_calls: int = 3) -> float:
    """Items/s of `fn` (one call = `items` items) over at least `seconds` and `min_calls` calls, after `warmup`
    calls (allocator, cuDNN/cuBLAS autotuning, lazy caches)."""
    for _ in range(warmup):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync(device)
    return calls * items / (time.perf_counter() - start)


def counted_flops(fn, frozen: tuple[torch.nn.Module, ...] = ()) -> float:
    """FLOPs of one call of `fn`. `frozen`: models whose parameters are set to requires_grad=False meanwhile:
    FlopCounterMode's module tracker fails under no_grad/inference_mode on a module given a parameter as input
    (OneFormer does that), and inference needs no gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for m in frozen for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for p in params:
            p.requires_grad_(True)
    return float(counter.get_total_flops())


def mfu(rate: float, flops_per_item: float | None, peak: float | None) -> float | None:
    return rate * flops_per_item / peak if peak and flops_per_item else None


# ----------------------------------------------------------------------------------------- part 1: segmentation


def _ade20k() -> dict:
    from geosurge.segmentation.ade20k import NUM_ADE20K_CLASSES, id2label

    labels = id2label()
    return {"num_labels": NUM_ADE20K_CLASSES, "id2label": labels, "label2id": {v: k for k, v in labels.items()}}


def segformer_family(hidden_sizes: list[int], depths: list[int], decoder: int):
    """A SegFormer with the published MiT sizes (heads 1-2-5-8 and the rest are SegformerConfig's defaults, as
    in every MiT-b*), random weights."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from geosurge.segmentation.families import SemanticFamily

    config = SegformerConfig(hidden_sizes=hidden_sizes, depths=depths, decoder_hidden_size=decoder, **_ade20k())
    return SemanticFamily(SegformerForSemanticSegmentation(config))


def oneformer_swin_large_family():
    """`OneFormerFamily.random`'s construction at the size of shi-labs/oneformer_ade20k_swin_large: a Swin-L
    backbone and 250 queries; the head sizes are OneFormerConfig's defaults (its ADE20K configuration)."""
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

    from geosurge.segmentation.families import OneFormerFamily, semantic_task_inputs

    swin = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                      drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = OneFormerConfig(backbone_config=swin, num_queries=250, is_training=False, **_ade20k())
    return OneFormerFamily(OneFormerForUniversalSegmentation(config), semantic_task_inputs(config.task_seq_len))


def segmenters(smoke: bool, grid: int, device: torch.device):
    """(name, Segmenter, note) per model. A Segmenter is built from the matching random spec, then given the
    full-size model (Segmenter only builds tiny random ones by spec); the smoke keeps the tiny ones."""
    from geosurge.segmentation import RANDOM_ONEFORMER, RANDOM_SEGMENTER, Segmenter

    full = {
        "SegFormer-B0": (RANDOM_SEGMENTER, lambda: segformer_family([32, 64, 160, 256], [2, 2, 2, 2], 256)),
        "SegFormer-B5": (RANDOM_SEGMENTER, lambda: segformer_family([64, 128, 320, 512], [3, 6, 40, 3], 768)),
        "OneFormer Swin-L": (RANDOM_ONEFORMER, oneformer_swin_large_family),
    }
    for name, (spec, build) in full.items():
        segmenter = Segmenter(spec, grid, device=str(device))
        if smoke:
            yield name, segmenter, f"smoke: the library's tiny random {spec!r} in place of {name}"
            continue
        torch.manual_seed(0)
        family = build()
        family.model.eval().to(segmenter.device)
        segmenter.family = family
        params = sum(p.numel() for p in family.model.parameters()) / 1e6
        yield name, segmenter, f"{params:.0f} M params, random init"


def bench_segmentation(args, config, device, peak) -> tuple[list[Row], object]:
    """Rows for the three segmenters; returns the OneFormer Segmenter too (the eval part's segmenter)."""
    size, batch = config.ingest.image_size, config.ingest.segment_batch_size
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    rows, oneformer = [], None
    for name, segmenter, note in segmenters(args.smoke, config.ingest.label_grid, device):
        started = time.perf_counter()
        flops = counted_flops(lambda s=segmenter: s.label_maps(images[:1]), (segmenter.model,))
        rate = throughput(lambda s=segmenter: s.label_maps(images), batch, args.seg_seconds, args.warmup, device)
        dtype = str(segmenter.dtype).replace("torch.", "")
        rows.append(Row("segmentation", f"{name}, {size} px, {dtype}, batch {batch}", rate, "images/s",
                        mfu(rate, flops, peak), note, flops, time.perf_counter() - started))
        print(f"[gpu-bench] segmentation {name}: {rate:.1f} images/s", flush=True)
        if name.startswith("OneFormer"):
            oneformer = segmenter
        else:
            del segmenter  # free its GPU memory before the next model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows, oneformer


# ------------------------------------------------------------------------------------------------ data (once)


def prepare_shards(config, out: Path):
    """GeoWorld at the model's image size, rendered by Ray tasks (one image depends only on its row, so chunks
    give the same bytes as `generate_geoworld`), ingested with its ground-truth label maps; reused when --out
    already holds shards of the same size. Returns (shards_uri, hierarchy, hierarchy_uri)."""
    import ray

    from geosurge import storage
    from geosurge.data.geoworld import build_manifest, geoworld_locations, render_geoworld_range, write_manifest
    from geosurge.data.ingest import ingest
    from geosurge.data.shards import read_split
    from geosurge.geo.geocells import GeocellHierarchy

    root = config.resolved_data_root
    shards_uri = storage.join(root, "ingest", "shards")
    key = {"images": config.geoworld.num_images, "size": config.ingest.image_size, "grid": config.ingest.label_grid}
    marker = out / "shards.json"
    if not (marker.exists() and json.loads(marker.read_text()) == key):
        started = time.perf_counter()
        gw = dataclasses.replace(config.geoworld, image_size=config.ingest.image_size)
        locations = geoworld_locations(gw)
        world = storage.join(root, "geoworld")
        n, chunk = len(locations), max(1, math.ceil(len(locations) / (2 * (os.cpu_count() or 1))))
        render, where = ray.remote(num_cpus=1)(render_geoworld_range), ray.put(locations)
        scenes = ray.get([render.remote(gw, where, world, s, min(n, s + chunk), config.s3) for s in range(0, n, chunk)])
        table = build_manifest(locations, [s for part in scenes for s in part], world)
        manifest = write_manifest(table, world, config.s3)
        shards_uri = ingest(manifest, storage.join(root, "ingest"), config.ingest, config.s3, overwrite=True).shards_uri
        marker.write_text(json.dumps(key))
        print(f"[gpu-bench] GeoWorld: {n} images at {gw.image_size} px rendered and ingested in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    coords = read_split(shards_uri, "train", config.s3).select_columns(["lat", "lon"]).to_pandas()
    g = config.geocells
    hierarchy = GeocellHierarchy.build(coords.lat.to_numpy(), coords.lon.to_numpy(), g.tau_max, g.tau_min,
                                       g.max_resolution)
    hierarchy_uri = storage.join(root, "geocells.parquet")
    hierarchy.save(hierarchy_uri, config.s3)
    return shards_uri, hierarchy, hierarchy_uri


# ----------------------------------------------------------------------------------------------- part 2: train


def training_flops(config, hierarchy, shards_uri: str, device: torch.device) -> tuple[float, float, str]:
    """(FLOPs of one forward + backward, of one forward, parameter note) for one training sample of the run's
    model, counted on the plain model (DeepSpeed changes dtypes, not the operations)."""
    from geosurge.data.shards import read_split, to_model_batch
    from geosurge.models import create_model

    table = next(iter(read_split(shards_uri, "train", config.s3).iter_batches(batch_size=1, batch_format="pyarrow")))
    batch = {k: torch.from_numpy(v).to(device) for k, v in to_model_batch(table, hierarchy).items()}
    model = create_model(config.model, hierarchy, pretrained=False).to(device).train()
    forward = counted_flops(lambda: model(batch))
    step = counted_flops(lambda: model(batch)["loss"].backward())
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.to("cpu")  # its GPU memory back before the trainer's worker takes the GPU
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return step, forward, f"{total / 1e6:.0f} M params, {trainable / 1e6:.0f} M trainable"


def bench_training(args, config, data, device, peak) -> tuple[list[Row], str | None]:
    """Rows for the trainer's samples/s (epochs after the first) and the checkpoint path (None: every fit failed).
    A failed bf16 fit is a row of its own (the error in its notes), then the same fit runs in fp32 unless
    --no-fp32-fallback, so the table still has a training figure and a trained model for the eval part."""
    shards_uri, hierarchy, _ = data
    step_flops, forward_flops, params = training_flops(config, hierarchy, shards_uri, device)
    rows: list[Row] = []
    attempts = [config]
    if config.train.bf16 and not args.no_fp32_fallback:
        attempts.append(dataclasses.replace(config, run_name=f"{config.run_name}-fp32",
                                            train=dataclasses.replace(config.train, bf16=False, epochs=2)))
    for attempt in attempts:
        started = time.perf_counter()
        tc, m = attempt.train, attempt.model
        setting = (f"{m.backbone}, {attempt.ingest.image_size} px, {'bf16' if tc.bf16 else 'fp32'}, DeepSpeed "
                   f"ZeRO-{tc.zero_stage}, {tc.num_workers} worker{'s' if tc.num_workers > 1 else ''}, "
                   f"batch {tc.batch_size}")
        try:
            epochs, checkpoint = fit(attempt, data)
        except Exception as error:  # noqa: BLE001  the table reports it; the rest of the benchmark goes on
            lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
            # the worker's own exception line, not Ray's wrapper and traceback
            why = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1])[:300]
            rows.append(Row("train", setting, math.nan, "samples/s", None, f"FAILED: {type(error).__name__}: {why}",
                            step_flops, time.perf_counter() - started))
            print(f"[gpu-bench] train ({setting}) FAILED: {why}", flush=True)
            continue
        rate = statistics.mean(epochs)
        achieved = mfu(rate, step_flops, peak)
        notes = (f"{params}; epochs after warm-up {', '.join(f'{v:.1f}' for v in epochs)}; "
                 f"{step_flops / 1e9:.2f} GFLOP/sample fwd+bwd counted (3 x fwd = {3 * forward_flops / 1e9:.2f}"
                 + (f", MFU {mfu(rate, 3 * forward_flops, peak):.1%} by that convention)" if achieved else ")")
                 + f"; {sum(hierarchy.num_cells)} cells over {len(hierarchy.num_cells)} levels"
                 + ("" if tc.bf16 or not config.train.bf16 else "; fp32 fallback: MFU still against the bf16 peak"))
        seconds = time.perf_counter() - started
        rows.append(Row("train", setting, rate, "samples/s", achieved, notes, step_flops, seconds))
        print(f"[gpu-bench] train ({setting}): {rate:.1f} samples/s (epochs after warm-up: {epochs})", flush=True)
        return rows, checkpoint
    return rows, None


def fit(config, data) -> tuple[list[float], str]:
    """One `train` run with its own MLflow run: (samples/s of each epoch after the first, checkpoint path)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from geosurge.tracking.runs import start_mlflow_run
    from geosurge.train.trainer import train

    run = start_mlflow_run(config)
    try:
        result = train(config, *data, run.info.run_id)
    finally:
        mlflow.end_run()
    history = MlflowClient(config.resolved_tracking_uri).get_metric_history(run.info.run_id, "samples_per_s")
    return [m.value for m in sorted(history, key=lambda m: m.step) if m.step >= 1], result.checkpoint_path


# ------------------------------------------------------------------------------------------------ part 3: eval


def bench_eval(args, config, hierarchy, checkpoint: str | None, segmenter, device, peak) -> list[Row]:
    from geosurge.device import autocast
    from geosurge.models import create_model
    from geosurge.serving.locator import GeoLocator
    from geosurge.train.trainer import consolidated_state_dict

    started = time.perf_counter()
    model = create_model(config.model, hierarchy, pretrained=False)
    if checkpoint:  # else no fit succeeded: the same model with random weights (the speed is the same)
        model.load_state_dict(consolidated_state_dict(checkpoint, config.s3))
    weights = "trained weights" if checkpoint else "random weights: no training run succeeded"
    locator = GeoLocator(model, segmenter, config, hierarchy)
    size, batch = config.ingest.image_size, config.eval.batch_size
    images = np.random.default_rng(1).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    segmenter_dtype = str(segmenter.dtype).replace("torch.", "")
    set_up, rows = time.perf_counter() - started, []
    for bf16 in (False, True):
        for ten_crop in (False, True):
            started = time.perf_counter()

            def call(x=images, ten_crop=ten_crop, bf16=bf16):
                with autocast(locator.device, bf16):
                    locator.predict_arrays(x, ten_crop=ten_crop)

            flops = counted_flops(lambda: call(images[:1]), (locator.model, segmenter.model))
            # one warm-up call: a call is already a large batch (ten-crop: 10 views of each image)
            rate = throughput(call, batch, args.eval_seconds, 1, device, min_calls=2)
            model_dtype = next(locator.model.parameters()).dtype
            precision = "geo model under bf16 autocast (wrapped here)" if bf16 else \
                f"geo model in {str(model_dtype).replace('torch.', '')} as GeoLocator runs it"
            setting = f"GeoLocator.predict_arrays, {'ten-crop' if ten_crop else 'one view'}, batch {batch}"
            rows.append(Row("eval", setting, rate, "images/s", mfu(rate, flops, peak),
                            f"{precision}; {weights}; segmenter: OneFormer row above, {segmenter_dtype}",
                            flops, time.perf_counter() - started + (set_up if not rows else 0.0)))
            print(f"[gpu-bench] eval ten_crop={ten_crop} bf16={bf16}: {rate:.1f} images/s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------- main


def load_bench_config(args, out: Path):
    from geosurge.config import load_config
    from geosurge.segmentation import GROUND_TRUTH_SEGMENTER

    common = [
        f"output_dir={out}", f"run_name=gpu-bench-{int(time.time())}",  # a fresh MLflow run and Ray Train fit
        "data.manifest=", "ingest.manifest_format=auto", "ingest.images_root=",  # our GeoWorld manifest, not MP-16
        f"ingest.segmenter={GROUND_TRUTH_SEGMENTER}", f"geoworld.num_images={args.train_images}",
        "model.pretrained=false", "model.pretrained_file=",  # random init: weights do not change speed
        "train.num_workers=1", f"train.epochs={args.train_epochs}", "train.val_split=",
        "train.early_stopping_patience=null", "train.bf16=true", "train.zero_stage=2",
        "train.max_failures=0",  # a benchmark reports a failure; Ray's restarts would only repeat it
    ]
    if args.smoke:
        return load_config([str(PRESET), str(SMOKE)], overrides=[
            *common, "train.use_gpu=false", "train.batch_size=16", "eval.batch_size=8",
            "ingest.segment_batch_size=8", *args.set])
    # 7 levels as the paper's, sized for a few thousand GeoWorld photos instead of MP-16's 4.72 M
    return load_config([str(PRESET)], overrides=[
        *common, "train.use_gpu=true", "geocells.tau_max=[1500, 800, 400, 200, 100, 50, 25]", "geocells.tau_min=5",
        *args.set])


def json_row(row: Row) -> dict:
    d = asdict(row)
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}  # strict JSON: no NaN


def print_table(rows: list[Row], device_note: str, total_s: float) -> None:
    print(f"\nGPU benchmark: {device_note}; total {total_s / 60:.1f} min (target < {TARGET_MINUTES:.0f} min)")
    head = f"{'part':13s} {'setting':78s} {'rate':>10s} {'unit':10s} {'MFU':>6s}  notes"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        share = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        print(f"{r.part:13s} {r.setting:78s} {r.rate:10.1f} {r.unit:10s} {share:>6s}  {r.notes}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny models, 64 px, a few steps")
    parser.add_argument("--out", default=None, help="shards, MLflow, Ray results, gpu_bench.json "
                        "(default runs/gpu_bench, runs/gpu_bench_smoke with --smoke)")
    parser.add_argument("--seg-seconds", type=float, default=15.0, help="timed seconds per segmenter")
    parser.add_argument("--eval-seconds", type=float, default=10.0, help="timed seconds per eval setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each timed loop")
    parser.add_argument("--train-images", type=int, default=6000, help="GeoWorld images (80%% train)")
    parser.add_argument("--train-epochs", type=int, default=3, help="trainer epochs; the first is warm-up")
    parser.add_argument("--no-fp32-fallback", action="store_true", help="no fp32 fit after a failed bf16 one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; run it on a GPU machine, or use --smoke for the CPU check",
              file=sys.stderr)
        return 2
    if args.smoke:
        args.seg_seconds, args.eval_seconds, args.warmup = min(args.seg_seconds, 2.0), min(args.eval_seconds, 2.0), 1
        args.train_images = min(args.train_images, 300)
        args.train_epochs = min(args.train_epochs, 2)
    if args.train_epochs < 2:
        parser.error("--train-epochs must be at least 2: the first epoch is warm-up")
    out = Path(args.out or ("runs/gpu_bench_smoke" if args.smoke else "runs/gpu_bench")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "ray_results", ignore_errors=True)  # never a resume of an older fit (and its disk)

    from geosurge.device import device_for
    from geosurge.runtime import init_ray

    started = time.perf_counter()
    config = load_bench_config(args, out)
    device = device_for(None if args.smoke else True)
    peak, device_note = peak_flops(device)
    print(f"[gpu-bench] {device_note}; torch {torch.__version__}; peak "
          f"{f'{peak / 1e12:.0f} TFLOP/s bf16 dense' if peak else 'n/a'}", flush=True)
    init_ray(config)
    data = prepare_shards(config, out)
    data_s = time.perf_counter() - started

    rows, segmenter = bench_segmentation(args, config, device, peak)
    train_rows, checkpoint = bench_training(args, config, data, device, peak)
    rows += train_rows
    rows += bench_eval(args, config, data[1], checkpoint, segmenter, device, peak)
    total_s = time.perf_counter() - started

    print_table(rows, device_note + (" (SMOKE: tiny models, not the figures)" if args.smoke else ""), total_s)
    report = {"device": device_note, "smoke": args.smoke, "peak_bf16_flops": peak, "torch": torch.__version__,
              "data_seconds": data_s, "total_seconds": total_s, "args": vars(args), "rows": [json_row(r) for r in rows]}
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
    print(f"written: {out / 'gpu_bench.json'}")
    if not args.smoke and total_s > TARGET_MINUTES * 60:
        print(f"over the {TARGET_MINUTES:.0f}-minute target: lower --seg-seconds, --eval-seconds or --train-images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
