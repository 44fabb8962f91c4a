"""The registered model as MLflow sees it: a pyfunc around a `GeoLocator`.

The signature comes from `predict`'s type hints (`list[ImageInput]` in, `list[Prediction]` out): MLflow validates
every request against it. `params={"k": …}` sets k.

Whoever calls the pyfunc (`mlflow models serve`, or anyone who loads the registered model) is treated as untrusted:
image bytes always, a `uri` only as the model's `serving` config allows (off by default; see
`GeoLocator.uri_access`). The owner reads local files with `geosurge predict` or `GeoLocator(..., trusted=True)`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from geosurge.data.images import ImageRejected
from geosurge.serving import (
    DEFAULT_TOP_K,
    GeoLocator,
    ImageInput,
    Prediction,
    as_image_records,
)


class GeoSurgePyfunc(mlflow.pyfunc.PythonModel):
    """The consumer-facing model: images in (see the module docstring), `list[Prediction]` out."""

    def load_context(self, context) -> None:
        self.locator = GeoLocator.from_artifacts(Path(context.artifacts["bundle"]))

    def predict(self, model_input: list[ImageInput], params: dict[str, Any] | None = None) -> list[Prediction]:
        k = int((params or {}).get("k", DEFAULT_TOP_K))
        if k < 1:
            raise MlflowException.invalid_parameter_value(f"params.k must be at least 1, got {k}")
        try:
            return self.locator.predict_inputs(model_input, k, trusted=False)
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
