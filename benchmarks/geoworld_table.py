"""Benchmark: every model and the paper's ablations trained on the same GeoWorld data with the same budget.

    python benchmarks/geoworld_table.py [--seeds 0 1] [--images 2000] [--epochs 6] [--out runs/geoworld_table]

For each seed, one GeoWorld (`geoworld.seed`, and `train.seed` alike) is generated and ingested once, with its
ground-truth label maps as the segmenter (an oracle: the fusion ablation only means something when label maps
carry information), stored at 16 × 16, a multiple of the backbone's patch grid, so that a per-patch class histogram
sees a mix of classes (at the patch grid itself, histogram and majority-class tokens are the same).
Each variant then trains through the real pipeline trainer (Ray Train + DeepSpeed ZeRO-2, 2 CPU workers), is
evaluated on the test split, and lands as one row: the five accuracies, median error and GeoScore. The last
table gives each row's mean over the seeds and its spread (± half the range), so a gap can be told from noise.

GeoDecoder is also scored with the old scene rule (highest mean max-probability of the level classifiers) on the
same weights, beside the scene channel, with each rule's agreement with the label-map scene.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ray
import torch

from geosurge import storage
from geosurge.config import PipelineConfig, load_config
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import ingest
from geosurge.data.shards import read_split, to_model_batch
from geosurge.eval.evaluate import baseline_metrics, evaluate_split
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.geo.metrics import ACCURACY_THRESHOLDS_KM, format_metrics_table, geolocation_metrics
from geosurge.models import create_model
from geosurge.models.geodecoder import GeoDecoder, scene_from_label_map
from geosurge.runtime import init_ray
from geosurge.segmentation import GROUND_TRUTH_SEGMENTER
from geosurge.train.trainer import consolidated_state_dict, train

# name → (config overrides, which hierarchy). Every variant shares data, epochs, batch size and lr.
VARIANTS: dict[str, tuple[list[str], str]] = {
    "GeoSURGE (fusion, 3 levels)": ([], "levels"),
    "GeoSURGE 2 levels": ([], "two_levels"),
    "GeoSURGE 1 level": ([], "one_level"),
    "GeoSURGE no fusion": (["model.fusion=false"], "levels"),
    "GeoSURGE majority-class tokens": (["model.semantic_tokens=majority"], "levels"),
    "GeoSURGE GeoCLIP-init cells": (["model.cell_init=geoclip"], "levels"),
    "GeoCLIP": (["model.name=geoclip"], "levels"),
    "GeoDecoder": (["model.name=geodecoder"], "levels"),
    "flat classifier (PlaNet)": (["model.name=flat_classifier"], "levels"),
}
MEDIAN_GUESS = "median-coordinate guess"
OLD_SCENE_RULE = "GeoDecoder, old scene rule (same weights)"


@torch.no_grad()
def geodecoder_scene_rules(model: GeoDecoder, shards_uri: str, config: PipelineConfig) -> tuple[dict, dict[str, float]]:
    """(metrics with the scene picked by the old confidence rule, agreement of each rule with the label-map scene)."""
    model.eval()
    pred, true, agree = [], [], {"scene channel": [], "old confidence rule": []}
    for batch in read_split(shards_uri, "test", config.s3).iter_batches(batch_size=64, batch_format="pyarrow"):
        arrays = to_model_batch(batch)
        level_logits, scene_logits = model.decode(torch.from_numpy(arrays["image"]))
        data_scene = scene_from_label_map(torch.from_numpy(arrays["label_map"]))
        old_scene = model.scene_confidence(level_logits).argmax(-1)
        agree["scene channel"].append((scene_logits.argmax(-1) == data_scene).numpy())
        agree["old confidence rule"].append((old_scene == data_scene).numpy())
        cell = model.finest_log_scores(level_logits, old_scene).argmax(-1)
        pred.append(model.finest_latlon[cell].numpy())
        true.append(np.stack([arrays["lat"], arrays["lon"]], axis=1))
    p, t = np.concatenate(pred), np.concatenate(true)
    metrics = geolocation_metrics(p[:, 0], p[:, 1], t[:, 0], t[:, 1])
    return metrics, {rule: float(np.concatenate(a).mean()) for rule, a in agree.items()}


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict[str, dict]:
    """Every selected variant trained and evaluated on the GeoWorld of `seed`: {row name: metrics}."""
    base_overrides = [f"output_dir={out}", f"geoworld.num_images={args.images}", f"geoworld.seed={seed}",
                      f"train.seed={seed}", f"train.epochs={args.epochs}", f"ingest.segmenter={GROUND_TRUTH_SEGMENTER}",
                      f"ingest.label_grid={args.label_grid}", *args.set]
    base = load_config(overrides=base_overrides)
    if not ray.is_initialized():
        init_ray(base)
    root = base.resolved_data_root
    started = time.time()
    manifest = generate_geoworld(base.geoworld, storage.join(root, "geoworld"), base.s3, progress=False)
    shards = ingest(manifest, storage.join(root, "ingest"), base.ingest, base.s3)
    print(shards.summary())
    coords = read_split(shards.shards_uri, "train", base.s3).select_columns(["lat", "lon"]).to_pandas()
    lat, lon = coords.lat.to_numpy(), coords.lon.to_numpy()
    g = base.geocells
    hierarchies = {name: GeocellHierarchy.build(lat, lon, g.tau_max[-n:], g.tau_min, g.max_resolution)
                   for name, n in (("levels", len(g.tau_max)), ("two_levels", 2), ("one_level", 1))}
    for name, h in hierarchies.items():
        h.save(storage.join(root, f"geocells_{name}.parquet"), base.s3)
        print(f"seed {seed}, {name}: {h}")

    rows: dict[str, dict] = {}
    for i, (name, (overrides, which)) in enumerate(VARIANTS.items()):
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        config = load_config(overrides=base_overrides + overrides + [f"run_name=table-s{seed}-{i}"])
        t = time.time()
        hierarchy, hierarchy_uri = hierarchies[which], storage.join(root, f"geocells_{which}.parquet")
        result = train(config, shards.shards_uri, hierarchy, hierarchy_uri)
        model = create_model(config.model, hierarchy, pretrained=False)  # the trained weights follow
        model.load_state_dict(consolidated_state_dict(result.checkpoint_path))
        metrics, _ = evaluate_split(model, shards.shards_uri, "test", config.s3)
        metrics["train_seconds"] = time.time() - t
        metrics["final_train_loss"] = float(result.metrics.get("train_loss", float("nan")))
        rows[name] = metrics
        if isinstance(model, GeoDecoder):
            rows[OLD_SCENE_RULE], agreement = geodecoder_scene_rules(model, shards.shards_uri, config)
            metrics.update({f"scene_agreement ({rule})": a for rule, a in agreement.items()})
        print(f"[seed {seed}] [{name}] {json.dumps({k: round(v, 4) for k, v in metrics.items()})}", flush=True)

    test = read_split(shards.shards_uri, "test", base.s3).select_columns(["lat", "lon"]).to_pandas()
    rows[MEDIAN_GUESS] = baseline_metrics(lat, lon, test.lat.to_numpy(), test.lon.to_numpy())
    print(f"\nGeoWorld seed {seed}: {args.images} images ({shards.shard_rows} ingested), {args.epochs} epochs each, "
          f"test n={int(rows[MEDIAN_GUESS]['n'])}, ground-truth label maps at {args.label_grid}²; "
          f"{time.time() - started:.0f} s")
    print(format_metrics_table(rows))
    return rows


def mean_and_spread(per_seed: dict[int, dict[str, dict]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Rows present in every seed: (mean of each metric, half the range of each metric) over the seeds."""
    runs = [r for r in next(iter(per_seed.values())) if all(r in rows for rows in per_seed.values())]
    keys = ["geoscore", "median_km", *(f"acc_{t}km" for t in ACCURACY_THRESHOLDS_KM)]
    mean, spread = {}, {}
    for run in runs:
        values = {k: np.array([rows[run][k] for rows in per_seed.values()], dtype=float) for k in keys}
        mean[run] = {k: float(v.mean()) for k, v in values.items()}
        spread[run] = {k: float(np.ptp(v) / 2) for k, v in values.items()}
    return mean, spread


