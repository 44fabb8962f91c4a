"""Benchmark: inference latency of GeoSURGE exact scoring vs beam search vs GeoCLIP gallery retrieval.

    python benchmarks/inference.py [--coords 3000000] [--beams 1 4 16 64] [--table runs/geoworld_table]
    python benchmarks/inference.py --quick   # a smoke run: 300k coordinates, fewer beams, no GeoCLIP, 50 steps

Part 1, latency at production scale (the default), one run, side by side: a geocell hierarchy with about
100,000 finest cells (built from 3 M coordinates that follow a real photo distribution) and GeoSURGE with
768-d cell embeddings; GeoCLIP with the 100,000-point GPS gallery of the geoclip package and its released
location encoder. Every cell and gallery embedding is computed once beforehand (cached). Timed: the part
after the image embedding (the backbone costs the same for every method and is reported once, for a tiny ViT).
  (a) exact: every cell of every level scored, ancestor products over all finest cells, top-5;
  (b) beam B: only the children of the best B cells of each level are scored; with the softmax normalisers
      (one pass over every cell of every level, for exact probabilities) and without them (ranking only:
      the same cells, since a normaliser is a constant per image and level);
  (c) GeoCLIP: image embedding × 100,000 cached gallery embeddings, softmax, top-5.
Then exact scoring against the hardware bounds, measured in the same run (alternating calls, so load on a
shared machine hits both alike): a plain float32 matrix of the shape (and bytes) of all levels' cell
embeddings stacked, times one embedding (matrix-vector: the memory-bandwidth bound, batch 1) and times 64
(matrix-matrix: the matmul bound, batch 64). Target: exact / bound ≤ 1.3.

Part 2, agreement: ranking-only beam search's top-1 against exact scoring's (target ≥ 99%). With the GeoSURGE
model that `benchmarks/geoworld_table.py` trained (read from --table) when it exists; otherwise a small
GeoSURGE (tiny ViT, 32 px, 3 levels) is trained here for --train-steps on GeoWorld images rendered in
memory, and measured on GeoWorld test images: a stand-in, far smaller than the production hierarchy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geosurge.config import GeoClipConfig, GeoWorldConfig, ModelConfig, PipelineConfig
from geosurge.data.gps_gallery import sample_photo_coordinates
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model

TINY_VIT = {"img_size": 64, "patch_size": 8, "depth": 4}
AGREEMENT_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 96, "num_heads": 2}
BOUND_TARGET, AGREEMENT_TARGET = 1.3, 0.99


def per_call_seconds(fn, repeats: int) -> float:
    return statistics.median(interleaved_seconds([fn], repeats)[0])


def interleaved_seconds(fns: list, repeats: int) -> list[list[float]]:
    """Seconds of each call of each fn, the calls interleaved so that a load spike slows all of them."""
    for fn in fns:
        fn()  # warm-up: allocations, lazy caches
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def latency(args: argparse.Namespace) -> None:
    lat, lon = sample_photo_coordinates(args.coords, seed=0)
    hierarchy = GeocellHierarchy.build(lat, lon, tuple(args.tau_max), args.tau_min)
    spec = HierarchySpec.from_hierarchy(hierarchy)
    print(f"hierarchy from {args.coords:,} coordinates: cells per level {hierarchy.num_cells}")

    geosurge = create_model(ModelConfig(name="geosurge", backbone_kwargs=TINY_VIT, embed_dim=768), spec).eval()
    if not args.skip_geoclip:
        geoclip_config = ModelConfig(name="geoclip", backbone_kwargs=TINY_VIT, geoclip=GeoClipConfig())
        geoclip = create_model(geoclip_config, spec).eval()
        start = time.perf_counter()
        gallery = geoclip.gallery_embeddings()
        print(f"GeoCLIP gallery: {gallery.shape[0]:,} coordinates embedded once in {time.perf_counter() - start:.1f} s "
              "(cached)")
    # the bounds' operand: a plain matrix with the bytes of every level's cell embeddings
    plain = torch.randn(sum(hierarchy.num_cells), geosurge.cell_embeddings[0].shape[1])

    rows, bounds = [], []
    for batch in (1, 64):
        rng = np.random.default_rng(batch)
        images = torch.from_numpy(rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8))
        label_maps = torch.from_numpy(rng.integers(0, 150, (batch, 8, 8), dtype=np.uint8))
        v = geosurge.embed(images, label_maps)
        exact = lambda: geosurge.finest_log_scores(v).topk(5, dim=-1)
        timings = {
            "backbone + fusion (tiny ViT, for scale)": per_call_seconds(lambda: geosurge.embed(images, label_maps), args.repeats),
            "(a) GeoSURGE exact": per_call_seconds(exact, args.repeats),
        }
        for b in args.beams:
            timings[f"(b) GeoSURGE beam B={b}"] = per_call_seconds(lambda b=b: geosurge.beam_search(v, b), args.repeats)
        for b in args.beams:
            # Same cells without the per-level softmax normalisers (a constant per image and level, so the
            # ranking is unchanged); the scores are then not probabilities.
            timings[f"(b) GeoSURGE beam B={b}, ranking only"] = per_call_seconds(
                lambda b=b: geosurge.beam_search(v, b, normalize=False), args.repeats)
        if not args.skip_geoclip:
            w = geoclip.embed_image(images)
            timings["(c) GeoCLIP gallery retrieval"] = per_call_seconds(
                lambda: F.softmax(geoclip.logits(w, gallery), dim=-1).topk(5, dim=-1), args.repeats)
        for name, seconds in timings.items():
            rows.append((name, batch, 1000 * seconds / batch))
        bound = (lambda: torch.mv(plain, v[0])) if batch == 1 else (lambda: v @ plain.t())
        bounds.append((batch, *interleaved_seconds([exact, bound], args.bound_repeats)))

    exact_ms = {b: ms for name, b, ms in rows if name.startswith("(a)")}
    print(f"\n{'method':42s} {'batch':>5s} {'ms/image':>10s} {'vs exact':>9s}")
    for name, batch, ms in rows:
        print(f"{name:42s} {batch:5d} {ms:10.3f} {ms / exact_ms[batch]:8.2f}x")

    # Medians, and the fastest call of each (on a shared machine, the closest to the unloaded cost)
    print(f"\nexact scoring (scores + top-5) vs a plain product over {plain.shape[0]:,} × {plain.shape[1]} float32 "
          f"({plain.numel() * plain.element_size() / 2**20:.0f} MiB), {args.bound_repeats} alternating calls:")
    print(f"{'batch':>5s}  {'bound':22s} {'exact ms':>9s} {'bound ms':>9s} {'ratio':>6s}  {'best exact':>10s} "
          f"{'best bound':>10s} {'ratio':>6s}  target")
    for batch, exact_s, bound_s in bounds:
        kind = "matrix-vector (memory)" if batch == 1 else "matrix-matrix (matmul)"
        median, best = (statistics.median(exact_s), statistics.median(bound_s)), (min(exact_s), min(bound_s))
        verdict = "ok" if median[0] / median[1] <= BOUND_TARGET else "MISSED"
        print(f"{batch:5d}  {kind:22s} {1000 * median[0]:9.2f} {1000 * median[1]:9.2f} {median[0] / median[1]:6.2f}  "
              f"{1000 * best[0]:10.2f} {1000 * best[1]:10.2f} {best[0] / best[1]:6.2f}  "
              f"≤ {BOUND_TARGET} (median: {verdict})")


def print_agreement(model: torch.nn.Module, v: torch.Tensor, beams: list[int], what: str) -> None:
    top1 = model.finest_log_scores(v).argmax(dim=-1)
    print(f"\nranking-only beam top-1 agreement with exact scoring, {what} (n={len(v)}), "
          f"cells per level {[g.shape[0] for g in model.cell_embeddings]}:")
    for b in beams:
        cells, _ = model.beam_search(v, b, normalize=False)
        share = (cells[:, 0] == top1).float().mean().item()
        verdict = "ok" if share >= AGREEMENT_TARGET else "below"
        print(f"  B={b:3d}: {share:.3f}  {verdict} (target ≥ {AGREEMENT_TARGET})")


def agreement(args: argparse.Namespace) -> None:
    from geosurge.data.shards import read_split, to_model_batch
    from geosurge.train.trainer import consolidated_state_dict

    table = Path(args.table)
    summary = table / "geoworld_table.json"
    checkpoints = sorted(p for p in (table / "ray_results" / "table-0").glob("checkpoint_*") if p.is_dir())
    if not summary.exists() or not checkpoints:
        print(f"\nagreement: no trained GeoSURGE under {table} (benchmarks/geoworld_table.py): "
              f"training a small stand-in on GeoWorld ({args.train_steps} steps)")
        agreement_on_a_small_model(args)
        return
    config = PipelineConfig.from_dict(json.loads(summary.read_text())["config"])
    root = config.resolved_data_root
    hierarchy = GeocellHierarchy.load(f"{root}/geocells_levels.parquet")
    model = create_model(config.model, hierarchy).eval()
    model.load_state_dict(consolidated_state_dict(str(checkpoints[-1])))
    embeddings = []
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with torch.no_grad():
        for batch in read_split(f"{root}/ingest/shards", "test").iter_batches(batch_size=64, batch_format="pyarrow"):
            arrays = to_model_batch(batch)
            embeddings.append(model.embed(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["label_map"])))
        print_agreement(model, torch.cat(embeddings), args.agreement_beams, "GeoWorld test images, the table's model")


def render_geoworld(config: GeoWorldConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """GeoWorld in memory: images [n,s,s,3] and label maps [n,s,s] (ADE20K ids, the ground truth), lat, lon,
    split."""
    from geosurge.data.geoworld import geoworld_locations, render_image

    locations = geoworld_locations(config)
    rendered = [render_image(row, np.random.default_rng([config.seed, int(row["index"])]), config.image_size)
                for row in locations.to_dict("records")]
    arrays = {"image": np.stack([np.asarray(img) for img, _ in rendered]),
              "label_map": np.stack([lab for _, lab in rendered]),
              "lat": locations.lat.to_numpy(), "lon": locations.lon.to_numpy()}
    return arrays, locations.split.to_numpy()


def agreement_on_a_small_model(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    data, split = render_geoworld(GeoWorldConfig(num_images=args.geoworld_images, image_size=AGREEMENT_VIT["img_size"]))
    train, test = split == "train", split == "test"
    hierarchy = GeocellHierarchy.build(data["lat"][train], data["lon"][train], (800, 200, 50), 5)
    cells = torch.from_numpy(hierarchy.assign(data["lat"], data["lon"], nearest=True))
    images, label_maps = torch.from_numpy(data["image"]), torch.from_numpy(data["label_map"])
    model = create_model(ModelConfig(name="geosurge", backbone_kwargs=AGREEMENT_VIT, embed_dim=64, fusion_heads=2),
                         HierarchySpec.from_hierarchy(hierarchy)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    train_rows, start = np.flatnonzero(train), time.perf_counter()
    rng = np.random.default_rng(0)
    for _ in range(args.train_steps):
        idx = torch.from_numpy(rng.choice(train_rows, 64, replace=False))
        loss = model({"image": images[idx], "label_map": label_maps[idx], "cells": cells[idx]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        idx = torch.from_numpy(np.flatnonzero(test))
        v = model.embed(images[idx], label_maps[idx])
        accuracy = (model.finest_log_scores(v).argmax(-1) == cells[idx, -1]).float().mean().item()
        print(f"trained {args.train_steps} steps (batch 64, {time.perf_counter() - start:.0f} s) on {train.sum()} "
              f"GeoWorld images; finest-cell top-1 accuracy on {test.sum()} test images {accuracy:.3f} "
              f"(chance {1 / hierarchy.num_cells[-1]:.3f})")
        print_agreement(model, v, args.agreement_beams, "GeoWorld test images, the small stand-in model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coords", type=int, default=3_000_000)
    parser.add_argument("--tau-max", type=int, nargs="+", default=[20000, 4000, 800, 200, 100])
    parser.add_argument("--tau-min", type=int, default=5)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--agreement-beams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bound-repeats", type=int, default=15, help="alternating calls for exact vs bound")
    parser.add_argument("--table", default="runs/geoworld_table")
    parser.add_argument("--train-steps", type=int, default=300, help="the stand-in model's training steps")
    parser.add_argument("--geoworld-images", type=int, default=6000, help="the stand-in model's GeoWorld size")
    parser.add_argument("--part", choices=("all", "latency", "agreement"), default="all")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a busy machine")
    parser.add_argument("--skip-geoclip", action="store_true", help="no (c): embedding its gallery takes a while")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300k coordinates, 2 beams, no GeoCLIP, "
                        "50 training steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.coords, args.beams, args.repeats, args.bound_repeats, args.train_steps = 300_000, [1, 16], 3, 5, 50
        args.skip_geoclip = True
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.part in ("all", "latency"):
        latency(args)
    if args.part in ("all", "agreement"):
        agreement(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
