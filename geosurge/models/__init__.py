"""Models: one registry (`create_model`) for GeoSURGE and the baselines.

Importing this package imports every model module, and each registers itself with `register_model`.
"""

from geosurge.models import flat as _flat  # noqa: F401  (registers "flat_classifier")
from geosurge.models import geoclip as _geoclip  # noqa: F401  (registers "geoclip")
from geosurge.models import geodecoder as _geodecoder  # noqa: F401  (registers "geodecoder")
from geosurge.models import geosurge as _geosurge  # noqa: F401  (registers "geosurge")
from geosurge.models.factory import create_model, list_models, register_model
from geosurge.models.hierarchy import HierarchySpec

__all__ = ["HierarchySpec", "create_model", "list_models", "register_model"]