def format_spread_table(mean: dict[str, dict], spread: dict[str, dict]) -> str:
    """Mean ± half-range of GeoScore, median km and the 2,500 km / 750 km accuracies, one row per run."""
    width = max(len(r) for r in mean)
    lines = [f"{'run':<{width}}  {'GeoScore':>12}  {'median km':>14}  {'@750km %':>11}  {'@2500km %':>11}"]
    for run, m in mean.items():
        s = spread[run]
        lines.append(f"{run:<{width}}  {m['geoscore']:>6.0f} ± {s['geoscore']:<3.0f}  "
                     f"{m['median_km']:>7.0f} ± {s['median_km']:<4.0f}  "
                     f"{100 * m['acc_750km']:>5.1f} ± {100 * s['acc_750km']:<3.1f}  "
                     f"{100 * m['acc_2500km']:>5.1f} ± {100 * s['acc_2500km']:<3.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--label-grid", type=int, default=16, help="stored label-map grid: a multiple of the backbone's patch grid")
    parser.add_argument("--out", default="runs/geoworld_table")
    parser.add_argument("--only", action="append", default=[], help="run only variants whose name contains this")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    args = parser.parse_args(argv)

    out = Path(args.out).absolute()
    started = time.time()
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        seed_out = out / f"seed-{seed}"
        shutil.rmtree(seed_out / "ray_results", ignore_errors=True)  # same run names must not resume an older run
        per_seed[seed] = run_seed(seed, args, seed_out)
    mean, spread = mean_and_spread(per_seed)
    print(f"\nGeoWorld table over seeds {args.seeds}: mean ± half the range; {time.time() - started:.0f} s in all")
    print(format_spread_table(mean, spread))
    for name in (n for n in VARIANTS if all("scene_agreement (scene channel)" in r.get(n, {}) for r in per_seed.values())):
        for rule in ("scene channel", "old confidence rule"):
            shares = [rows[name][f"scene_agreement ({rule})"] for rows in per_seed.values()]
            print(f"{name}: scene picked by the {rule} agrees with the label-map scene on "
                  f"{', '.join(f'{100 * a:.1f}%' for a in shares)} of test images (per seed)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    out.mkdir(parents=True, exist_ok=True)
    (out / "geoworld_table.json").write_text(json.dumps(
        {"commit": commit, "args": vars(args), "config": dataclasses.asdict(load_config()),
         "per_seed": per_seed, "mean": mean, "half_range": spread}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
