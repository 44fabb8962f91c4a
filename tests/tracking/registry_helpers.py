"""What the registry, CLI and serving tests share: a tiny randomly initialised model registered the way
full_pipeline registers one (`log_and_register` inside the run's MLflow run), and a few test photos.

Imported as `tests.tracking.registry_helpers`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import mlflow
import numpy as np
import torch

from geosurge.config import PipelineConfig, load_config
from geosurge.data.images import encode_jpeg
from geosurge.models import create_model
from geosurge.segmentation.segmenter import Segmenter
from geosurge.tracking.registry import log_and_register
from geosurge.tracking.runs import start_mlflow_run
from tests.models.model_helpers import TINY_VIT, small_hierarchy

TINY = [
    "ingest.image_size=32",
    "ingest.label_grid=4",  # the tiny ViT's patch grid (32 px / 8 px patches)
    "model.backbone_kwargs=" + str(TINY_VIT).replace("'", ""),
    "model.embed_dim=16",
    "model.fusion_heads=2",
]


def tiny_config(out: Path, tracking_uri: str, extra: list[str] | None = None) -> PipelineConfig:
    return load_config(None, [*TINY, f"output_dir={out}", f"tracking.tracking_uri={tracking_uri}", *(extra or [])])


@contextlib.contextmanager
def tracking_uri(uri: str):
    """Point MLflow (and, through MLFLOW_TRACKING_URI, its subprocesses) at `uri`; restore afterwards."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)


def register_tiny(config: PipelineConfig, run_name: str = "tiny", seed: int = 0) -> tuple[str, str]:
    """A randomly initialised model of `config.model` on the small test hierarchy, logged and registered as
    full_pipeline does. Returns (model URI by alias, version)."""
    hierarchy = small_hierarchy()
    torch.manual_seed(seed)
    model = create_model(config.model, hierarchy)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with tracking_uri(config.resolved_tracking_uri):
        start_mlflow_run(dataclasses.replace(config, run_name=run_name))
        try:
            return log_and_register(state_dict, config, hierarchy, Segmenter("random", config.ingest.label_grid),
                                    photo_bytes(0))
        finally:
            mlflow.end_run()


def photo_bytes(seed: int, size: tuple[int, int] = (40, 52)) -> bytes:
    """A JPEG 'photo' (smooth colour gradients plus noise), not at the model's size, so it is resized."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3) + np.stack([x * rng.uniform(-2, 2), y * rng.uniform(-2, 2), (x + y)], -1)
    return encode_jpeg(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
