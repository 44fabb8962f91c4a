"""Flat classifier: gradients reach every parameter, loss = hand-computed cross-entropy, predict = argmax cell."""

import numpy as np
import pytest
import torch

from geosurge.config import ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model
from geosurge.models.flat import FlatClassifier
from geosurge.models.tta import ten_crop_views
from tests.models.model_helpers import TINY_VIT, random_batch, small_hierarchy

TINY = TINY_VIT


@pytest.fixture(scope="module")
def hierarchy() -> GeocellHierarchy:
    return small_hierarchy()


_batch = random_batch


def _model(h: GeocellHierarchy) -> FlatClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(name="flat_classifier", backbone="vit_tiny_patch16_224", backbone_kwargs=TINY)
    model = create_model(cfg, HierarchySpec.from_hierarchy(h))
    assert isinstance(model, FlatClassifier)
    return model


def test_classifies_over_the_finest_cells_only(hierarchy):
    assert _model(hierarchy).head.out_features == hierarchy.num_cells[-1] > hierarchy.num_cells[0]


def test_every_parameter_gets_a_finite_gradient(hierarchy):
    model = _model(hierarchy)
    out = model(_batch(hierarchy))
    assert torch.isfinite(out["loss"]) and out["logits"].shape == (6, hierarchy.num_cells[-1])
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_loss_equals_hand_computed_cross_entropy_with_the_finest_cells(hierarchy):
    model = _model(hierarchy).double().eval()
    batch = _batch(hierarchy)
    image = batch["image"].permute(0, 3, 1, 2).double() / 255
    out = model({**batch, "image": image})
    logits = model.logits(image)
    true = batch["cells"][:, -1]
    # -log softmax(logits)[true], averaged over the batch
    expected = (torch.logsumexp(logits, 1) - logits[torch.arange(len(true)), true]).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-9)
    # the coarser levels play no part: changing them leaves the loss as it is
    coarse_changed = batch["cells"].clone()
    coarse_changed[:, :-1] = 0
    assert model({**batch, "image": image, "cells": coarse_changed})["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-12)


def test_predict_returns_the_argmax_cell_and_its_coordinates(hierarchy):
    model = _model(hierarchy).eval()
    batch = _batch(hierarchy)
    probs = torch.softmax(model.logits(batch["image"]).detach(), -1)
    out = model.predict(batch, k=3)
    assert out["cell"].shape == out["score"].shape == out["lat"].shape == (6, 3)
    assert torch.equal(out["cell"][:, 0], probs.argmax(-1))
    assert torch.allclose(out["score"], probs.gather(1, out["cell"]), atol=1e-6)
    assert (out["score"][:, :-1] >= out["score"][:, 1:]).all()
    lat, lon = hierarchy.cell_coordinates(hierarchy.num_levels - 1)
    assert np.allclose(out["lat"].numpy(), lat[out["cell"].numpy()])
    assert np.allclose(out["lon"].numpy(), lon[out["cell"].numpy()])


def test_ten_crop_averages_the_softmax_over_the_ten_views(hierarchy):
    model = _model(hierarchy).eval()
    batch = _batch(hierarchy)
    with torch.no_grad():
        views = ten_crop_views(batch["image"], None)
        probs = torch.stack([torch.softmax(model.logits(image), -1) for image, _ in views]).mean(0)
    out = model.predict(batch, k=3, ten_crop=True)
    assert torch.equal(out["cell"][:, 0], probs.argmax(-1))
    assert torch.allclose(out["score"], probs.gather(1, out["cell"]), atol=1e-6)
    assert not torch.allclose(out["score"], model.predict(batch, k=3)["score"])
