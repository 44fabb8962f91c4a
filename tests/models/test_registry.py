"""Every registered model, as timm tests its models: one batch through training and inference, gradients checked."""

import numpy as np
import pytest
import torch
from model_helpers import TINY_VIT, random_batch, small_hierarchy

from geosurge.config import GeoClipConfig, ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model, list_models


@pytest.fixture(scope="module")
def hierarchy() -> GeocellHierarchy:
    return small_hierarchy()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("gallery") / "gallery.csv"
    rng = np.random.default_rng(1)
    np.savetxt(path, np.c_[rng.uniform(-60, 70, 300), rng.uniform(-180, 180, 300)], delimiter=",", header="lat,lon", comments="")
    return str(path)


def test_all_four_models_are_registered():
    assert set(list_models()) >= {"geosurge", "geoclip", "geodecoder", "flat_classifier"}


@pytest.mark.parametrize("name", list_models())
def test_train_step_and_inference(name, hierarchy, gallery):
    torch.manual_seed(0)
    config = ModelConfig(name=name, backbone_kwargs=TINY_VIT, embed_dim=16, fusion_heads=2,
                         geoclip=GeoClipConfig(gallery=gallery, pretrained_location_encoder=False))
    model = create_model(config, HierarchySpec.from_hierarchy(hierarchy))
    batch = random_batch(hierarchy, n=4, seed=2)

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
