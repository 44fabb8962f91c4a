"""The consumer contract: `GeoLocator` (a loaded model that locates images) and `Prediction` (what it answers).
No MLflow here: `geosurge.tracking` wraps a locator as the registered pyfunc."""

from geosurge.serving.locator import GeoLocator, write_bundle
from geosurge.serving.prediction import (
    DEFAULT_TOP_K,
    Candidate,
    ImageInput,
    Prediction,
    as_image_records,
    predictions_from_arrays,
)

__all__ = ["DEFAULT_TOP_K", "Candidate", "GeoLocator", "ImageInput", "Prediction", "as_image_records",
           "predictions_from_arrays", "write_bundle"]
