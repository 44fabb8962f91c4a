"""Benchmark: inference latency of GeoSURGE exact scoring vs beam search vs GeoCLIP gallery retrieval.

    python benchmarks/inference.py [--coords 3000000] [--beams 1 4 16 64] [--table runs/geoworld_table]

Part 1, latency at production scale, one run, side by side: a geocell hierarchy with about 100,000 finest
cells (built from 3 M coordinates that follow a real photo distribution) and GeoSURGE with 768-d cell
embeddings; GeoCLIP with the 100,000-point GPS gallery of the geoclip package and its released location
encoder. Every cell and gallery embedding is computed once beforehand (cached). Timed: the part after the
image embedding (the backbone costs the same for every method and is reported once, for a tiny ViT).
  (a) exact: every cell of every level scored, ancestor products over all finest cells, top-5;
  (b) beam B: only the children of the best B cells of each level are scored; with the softmax normalisers
      (one pass over every cell of every level, for exact probabilities) and without them (ranking only:
      the same cells, since a normaliser is a constant per image and level);
  (c) GeoCLIP: image embedding × 100,000 cached gallery embeddings, softmax, top-5.

Part 2, agreement: the beam's top-1 against exact scoring on GeoWorld test images, with the GeoSURGE model
that `benchmarks/geoworld_table.py` trained (run it first; its outputs are read from --table).
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

from geosurge.config import GeoClipConfig, ModelConfig, PipelineConfig
from geosurge.data.gps_gallery import sample_photo_coordinates
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model

TINY_VIT = {"img_size": 64, "patch_size": 8, "depth": 4}


def per_call_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, lazy caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def latency(args: argparse.Namespace) -> None:
    lat, lon = sample_photo_coordinates(args.coords, seed=0)
    hierarchy = GeocellHierarchy.build(lat, lon, tuple(args.tau_max), args.tau_min)
    spec = HierarchySpec.from_hierarchy(hierarchy)
    print(f"hierarchy from {args.coords:,} coordinates: cells per level {hierarchy.num_cells}")

    geosurge = create_model(ModelConfig(name="geosurge", backbone_kwargs=TINY_VIT, embed_dim=768), spec).eval()
    geoclip = create_model(ModelConfig(name="geoclip", backbone_kwargs=TINY_VIT, geoclip=GeoClipConfig()), spec).eval()
    start = time.perf_counter()
    gallery = geoclip.gallery_embeddings()
    print(f"GeoCLIP gallery: {gallery.shape[0]:,} coordinates embedded once in {time.perf_counter() - start:.1f} s (cached)")

    rows = []
    for batch in (1, 64):
        rng = np.random.default_rng(batch)
        images = torch.from_numpy(rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8))
        label_maps = torch.from_numpy(rng.integers(0, 150, (batch, 8, 8), dtype=np.uint8))
        v = geosurge.embed(images, label_maps)
        w = geoclip.embed_image(images)
        timings = {
            "backbone + fusion (tiny ViT, for scale)": per_call_seconds(lambda: geosurge.embed(images, label_maps), args.repeats),
            "(a) GeoSURGE exact": per_call_seconds(lambda: geosurge.finest_log_scores(v).topk(5, dim=-1), args.repeats),
        }
        for b in args.beams:
            timings[f"(b) GeoSURGE beam B={b}"] = per_call_seconds(lambda b=b: geosurge.beam_search(v, b), args.repeats)
        for b in args.beams:
            # Same cells without the per-level softmax normalisers (a constant per image and level, so the
            # ranking is unchanged); the scores are then not probabilities.
            timings[f"(b) GeoSURGE beam B={b}, ranking only"] = per_call_seconds(
                lambda b=b: geosurge.beam_search(v, b, normalize=False), args.repeats)
        timings["(c) GeoCLIP gallery retrieval"] = per_call_seconds(
            lambda: F.softmax(geoclip.logits(w, gallery), dim=-1).topk(5, dim=-1), args.repeats)
        for name, seconds in timings.items():
            rows.append((name, batch, 1000 * seconds / batch))

    exact = {b: ms for name, b, ms in rows if name.startswith("(a)")}
    print(f"\n{'method':42s} {'batch':>5s} {'ms/image':>10s} {'vs exact':>9s}")
    for name, batch, ms in rows:
        print(f"{name:42s} {batch:5d} {ms:10.3f} {ms / exact[batch]:8.2f}x")


@torch.no_grad()
def agreement(args: argparse.Namespace) -> None:
    from geosurge.data.shards import read_split, to_model_batch
    from geosurge.models import create_model
    from geosurge.train.trainer import consolidated_state_dict

    table = Path(args.table)
    summary = table / "geoworld_table.json"
    checkpoints = sorted(p for p in (table / "ray_results" / "table-0").glob("checkpoint_*") if p.is_dir())
    if not summary.exists() or not checkpoints:
        print(f"\nagreement: skipped — no trained GeoSURGE under {table} (run benchmarks/geoworld_table.py first)")
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
    for batch in read_split(f"{root}/ingest/shards", "test").iter_batches(batch_size=64, batch_format="pyarrow"):
        arrays = to_model_batch(batch)
        embeddings.append(model.embed(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["label_map"])))
    v = torch.cat(embeddings)
    top1 = model.finest_log_scores(v).argmax(dim=-1)
    print(f"\nbeam top-1 agreement with exact scoring, GeoWorld test images (n={len(v)}), "
          f"hierarchy {hierarchy.num_cells} cells per level:")
    for b in args.agreement_beams:
        cells, _ = model.beam_search(v, b)
        print(f"  B={b:3d}: {(cells[:, 0] == top1).float().mean().item():.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coords", type=int, default=3_000_000)
    parser.add_argument("--tau-max", type=int, nargs="+", default=[20000, 4000, 800, 200, 100])
    parser.add_argument("--tau-min", type=int, default=5)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--agreement-beams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table", default="runs/geoworld_table")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    latency(args)
    agreement(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
