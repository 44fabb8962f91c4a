"""What the eval tests share: a small GeoWorld, tiny GeoSURGE versions registered in a real MLflow sqlite registry,
and an Im2GPS3k-format benchmark CSV built from GeoWorld images.

The "trained" version is honestly trained (a few hundred AdamW steps, in-process, on every GeoWorld image, so it
has seen the benchmark images: these tests check the eval and promotion machinery, not generalisation); the
"random" version is the same architecture with its random initial weights. The trained one is clearly better,
and every figure the tests compare is measured, none is set by hand.

Imported as `tests.eval.eval_helpers` (tests/workflows uses it too).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from geosurge import storage
from geosurge.config import BenchmarkConfig, GeoWorldConfig, PipelineConfig, load_config
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.images import ImageSpec, decode_image
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model
from geosurge.segmentation.segmenter import Segmenter
from geosurge.tracking.registry import log_and_register
from geosurge.tracking.runs import start_mlflow_run

NUM_IMAGES = 120
TINY = [
    "ingest.image_size=32",
    "ingest.label_grid=4",
    "model.backbone_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 48, num_heads: 2}",
    "model.embed_dim=16",
    "model.fusion_heads=2",
    "geocells.tau_max=[40, 12]",
    "geocells.tau_min=2",
    "eval.batch_size=16",
]
IM2GPS_COLUMNS = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor",
                  "Prob_natural", "Prob_urban"]
BROKEN_IMAGE_ID = "broken_0001.jpg"
MISSING_IMAGE_ID = "missing_0002.jpg"
BAD_COORDINATES_ID = "badlat_0003.jpg"


def tiny_config(out: Path, extra: list[str] | None = None) -> PipelineConfig:
    return load_config(None, [*TINY, f"output_dir={out}", f"data_root={out / 'store'}", *(extra or [])])


def make_world(config: PipelineConfig) -> str:
    """GeoWorld where full_pipeline puts it (<data_root>/geoworld), so the default benchmark finds it."""
    return generate_geoworld(GeoWorldConfig(num_images=NUM_IMAGES, image_size=48),
                             storage.join(config.resolved_data_root, "geoworld"), progress=False)


def world_hierarchy(config: PipelineConfig, manifest: pd.DataFrame) -> GeocellHierarchy:
    return GeocellHierarchy.build(manifest.lat.to_numpy(), manifest.lon.to_numpy(), config.geocells.tau_max,
                                  config.geocells.tau_min)


def train_tiny(config: PipelineConfig, manifest: pd.DataFrame, hierarchy: GeocellHierarchy, steps: int,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """`steps` AdamW steps over every image (steps=0: the random initial weights). Images go through the same
    decode and the same (random-init, seed 0) segmenter the registered model uses at inference."""
    spec = ImageSpec(size=config.ingest.image_size)
    images = np.stack([decode_image(storage.read_bytes(u), spec) for u in manifest.uri])
    label_maps = Segmenter("random", config.ingest.label_grid).label_maps(images)
    cells = hierarchy.assign(manifest.lat.to_numpy(), manifest.lon.to_numpy())
    data = {"image": torch.from_numpy(images), "label_map": torch.from_numpy(label_maps),
            "cells": torch.from_numpy(cells)}
    torch.manual_seed(seed)
    model = create_model(config.model, hierarchy)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(images), 32, replace=False))
        loss = model({k: v[idx] for k, v in data.items()})["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def register(config: PipelineConfig, state_dict: dict, hierarchy: GeocellHierarchy, example_image: bytes,
             run_name: str) -> str:
    """Log and register one version the way full_pipeline does (alias tracking.alias = challenger)."""
    import dataclasses

    start_mlflow_run(dataclasses.replace(config, run_name=run_name))
    try:
        _, version = log_and_register(state_dict, config, hierarchy,
                                      Segmenter("random", config.ingest.label_grid), example_image)
    finally:
        mlflow.end_run()
    return version


def make_im2gps3k_csv(manifest: pd.DataFrame, folder: Path, n: int = 24) -> Path:
    """An Im2GPS3k-format CSV (the public column set) over `n` GeoWorld images copied beside it, plus one
    broken image (a truncated JPEG), one row whose image file does not exist and one with a latitude of 95."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = manifest.iloc[:n]
    records = []
    for i, row in enumerate(rows.itertuples()):
        img_id = f"{row.image_id}.jpg"
        shutil.copyfile(row.uri, folder / img_id)
        records.append([img_id, f"author{i}", row.lat, row.lon, 1, 5, 100, 0.1, 0.6, 0.3])
    good = (folder / records[0][0]).read_bytes()
    (folder / BROKEN_IMAGE_ID).write_bytes(good[: len(good) // 3])  # cut mid-stream
    records.append([BROKEN_IMAGE_ID, "author_b", 48.85, 2.35, 2, 3, 50, 0.1, 0.1, 0.8])
    records.append([MISSING_IMAGE_ID, "author_m", 40.7, -74.0, 2, 3, 50, 0.1, 0.1, 0.8])
    shutil.copyfile(folder / records[0][0], folder / BAD_COORDINATES_ID)  # a good image, a bad coordinate
    records.append([BAD_COORDINATES_ID, "author_c", 95.0, 10.0, 1, 5, 100, 0.1, 0.6, 0.3])
    path = folder / "im2gps3k_places365.csv"
    pd.DataFrame(records, columns=IM2GPS_COLUMNS).to_csv(path, index=False)
    return path


def benchmarks(csv: Path) -> list[BenchmarkConfig]:
    """The GeoWorld test split (the default benchmark) and the Im2GPS3k-format CSV."""
    return [BenchmarkConfig(name="geoworld_test", format="geoworld", split="test"),
            BenchmarkConfig(name="im2gps3k_mini", manifest=str(csv), format="im2gps3k")]


def benchmark_overrides(csv: Path) -> str:
    """The same two benchmarks as a --set override."""
    return ("eval.benchmarks=[{name: geoworld_test, format: geoworld, split: test}, "
            f"{{name: im2gps3k_mini, manifest: '{csv}', format: im2gps3k}}]")
