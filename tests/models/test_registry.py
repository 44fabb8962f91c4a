"""Every registered model, as timm tests its models: one batch through training and inference, gradients checked.
Then the MLflow Model Registry side: a registered version on a real `mlflow server`, consumed as a pyfunc."""


import numpy as np
import pytest
import torch

from geosurge.config import GeoClipConfig, ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model, list_models
from tests.models.model_helpers import TINY_VIT, random_batch, small_hierarchy


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


@pytest.mark.parametrize("name", list_models())
def test_train_step_and_inference_with_bf16_parameters_and_fp32_buffers(name, hierarchy, gallery):
    """`train.bf16` as DeepSpeed does it: parameters cast to bf16, buffers (pixel statistics, cell tables) kept
    in fp32, the batch as the trainer feeds it (uint8 images)."""
    torch.manual_seed(0)
    config = ModelConfig(name=name, backbone_kwargs=TINY_VIT, embed_dim=16, fusion_heads=2,
                         geoclip=GeoClipConfig(gallery=gallery, pretrained_location_encoder=False))
    model = create_model(config, HierarchySpec.from_hierarchy(hierarchy))
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    assert any(b.dtype == torch.float32 for b in model.buffers())
    batch = random_batch(hierarchy, n=4, seed=2)

    model.train()
    loss = model(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16
               for p in model.parameters() if p.requires_grad)
    model.eval()
    out = model.predict(batch, k=3)
    assert torch.isfinite(out["score"]).all() and ((out["lat"].abs() <= 90) & (out["lon"].abs() <= 180)).all()


@pytest.mark.parametrize("name", list_models())
def test_ten_crop_keeps_the_output_shapes_and_changes_the_prediction(name, hierarchy, gallery):
    torch.manual_seed(0)
    config = ModelConfig(name=name, backbone_kwargs=TINY_VIT, embed_dim=16, fusion_heads=2,
                         geoclip=GeoClipConfig(gallery=gallery, pretrained_location_encoder=False))
    model = create_model(config, HierarchySpec.from_hierarchy(hierarchy)).eval()
    batch = random_batch(hierarchy, n=4, seed=2)
    single, ten = model.predict(batch, k=3), model.predict(batch, k=3, ten_crop=True)
    assert set(ten) == set(single)
    for key, value in single.items():
        assert ten[key].shape == value.shape and ten[key].dtype == value.dtype, key
    # averaged probabilities: still sorted and positive, but not the single view's (random weights see each crop
    # differently)
    assert (ten["score"][:, :-1] >= ten["score"][:, 1:]).all() and (ten["score"] > 0).all()
    assert not torch.allclose(ten["score"], single["score"])


def test_retrieval_models_have_no_cell():
    from geosurge.serving import predictions_from_arrays

    out = {"lat": np.array([[48.85, 40.71]]), "lon": np.array([[2.35, -74.0]]), "score": np.array([[0.6, 0.3]])}
    (prediction,) = predictions_from_arrays(out, finest_h3=np.array([], np.uint64))
    assert [c.cell for c in prediction.top_k] == [None, None] and prediction.cell is None
    assert [(c.place.name, c.place.country_code) for c in prediction.top_k] == [("Paris", "FR"),
                                                                                 ("New York City", "US")]
