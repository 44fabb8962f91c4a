"""MLflow Model Registry: log a trained model as a pyfunc, register it, point an alias at it; load it back.

A registered version carries everything needed to answer without the training code's state (the bundle of
`geosurge.serving.write_bundle`) and the whole `geosurge` package it was trained with (`code_paths`), so a
consumer in a fresh process loads it with `mlflow.pyfunc.load_model` alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

import geosurge
from geosurge.config import PipelineConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.segmentation.segmenter import Segmenter
from geosurge.serving import GeoLocator, write_bundle

PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_model.py")  # models-from-code: MLflow runs it, nothing is pickled
PACKAGE_DIR = Path(geosurge.__file__).parent  # the whole package travels with every registered model


def load_locator(model_uri: str, tracking_uri: str | None = None) -> GeoLocator:
    """The `GeoLocator` inside a logged GeoSURGE model (`models:/name@alias`, `models:/name/3`, `runs:/…`): the
    torch model, its geocell hierarchy and its run config, for jobs that need more than `predict` (the eval
    job's batch inference, fine-tuning from the champion)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().locator


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
            python_model=str(PYFUNC_ENTRY),
            artifacts={"bundle": str(bundle)},
            # records form, so the example is also a valid JSON scoring request; k becomes a serving param
            input_example=([{"image": example_image}], {"k": config.eval.top_k}),
            registered_model_name=name,
            code_paths=[str(PACKAGE_DIR)],  # the model carries the geosurge code it was trained with
            pip_requirements=_pip_requirements(),
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, alias, version)
    return f"models:/{name}@{alias}", version


def _pip_requirements() -> list[str]:
    """The runtime packages the model needs, pinned to the versions it was trained with."""
    from importlib.metadata import version

    packages = ["torch", "torchvision", "timm", "transformers", "h3", "scipy", "numpy", "pandas", "pyarrow",
                "pillow", "pyyaml", "pydantic", "requests", "reverse_geocoder"]
    return [f"{p}=={version(p)}" for p in packages]
