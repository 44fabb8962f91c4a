"""One registry to create every model by name, as timm's `create_model` does.

A model module registers a builder with `@register_model("name")`; the builder takes the run's
`ModelConfig` and the `HierarchySpec` of the geocells. Every model answers the same two calls:
`forward(batch) -> {"loss", ...}` for training (batch keys: image, label_map, lat, lon, cells) and
`predict(batch, k) -> {"lat", "lon", "score"[, "cell"]}` (top-k, best first) for inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from geosurge.config import ModelConfig, S3Config
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models.backbone import Backbone
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


def create_model(
    config: ModelConfig,
    hierarchy: HierarchySpec | GeocellHierarchy,
    *,
    s3: S3Config | None = None,
    pretrained: bool | None = None,
) -> nn.Module:
    """The model `config.name` for these geocells (a GeocellHierarchy or its HierarchySpec).

    `s3`: how to reach `config.pretrained_file` on s3:// (None: the AWS credential chain). `pretrained`
    overrides `config.pretrained`: False builds random backbone weights and reads nothing (no hub download, no
    weights file), for a model whose trained weights are loaded next or one built on the meta device to count
    its parameters.
    """
    if config.name not in _MODELS:
        raise ValueError(f"unknown model {config.name!r}; registered: {list_models()}")
    if isinstance(hierarchy, GeocellHierarchy):
        hierarchy = HierarchySpec.from_hierarchy(hierarchy)
    if pretrained is not None:
        config = dataclasses.replace(config, pretrained=pretrained,
                                     pretrained_file=config.pretrained_file if pretrained else None)
    weights_file = config.pretrained_file if config.pretrained else None
    if weights_file:  # builders make their backbone from the config alone: build without it, load it here with s3
        config = dataclasses.replace(config, pretrained=False, pretrained_file=None)
    model = _MODELS[config.name](config, hierarchy)
    if weights_file:
        backbones = [m for m in model.modules() if isinstance(m, Backbone)]
        if not backbones:
            raise ValueError(f"model {config.name!r} has no backbone to load model.pretrained_file into")
        for backbone in backbones:
            backbone.load_pretrained_file(weights_file, s3)
    return model
