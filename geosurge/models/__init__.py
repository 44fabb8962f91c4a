"""Models: one registry (`create_model`) for GeoSURGE and the baselines.

Importing this package imports every model module, and each registers itself with `register_model`.
"""

from geosurge.models import geosurge as _geosurge  # noqa: F401  (registers "geosurge")
from geosurge.models.factory import create_model, list_models, register_model
from geosurge.models.hierarchy import HierarchySpec

__all__ = ["HierarchySpec", "create_model", "list_models", "register_model"]
