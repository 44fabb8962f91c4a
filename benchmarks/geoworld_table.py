"""Benchmark: every model and the paper's ablations trained on the same GeoWorld data with the same budget.

    python benchmarks/geoworld_table.py [--images 2000] [--epochs 6] [--out runs/geoworld_table]

One GeoWorld is generated and ingested once, with its ground-truth label maps as the segmenter (an oracle:
the fusion ablation only means something when label maps carry information). Each variant then trains
through the real pipeline trainer (Ray Train + DeepSpeed ZeRO-2, 2 CPU workers), is evaluated on the test
split, and lands as one row of the table: the five accuracies, median error and GeoScore.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from geosurge import storage
from geosurge.config import load_config
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import ingest
from geosurge.data.shards import read_split
from geosurge.eval.evaluate import baseline_metrics, evaluate_split
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.geo.metrics import format_metrics_table
from geosurge.models import create_model
from geosurge.runtime import init_ray
from geosurge.segmentation import GROUND_TRUTH_SEGMENTER
from geosurge.train.trainer import consolidated_state_dict, train

# name → (config overrides, which hierarchy). Every variant shares data, epochs, batch size and lr.
VARIANTS: dict[str, tuple[list[str], str]] = {
    "GeoSURGE (fusion, 3 levels)": ([], "levels"),
    "GeoSURGE no fusion": (["model.fusion=false"], "levels"),
    "GeoSURGE 1 level": ([], "one_level"),
    "GeoSURGE GeoCLIP-init cells": (["model.cell_init=geoclip"], "levels"),
    "GeoCLIP": (["model.name=geoclip"], "levels"),
    "GeoDecoder": (["model.name=geodecoder"], "levels"),
    "flat classifier (PlaNet)": (["model.name=flat_classifier"], "levels"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="runs/geoworld_table")
    parser.add_argument("--only", action="append", default=[], help="run only variants whose name contains this")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    args = parser.parse_args(argv)

    out = Path(args.out).absolute()
    shutil.rmtree(out / "ray_results", ignore_errors=True)  # same run names must not resume an older benchmark
    base_overrides = [f"output_dir={out}", f"geoworld.num_images={args.images}", f"train.epochs={args.epochs}",
                      f"ingest.segmenter={GROUND_TRUTH_SEGMENTER}", *args.set]
    base = load_config(overrides=base_overrides)
    init_ray(base)
    root = base.resolved_data_root

    started = time.time()
    manifest = generate_geoworld(base.geoworld, storage.join(root, "geoworld"), base.s3, progress=False)
    shards = ingest(manifest, storage.join(root, "ingest"), base.ingest, base.s3)
    print(shards.summary())
    coords = read_split(shards.shards_uri, "train", base.s3).select_columns(["lat", "lon"]).to_pandas()
    lat, lon = coords.lat.to_numpy(), coords.lon.to_numpy()
    g = base.geocells
    hierarchies = {
        "levels": GeocellHierarchy.build(lat, lon, g.tau_max, g.tau_min, g.max_resolution),
        "one_level": GeocellHierarchy.build(lat, lon, g.tau_max[-1:], g.tau_min, g.max_resolution),
    }
    for name, h in hierarchies.items():
        h.save(storage.join(root, f"geocells_{name}.parquet"), base.s3)
        print(f"{name}: {h}")

    rows: dict[str, dict] = {}
    for i, (name, (overrides, which)) in enumerate(VARIANTS.items()):
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        config = load_config(overrides=base_overrides + overrides + [f"run_name=table-{i}"])
        t = time.time()
        hierarchy, hierarchy_uri = hierarchies[which], storage.join(root, f"geocells_{which}.parquet")
        result = train(config, shards.shards_uri, hierarchy, hierarchy_uri)
        model = create_model(config.model, hierarchy, pretrained=False)  # the trained weights follow
        model.load_state_dict(consolidated_state_dict(result.checkpoint_path))
        metrics, predictions = evaluate_split(model, shards.shards_uri, "test", config.s3)
        metrics["train_seconds"] = time.time() - t
        metrics["final_train_loss"] = float(result.metrics.get("train_loss", float("nan")))
        rows[name] = metrics
        print(f"[{name}] {json.dumps({k: round(v, 4) for k, v in metrics.items()})}", flush=True)

    test = read_split(shards.shards_uri, "test", base.s3).select_columns(["lat", "lon"]).to_pandas()
    rows["median-coordinate guess"] = baseline_metrics(lat, lon, test.lat.to_numpy(), test.lon.to_numpy())
    print(f"\nGeoWorld: {args.images} images ({shards.shard_rows} ingested), {args.epochs} epochs each, "
          f"test n={int(rows['median-coordinate guess']['n'])}, ground-truth label maps; {time.time() - started:.0f} s")
    print(format_metrics_table(rows))
    (out / "geoworld_table.json").write_text(json.dumps(
        {"config": dataclasses.asdict(base), "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
