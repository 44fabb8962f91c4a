"""Models: one registry (`create_model`) for GeoSURGE and the baselines."""

from geosurge.models.factory import create_model, list_models

__all__ = ["create_model", "list_models"]
