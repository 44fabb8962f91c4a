"""MLflow Model Registry: the contract with consumers.

A registered GeoSURGE version is a pyfunc model. Its input is images, in any of these forms:
  - a list of encoded image bytes (JPEG, PNG, …);
  - a table (pandas DataFrame) with a column `image` (encoded bytes) or `uri` (a local path, file://, s3://
    read with the model's S3 settings and the AWS credential chain, or http(s)://); other columns are ignored;
  - a list of `{"image": …}` / `{"uri": …}` records (what a JSON request to `mlflow models serve` sends:
    `{"inputs": [{"image": "<base64>"}], "params": {"k": 5}}`).
Its output is, per image, the top-k places, best first: lat, lon, score, the finest geocell (None for
gallery-retrieval models) and the nearest named place (GeoNames, offline). `params={"k": …}` sets k.

The signature comes from `predict`'s type hints (`list[ImageInput]` in, `list[Prediction]` out): MLflow
validates every request against it. The artifacts are everything needed to answer without the training code's
state: fp32 weights, the geocell hierarchy, the run config and the segmenter that makes the label maps.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pydantic
import torch
import yaml
from h3.api import basic_int as h3
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from geosurge.config import PipelineConfig
from geosurge.data import storage
from geosurge.data.images import ImageRejected, ImageSpec, decode_image
from geosurge.data.segment import Segmenter
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model
from geosurge.places import Place, nearest_places

DEFAULT_TOP_K = 5
_REDACTED = "<hidden>"  # what PipelineConfig.to_dict writes in place of S3 credentials


class ImageInput(pydantic.BaseModel):
    """One image to locate: its encoded bytes (`image`), or where to read them (`uri`)."""

    image: bytes | None = None
    uri: str | None = None

    @pydantic.field_validator("image", mode="before")
    @classmethod
    def _base64_text(cls, value: Any) -> Any:
        # JSON has no bytes: a scoring request carries them as base64 text, as MLflow writes input examples
        if isinstance(value, str):
            try:
                return base64.b64decode("".join(value.split()), validate=True)  # MLflow's encoder adds newlines
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"`image` text must be base64-encoded image bytes ({e})") from None
        return value

    @pydantic.model_validator(mode="after")
    def _exactly_one_source(self) -> ImageInput:
        if (self.image is None) == (self.uri is None):
            raise ValueError("each image needs exactly one of `image` (encoded bytes) or `uri`")
        return self


class Candidate(pydantic.BaseModel):
    """One predicted place. `score`: the model's probability for it (for GeoSURGE, the product of the cell's
    and its ancestors' probabilities); `cell`: the finest geocell, as its H3 index (e.g. "85283473fffffff"),
    None for models that retrieve coordinates from a GPS gallery; `place`: the nearest named place to (lat, lon)."""

    lat: float
    lon: float
    score: float
    cell: str | None = None
    place: Place


class Prediction(pydantic.BaseModel):
    """The top-k places for one image, best first."""

    top_k: list[Candidate]

    # column views, for code that wants arrays of the k answers
    @property
    def lat(self) -> list[float]:
        return [c.lat for c in self.top_k]

    @property
    def lon(self) -> list[float]:
        return [c.lon for c in self.top_k]

    @property
    def score(self) -> list[float]:
        return [c.score for c in self.top_k]

    @property
    def cell(self) -> list[str] | None:
        return None if any(c.cell is None for c in self.top_k) else [c.cell for c in self.top_k]


def predictions_from_arrays(out: dict[str, np.ndarray], finest_h3: np.ndarray) -> list[Prediction]:
    """`GeoLocator.predict_arrays` output ([B, k] arrays; `cell` indexes the finest level, whose H3 ids are
    `finest_h3`) → one `Prediction` per image, places included."""
    lat, lon, score = out["lat"], out["lon"], out["score"]
    cells = [h3.int_to_str(int(c)) for c in finest_h3[out["cell"].ravel()]] if "cell" in out else None
    places = nearest_places(lat.ravel(), lon.ravel())
    k = lat.shape[1]
    return [
        Prediction(top_k=[
            Candidate(lat=float(lat[i, j]), lon=float(lon[i, j]), score=float(score[i, j]),
                      cell=cells[i * k + j] if cells is not None else None, place=places[i * k + j])
            for j in range(k)
        ])
        for i in range(lat.shape[0])
    ]


class GeoLocator:
    """A loaded model + segmenter that turns images into `Prediction`s. Used by the pyfunc and by eval."""

    def __init__(self, model: torch.nn.Module, segmenter: Segmenter, config: PipelineConfig, hierarchy: GeocellHierarchy):
        self.model = model.eval()
        self.segmenter = segmenter
        self.config = config
        self.hierarchy = hierarchy
        self.spec = ImageSpec(size=config.ingest.image_size, max_pixels=config.ingest.max_image_pixels)
        self.finest_h3 = hierarchy.levels[-1]["h3"].to_numpy(np.uint64)  # the models' `cell` indexes these

    @classmethod
    def from_artifacts(cls, root: str | Path) -> GeoLocator:
        root = Path(root)
        config = PipelineConfig.from_dict(yaml.safe_load((root / "config.yaml").read_text()))
        # the logged config has its S3 credentials redacted: a consumer's come from the AWS credential chain
        if config.s3.access_key_id == _REDACTED:
            config.s3.access_key_id = None
        if config.s3.secret_access_key == _REDACTED:
            config.s3.secret_access_key = None
        hierarchy = GeocellHierarchy.load(str(root / "geocells.parquet"))
        model = create_model(config.model, hierarchy)
        model.load_state_dict(torch.load(root / "model.pt", map_location="cpu", weights_only=True))
        segmenter = Segmenter(str(root / "segmenter"), config.ingest.label_grid)
        # a saved random-init segmenter loads as an ordinary folder: keep what write_bundle recorded about it
        segmenter.is_random = json.loads((root / "segmenter" / "geosurge.json").read_text())["random_init"]
        return cls(model, segmenter, config, hierarchy)

    @torch.no_grad()
    def predict_arrays(self, images: np.ndarray, k: int = DEFAULT_TOP_K) -> dict[str, np.ndarray]:
        """uint8 images [B,H,W,3] (already at the model's size) → top-k arrays."""
        label_maps = self.segmenter.label_maps(images)
        out = self.model.predict({"image": torch.from_numpy(images), "label_map": torch.from_numpy(label_maps)}, k)
        return {key: value.cpu().numpy() for key, value in out.items()}

    def predict_bytes(self, images: list[bytes], k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Encoded images → their top-k places. Raises `ImageRejected` (its detail names the image's position)
        for an input that is not a usable image."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        arrays = []
        for i, data in enumerate(images):
            try:
                arrays.append(decode_image(data, self.spec))
            except ImageRejected as e:
                raise ImageRejected(e.reason, f"image {i}: {e.detail}") from None
        predictions: list[Prediction] = []
        batch = max(1, self.config.eval.batch_size)
        for start in range(0, len(arrays), batch):
            out = self.predict_arrays(np.stack(arrays[start:start + batch]), k)
            predictions += predictions_from_arrays(out, self.finest_h3)
        return predictions

    def read_image(self, uri: str) -> bytes:
        """The bytes behind a URI: local path, file://, s3:// (this model's S3 settings) or http(s)://."""
        try:
            return storage.read_bytes(uri, self.config.s3)
        except FileNotFoundError as e:
            raise ImageRejected("not_found", f"{uri}: {e}") from None
        except (OSError, ValueError) as e:  # storage/HTTP errors other than a missing object
            raise ImageRejected("fetch_error", f"{uri}: {e}") from None

    def predict_inputs(self, inputs: list[ImageInput], k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Validated inputs (bytes or URIs) → their top-k places."""
        images = []
        for i, item in enumerate(inputs):
            if item.image is not None:
                images.append(item.image)
                continue
            try:
                images.append(self.read_image(item.uri))
            except ImageRejected as e:
                raise ImageRejected(e.reason, f"image {i}: {e.detail}") from None
        return self.predict_bytes(images, k)


def load_locator(model_uri: str, tracking_uri: str | None = None) -> GeoLocator:
    """The `GeoLocator` inside a logged GeoSURGE model (`models:/name@alias`, `models:/name/3`, `runs:/…`): the
    torch model, its geocell hierarchy and its run config, for jobs that need more than `predict` (the eval
    job's batch inference, fine-tuning from the champion)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().locator


def as_image_records(model_input: Any) -> Any:
    """The shorthand input forms → what `list[ImageInput]` validates: bare encoded bytes become
    `{"image": …}`, bare text becomes `{"uri": …}`, a Series becomes a list. DataFrames and records pass as they
    are (MLflow turns a DataFrame into one record per row)."""
    if isinstance(model_input, pd.Series):
        model_input = model_input.tolist()
    if isinstance(model_input, np.ndarray) and model_input.ndim == 1:
        model_input = model_input.tolist()
    if isinstance(model_input, (list, tuple)):
        return [
            {"image": bytes(item)} if isinstance(item, (bytes, bytearray, memoryview))
            else {"uri": item} if isinstance(item, str)
            else item
            for item in model_input
        ]
    return model_input


class GeoSurgePyfunc(mlflow.pyfunc.PythonModel):
    """The consumer-facing model: images in (see the module docstring), `list[Prediction]` out."""

    def load_context(self, context) -> None:
        self.locator = GeoLocator.from_artifacts(Path(context.artifacts["bundle"]))

    def predict(self, model_input: list[ImageInput], params: dict[str, Any] | None = None) -> list[Prediction]:
        k = int((params or {}).get("k", DEFAULT_TOP_K))
        if k < 1:
            raise MlflowException.invalid_parameter_value(f"params.k must be at least 1, got {k}")
        try:
            return self.locator.predict_inputs(model_input, k)
        except ImageRejected as e:  # the request's fault: a 400 from the scoring server, not a 500
            raise MlflowException.invalid_parameter_value(str(e)) from e


def _accepting_shorthand_inputs(validated_predict):
    # MLflow wraps `predict` (when the class is created) to validate its input against the type hint before the
    # body runs; this outer layer turns bare bytes / URIs into records first, so those forms validate too.
    @functools.wraps(validated_predict)
    def predict(self, model_input, params=None):
        return validated_predict(self, as_image_records(model_input), params=params)

    return predict


GeoSurgePyfunc.predict = _accepting_shorthand_inputs(GeoSurgePyfunc.predict)


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
            # records form, so the example is also a valid JSON scoring request; k becomes a serving param
            input_example=([{"image": example_image}], {"k": config.eval.top_k}),
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

    packages = ["torch", "torchvision", "timm", "transformers", "h3", "scipy", "numpy", "pandas", "pyarrow",
                "pillow", "pyyaml", "pydantic", "requests", "reverse_geocoder"]
    return [f"{p}=={version(p)}" for p in packages]
