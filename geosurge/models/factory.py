"""One registry to create every model by name, as timm's `create_model` does.

A model module registers a builder with `@register_model("name")`; the builder takes the run's
`ModelConfig` and the `HierarchySpec` of the geocells. Every model answers the same two calls:
`forward(batch) -> {"loss", ...}` for training (batch keys: image, label_map, lat, lon, cells) and
`predict(batch, k) -> {"lat", "lon", "score"[, "cell"]}` (top-k, best first) for inference.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from geosurge.config import ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models.hierarchy import HierarchySpec

ModelBuilder = Callable[[ModelConfig, HierarchySpec], nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def wrap(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(config: ModelConfig, hierarchy: HierarchySpec | GeocellHierarchy) -> nn.Module:
    """The model `config.name` for these geocells (a GeocellHierarchy or its HierarchySpec)."""
    if config.name not in _MODELS:
        raise ValueError(f"unknown model {config.name!r}; registered: {list_models()}")
    if isinstance(hierarchy, GeocellHierarchy):
        hierarchy = HierarchySpec.from_hierarchy(hierarchy)
    return _MODELS[config.name](config, hierarchy)
