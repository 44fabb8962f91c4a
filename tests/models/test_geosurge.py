"""GeoSURGE model: gradients reach every trainable parameter, inference = brute-force products, loss = reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geosurge.config import ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import create_model, list_models
from geosurge.models import HierarchySpec

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def hierarchy() -> GeocellHierarchy:
    rng = np.random.default_rng(0)
    centres = np.array([[48.8, 2.3], [40.7, -74.0], [35.7, 139.7], [-33.9, 151.2], [-23.5, -46.6]])
    pts = centres[rng.integers(0, len(centres), 1500)] + rng.normal(0, 3, (1500, 2))
    return GeocellHierarchy.build(pts[:, 0], pts[:, 1], (400, 150, 40), 5)


def _batch(h: GeocellHierarchy, n: int = 6, grid: int = 4) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(1)
    lat, lon = h.cell_coordinates(h.num_levels - 1)
    idx = rng.integers(0, len(lat), n)
    return {
        "image": torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
        "label_map": torch.from_numpy(rng.integers(0, 150, (n, grid, grid), dtype=np.uint8)),
        "cells": torch.from_numpy(h.assign(lat[idx], lon[idx])),
    }


def _model(h, **overrides):
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", backbone_kwargs=TINY, embed_dim=16, fusion_heads=2, **overrides)
    return create_model(cfg, HierarchySpec.from_hierarchy(h))


def test_hierarchy_has_several_levels_of_growing_size(hierarchy):
    assert hierarchy.num_levels == 3 and hierarchy.num_cells[0] < hierarchy.num_cells[-1]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("fusion", [True, False])
def test_every_trainable_parameter_gets_a_finite_gradient(hierarchy, name, fusion):
    model = _model(hierarchy, name=name, fusion=fusion)
    out = model(_batch(hierarchy))
    assert torch.isfinite(out["loss"]) and out["embedding"].shape == (6, 16)
    out["loss"].backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_frozen_backbone_blocks_get_no_gradient(hierarchy):
    model = _model(hierarchy, trainable_blocks=1)
    model(_batch(hierarchy))["loss"].backward()
    frozen = [n for n, p in model.named_parameters() if n.startswith("backbone.") and not n.startswith(("backbone.model.blocks.1.", "backbone.model.norm."))]
    assert frozen
    for n, p in model.named_parameters():
        if n in frozen:
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.requires_grad and p.grad is not None, n


def test_label_maps_at_another_grid_are_pooled_to_the_patch_grid(hierarchy):
    model = _model(hierarchy)
    assert torch.isfinite(model(_batch(hierarchy, grid=8))["loss"])


def test_fusion_uses_the_label_map(hierarchy):
    model = _model(hierarchy).eval()
    batch = _batch(hierarchy)
    other = dict(batch, label_map=(batch["label_map"] + 7) % 150)
    assert not torch.allclose(model(batch)["embedding"], model(other)["embedding"])


def test_hierarchical_scores_equal_brute_force_products(hierarchy):
    model = _model(hierarchy).eval()
    torch.manual_seed(0)
    v = F.normalize(torch.randn(4, 16), dim=-1)
    probs = [F.softmax(l.double(), -1) for l in model.level_logits(v)]
    fine = hierarchy.num_cells[-1]
    expected = torch.empty(4, fine, dtype=torch.float64)
    for i in range(fine):  # walk each finest cell's parent chain by hand
        score, cell = probs[-1][:, i].clone(), i
        for level in range(hierarchy.num_levels - 1, 0, -1):
            cell = int(hierarchy.parents(level)[cell])
            score *= probs[level - 1][:, cell]
        expected[:, i] = score
    assert torch.allclose(model.finest_log_scores(v).exp().double(), expected, atol=1e-6)


def test_predict_returns_top_k_finest_cells_with_their_coordinates(hierarchy):
    model = _model(hierarchy).eval()
    out = model.predict(_batch(hierarchy), k=3)
    assert out["cell"].shape == (6, 3) and (out["score"][:, :-1] >= out["score"][:, 1:]).all()
    lat, lon = hierarchy.cell_coordinates(hierarchy.num_levels - 1)
    assert np.allclose(out["lat"].numpy(), lat[out["cell"].numpy()])
    assert np.allclose(out["lon"].numpy(), lon[out["cell"].numpy()])


def test_loss_equals_float64_reference(hierarchy):
    model = _model(hierarchy).double().eval()
    batch = _batch(hierarchy)
    out = model({**batch, "image": batch["image"].permute(0, 3, 1, 2).double() / 255})
    v = out["embedding"]
    expected = 0.0
    for level, g in enumerate(model.cell_embeddings):
        g = g / g.norm(dim=-1, keepdim=True)
        tau = math.exp(model.log_temperature[level].item())
        logits = (v @ g.t()) / tau
        true = batch["cells"][:, level]
        # InfoNCE: -log(exp(v·g_true/τ) / Σ_j exp(v·g_j/τ)), averaged over the batch, summed over levels
        expected += (-(logits.gather(1, true[:, None]).squeeze(1) - torch.logsumexp(logits, 1))).mean().item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-9)


def test_unknown_model_name_is_a_clear_error(hierarchy):
    with pytest.raises(ValueError, match="registered"):
        _model(hierarchy, name="nope")
