"""Every registered model, as timm tests its models: one batch through training and inference, gradients checked."""

import numpy as np
import pytest
import torch

from geosurge.config import GeoClipConfig, ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model, list_models

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def hierarchy() -> GeocellHierarchy:
    rng = np.random.default_rng(0)
    centres = np.array([[48.8, 2.3], [40.7, -74.0], [35.7, 139.7], [-33.9, 151.2]])
    pts = centres[rng.integers(0, len(centres), 1200)] + rng.normal(0, 3, (1200, 2))
    return GeocellHierarchy.build(pts[:, 0], pts[:, 1], (300, 100, 30), 5)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("gallery") / "gallery.csv"
    rng = np.random.default_rng(1)
    np.savetxt(path, np.c_[rng.uniform(-60, 70, 300), rng.uniform(-180, 180, 300)], delimiter=",", header="lat,lon", comments="")
    return str(path)


def _batch(h: GeocellHierarchy, n: int = 4) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(2)
    lat, lon = h.cell_coordinates(h.num_levels - 1)
    idx = rng.integers(0, len(lat), n)
    return {
        "image": torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
        "label_map": torch.from_numpy(rng.integers(0, 150, (n, 4, 4), dtype=np.uint8)),
        "lat": torch.from_numpy(lat[idx]),
        "lon": torch.from_numpy(lon[idx]),
        "cells": torch.from_numpy(h.assign(lat[idx], lon[idx])),
    }


def test_all_four_models_are_registered():
    assert set(list_models()) >= {"geosurge", "geoclip", "geodecoder", "flat_classifier"}


@pytest.mark.parametrize("name", list_models())
def test_train_step_and_inference(name, hierarchy, gallery):
    torch.manual_seed(0)
    config = ModelConfig(name=name, backbone_kwargs=TINY, embed_dim=16, fusion_heads=2,
                         geoclip=GeoClipConfig(gallery=gallery, pretrained_location_encoder=False))
    model = create_model(config, HierarchySpec.from_hierarchy(hierarchy))
    batch = _batch(hierarchy)

    model.train()
    loss = model(batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for pname, p in trainable:
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"

    model.eval()
    out = model.predict(batch, k=3)
    for key in ("lat", "lon", "score"):
        assert out[key].shape == (4, 3), key
    assert (out["score"][:, :-1] >= out["score"][:, 1:]).all()
    assert ((out["lat"].abs() <= 90) & (out["lon"].abs() <= 180)).all()
