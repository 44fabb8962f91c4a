"""One registry to create every model by name, as timm's `create_model` does."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from geosurge.config import ModelConfig
from geosurge.models.geosurge import GeoSurge, HierarchySpec

_MODELS: dict[str, Callable[[ModelConfig, HierarchySpec], nn.Module]] = {}


def register_model(name: str):
    def wrap(fn: Callable[[ModelConfig, HierarchySpec], nn.Module]):
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(config: ModelConfig, hierarchy: HierarchySpec) -> nn.Module:
    if config.name not in _MODELS:
        raise ValueError(f"unknown model {config.name!r}; registered: {list_models()}")
    return _MODELS[config.name](config, hierarchy)


@register_model("geosurge")
def _geosurge(config: ModelConfig, hierarchy: HierarchySpec) -> GeoSurge:
    return GeoSurge(
        hierarchy,
        backbone=config.backbone,
        backbone_kwargs=config.backbone_kwargs,
        pretrained=config.pretrained,
        trainable_blocks=config.trainable_blocks,
        embed_dim=config.embed_dim,
        fusion=config.fusion,
        fusion_blocks=config.fusion_blocks,
        fusion_heads=config.fusion_heads,
        temperature_init=config.temperature_init,
    )
