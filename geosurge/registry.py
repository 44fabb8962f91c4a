"""MLflow Model Registry: the contract with consumers.

A registered GeoSURGE version is a pyfunc model whose input is images (a list of encoded image bytes) and
whose output is, per image, the top-k predicted places. Its artifacts are everything needed to answer
without the training code's state: fp32 weights, the geocell hierarchy, the run config and the segmenter
that makes the label maps.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pydantic
import torch
import yaml
from mlflow.tracking import MlflowClient

from geosurge.config import PipelineConfig
from geosurge.data.images import ImageSpec, decode_image
from geosurge.data.segment import Segmenter
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model


class Prediction(pydantic.BaseModel):
    """Top-k places for one image, best first. `score`: the model's probability for the place (for
    GeoSURGE, the hierarchical probability product); `cell`: the finest geocell, for cell-based models."""

    lat: list[float]
    lon: list[float]
    score: list[float]
    cell: list[int] | None = None


class GeoLocator:
    """A loaded model + segmenter that turns image bytes into `Prediction`s. Used by the pyfunc and by eval."""

    def __init__(self, model: torch.nn.Module, segmenter: Segmenter, config: PipelineConfig, hierarchy: GeocellHierarchy):
        self.model = model.eval()
        self.segmenter = segmenter
        self.config = config
        self.hierarchy = hierarchy
        self.spec = ImageSpec(size=config.ingest.image_size, max_pixels=config.ingest.max_image_pixels)

    @classmethod
    def from_artifacts(cls, root: str | Path) -> "GeoLocator":
        root = Path(root)
        config = PipelineConfig.from_dict(yaml.safe_load((root / "config.yaml").read_text()))
        hierarchy = GeocellHierarchy.load(str(root / "geocells.parquet"))
        model = create_model(config.model, hierarchy)
        model.load_state_dict(torch.load(root / "model.pt", map_location="cpu", weights_only=True))
        segmenter = Segmenter(str(root / "segmenter"), config.ingest.label_grid)
        return cls(model, segmenter, config, hierarchy)

    @torch.no_grad()
    def predict_arrays(self, images: np.ndarray, k: int = 5) -> dict[str, np.ndarray]:
        """uint8 images [B,H,W,3] (already at the model's size) → top-k arrays."""
        label_maps = self.segmenter.label_maps(images)
        out = self.model.predict({"image": torch.from_numpy(images), "label_map": torch.from_numpy(label_maps)}, k)
        return {key: value.cpu().numpy() for key, value in out.items()}

    def predict_bytes(self, images: list[bytes], k: int = 5) -> list[Prediction]:
        arrays = np.stack([decode_image(b, self.spec) for b in images])
        out = self.predict_arrays(arrays, k)
        return [
            Prediction(lat=out["lat"][i].tolist(), lon=out["lon"][i].tolist(), score=out["score"][i].tolist(),
                       cell=out["cell"][i].tolist() if "cell" in out else None)
            for i in range(len(images))
        ]


class GeoSurgePyfunc(mlflow.pyfunc.PythonModel):
    """The consumer-facing model: `predict(list of image bytes) -> list[Prediction]`."""

    def load_context(self, context) -> None:
        self.locator = GeoLocator.from_artifacts(Path(context.artifacts["bundle"]))

    def predict(self, model_input: list[bytes], params: dict | None = None) -> list[Prediction]:
        k = int((params or {}).get("k", 5))
        return self.locator.predict_bytes(model_input, k)


def write_bundle(root: Path, state_dict: dict, config: PipelineConfig, hierarchy: GeocellHierarchy, segmenter: Segmenter) -> Path:
    """Everything a consumer needs, in one folder (logged as the pyfunc's artifact)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, root / "model.pt")
    (root / "config.yaml").write_text(config.to_yaml())
    hierarchy.save(str(root / "geocells.parquet"))
    segmenter.model.save_pretrained(root / "segmenter")
    (root / "segmenter" / "geosurge.json").write_text(
        json.dumps({"spec": config.ingest.segmenter, "random_init": segmenter.is_random})
    )
    return root


def log_and_register(
    state_dict: dict,
    config: PipelineConfig,
    hierarchy: GeocellHierarchy,
    segmenter: Segmenter,
    example_image: bytes,
) -> tuple[str, str]:
    """Log the pyfunc model in the active MLflow run, register a new version and point the alias at it.
    Returns (model URI by alias, version)."""
    name, alias = config.tracking.registered_model, config.tracking.alias
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_bundle(Path(tmp) / "bundle", state_dict, config, hierarchy, segmenter)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models-from-code: no pickling
            artifacts={"bundle": str(bundle)},
            input_example=[example_image],
            registered_model_name=name,
            code_paths=[str(Path(__file__).parent)],  # the model carries the geosurge code it was trained with
            pip_requirements=_pip_requirements(),
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, alias, version)
    return f"models:/{name}@{alias}", version


def _pip_requirements() -> list[str]:
    """The runtime packages the model needs, pinned to the versions it was trained with."""
    from importlib.metadata import version

    packages = ["torch", "torchvision", "timm", "transformers", "h3", "scipy", "pandas", "pyarrow", "pillow", "pyyaml"]
    return [f"{p}=={version(p)}" for p in packages]
