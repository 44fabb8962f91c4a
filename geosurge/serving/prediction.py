"""The consumer contract: what a registered model takes (`ImageInput`) and returns (`Prediction`).

Input is images, in any of these forms:
  - a list of encoded image bytes (JPEG, PNG, …);
  - a table (pandas DataFrame) with a column `image` (encoded bytes) or `uri` (a local path, file://, s3://
    read with the model's S3 settings and the AWS credential chain, or http(s)://); other columns are ignored;
  - a list of `{"image": …}` / `{"uri": …}` records (what a JSON request to `mlflow models serve` sends:
    `{"inputs": [{"image": "<base64>"}], "params": {"k": 5}}`).
Output is, per image, the top-k places, best first: lat, lon, score, the finest geocell (None for
gallery-retrieval models) and the nearest named place (GeoNames, offline).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pydantic
from h3.api import basic_int as h3

from geosurge.geo.places import Place, nearest_places

DEFAULT_TOP_K = 5


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


@dataclass
class Belief:
    """A model's whole belief for one image: every candidate place it scores, best first (what a belief map
    draws). `cell`: the finest geocells' H3 indexes; None for gallery retrieval (GeoCLIP), whose candidates are
    the gallery's coordinates."""

    lat: np.ndarray  # [N]
    lon: np.ndarray  # [N]
    prob: np.ndarray  # [N] the model's probability of each candidate (GeoSURGE: the product over the ancestors)
    cell: list[str] | None = None


def beliefs_from_arrays(out: dict[str, np.ndarray], finest_h3: np.ndarray) -> list[Belief]:
    """`GeoLocator.predict_arrays` output over every candidate ([B, N] arrays) → one `Belief` per image."""
    beliefs = []
    for i in range(out["lat"].shape[0]):
        cells = None
        if "cell" in out:
            cells = [h3.int_to_str(int(c)) for c in finest_h3[out["cell"][i]]]
        beliefs.append(Belief(lat=out["lat"][i].astype(np.float64), lon=out["lon"][i].astype(np.float64),
                              prob=out["score"][i].astype(np.float64), cell=cells))
    return beliefs


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
