"""GeoCLIP: parity with the `geoclip` package's released location encoder, training loss with the GPS queue,
gallery retrieval and its cache."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from geosurge.config import GeoClipConfig, ModelConfig
from geosurge.models import HierarchySpec, create_model
from geosurge.models.geoclip import (
    GaussianFourierFeatures,
    GeoClip,
    LocationEncoder,
    equal_earth_projection,
    geoclip_package_file,
    load_gallery,
    load_geoclip_location_weights,
)
from geosurge.models.tta import ten_crop_views

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}
NO_CELLS = HierarchySpec((1,), (np.array([-1]),), (np.zeros(1),), (np.zeros(1),))  # GeoCLIP ignores the hierarchy


def _coords(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(n, generator=g) * 180 - 90, torch.rand(n, generator=g) * 360 - 180], dim=1)


def _model(gallery: str = "geoclip", queue_size: int = 8, pretrained_location_encoder: bool = False) -> GeoClip:
    cfg = ModelConfig(
        name="geoclip",
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=TINY,
        geoclip=GeoClipConfig(
            queue_size=queue_size, gallery=gallery, pretrained_location_encoder=pretrained_location_encoder
        ),
    )
    return create_model(cfg, NO_CELLS)


def _batch(n: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    latlon = _coords(n, seed).double()  # the shards' lat/lon arrive as float64
    return {
        "image": torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
        "lat": latlon[:, 0],
        "lon": latlon[:, 1],
    }


@pytest.fixture(scope="module")
def released_encoder() -> LocationEncoder:
    return load_geoclip_location_weights(LocationEncoder()).eval()


@pytest.fixture(scope="module")
def package():
    """The package's own location-encoder module (its real code; loads weights from its folder, no network)."""
    from geoclip.model import location_encoder

    return location_encoder


def test_released_weights_reproduce_the_package_location_encoder(released_encoder, package):
    reference = package.LocationEncoder(from_pretrained=True).eval()
    latlon = _coords(1000, seed=0)
    with torch.no_grad():
        theirs, ours = reference(latlon), released_encoder(latlon)
        assert (ours - theirs).abs().max().item() < 1e-5
        normalised = released_encoder.encode_locations(latlon[:, 0], latlon[:, 1])
        assert (normalised - F.normalize(theirs, dim=-1)).abs().max().item() < 1e-5
        # the comparison can fail: an encoder without the released weights is far from the package's output
        assert (LocationEncoder()(latlon) - theirs).abs().max().item() > 1e-3


def test_equal_earth_projection_matches_the_package(package):
    latlon = _coords(1000, seed=3)
    assert torch.allclose(equal_earth_projection(latlon), package.equal_earth_projection(latlon), atol=1e-6, rtol=0)


def test_fourier_features_match_the_package_encoding_for_the_same_matrix(package):
    ours = GaussianFourierFeatures(sigma=16.0)
    theirs = package.GaussianEncoding(b=ours.b.clone())
    v = torch.randn(50, 2)
    assert torch.allclose(ours(v), theirs(v), atol=1e-6, rtol=0)


def test_released_weights_reject_a_mismatched_encoder():
    with pytest.raises(ValueError, match="keys do not match"):
        load_geoclip_location_weights(LocationEncoder(sigmas=(1.0, 16.0)))
    with pytest.raises(ValueError, match="σ"):
        load_geoclip_location_weights(LocationEncoder(sigmas=(1.0, 16.0, 64.0)))


def test_factory_builds_geoclip_with_the_released_location_encoder(released_encoder):
    model = _model(pretrained_location_encoder=True)
    assert isinstance(model, GeoClip)
    for name, tensor in released_encoder.state_dict().items():
        assert torch.equal(model.location_encoder.state_dict()[name], tensor), name


def test_every_trainable_parameter_gets_a_finite_gradient_and_rff_matrices_are_buffers():
    model = _model()
    out = model(_batch())
    assert torch.isfinite(out["loss"]) and out["embedding"].shape == (6, 512)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    buffers = {name for name, _ in model.named_buffers()}
    assert {f"location_encoder.branches.{i}.rff.b" for i in range(3)} <= buffers
    assert not any(name.endswith("rff.b") for name, _ in model.named_parameters())
    assert "location_encoder.branches.0.rff.b" in model.state_dict()  # fixed, but part of the weights


def test_loss_is_cross_entropy_against_batch_and_queued_gps():
    model = _model(queue_size=8).double()
    model(_batch(4, seed=1))  # fills the queue with the first batch's 4 coordinates
    batch = _batch(6, seed=2)
    image = batch["image"].permute(0, 3, 1, 2).double() / 255
    out = model({**batch, "image": image})
    gps = torch.cat([torch.stack([batch["lat"], batch["lon"]], 1), _coords(4, seed=1).double()])
    with torch.no_grad():
        v = F.normalize(model.image_head(model.backbone(image)[:, 0]), dim=-1)
        g = F.normalize(model.location_encoder(gps), dim=-1)
        logits = model.logit_scale.exp() * v @ g.t()  # [6, 6 + 4]
        expected = -(logits.diagonal() - torch.logsumexp(logits, dim=1)).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-9)


def test_queue_is_fifo_bounded_and_filled_only_in_training():
    model = _model(queue_size=8)
    seen = []
    for step in range(4):  # 3 coordinates per step: the queue overflows on the third step
        batch = _batch(3, seed=10 + step)
        model(batch)
        seen.append(torch.stack([batch["lat"], batch["lon"]], 1).float())
        expected = torch.cat(seen)[-8:]
        assert model.queued_gps().shape[0] == min(3 * (step + 1), 8) <= model.queue_size
        assert torch.equal(model.queued_gps(), expected)
    model.eval()
    model(_batch(3, seed=99))
    assert torch.equal(model.queued_gps(), expected)
    model.train()
    big = _batch(11, seed=7)
    model(big)
    assert torch.equal(model.queued_gps(), torch.stack([big["lat"], big["lon"]], 1).float()[-8:])


@pytest.fixture
def small_gallery(tmp_path) -> tuple[str, torch.Tensor]:
    latlon = _coords(50, seed=5)
    path = tmp_path / "gallery.csv"
    pd.DataFrame({"lat": latlon[:, 0].double().numpy(), "lon": latlon[:, 1].double().numpy()}).to_csv(path, index=False)
    return str(path), latlon


def test_predict_ranks_the_gallery_and_caches_its_embeddings(small_gallery):
    uri, latlon = small_gallery
    model = _model(gallery=uri).eval()
    batch = _batch(4)
    out = model.predict(batch, k=5)
    assert out["lat"].shape == out["lon"].shape == out["score"].shape == (4, 5)
    assert (out["score"][:, :-1] >= out["score"][:, 1:]).all() and (out["score"] > 0).all()
    # brute force, without the cache: softmax over all 50 coordinates
    with torch.no_grad():
        probs = F.softmax(model.logits(model.embed_image(batch["image"]), model.encode_locations(latlon[:, 0], latlon[:, 1])), -1)
    top = probs.topk(5, dim=-1)
    assert torch.allclose(out["score"], top.values, atol=1e-6)
    assert torch.allclose(out["lat"], latlon[top.indices, 0], atol=1e-4)
    assert torch.allclose(out["lon"], latlon[top.indices, 1], atol=1e-4)

    cached = model.gallery_embeddings()
    model.predict(batch, k=5)
    assert model.gallery_embeddings() is cached  # computed once

    with torch.no_grad():  # a weight change (as an optimizer step would make) invalidates it
        model.location_encoder.branches[0].head.bias.add_(0.5)
    changed = model.gallery_embeddings()
    assert changed is not cached and not torch.allclose(changed, cached)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert model.gallery_embeddings() is not changed
    reloaded = model.gallery_embeddings()
    model.train().eval()
    assert model.gallery_embeddings() is not reloaded


def test_inference_state_gives_a_copy_of_the_weights_the_gallery_without_encoding_it_again(small_gallery,
                                                                                           monkeypatch):
    """What a model bundle carries (`inference_state`): a model loaded with the same weights takes it and predicts
    as the original, without the gallery file and without encoding the gallery; once its weights change it encodes
    again; a state of another gallery or width is refused."""
    uri, _ = small_gallery
    model = _model(gallery=uri).eval()
    batch = _batch(4)
    expected = model.predict(batch, k=5)
    state = model.inference_state()
    os.remove(uri)
    copy = _model(gallery=uri)
    copy.load_state_dict(model.state_dict())
    copy.eval()
    copy.load_inference_state(state)
    encoded, encode = [], copy.location_encoder.encode_locations
    monkeypatch.setattr(copy.location_encoder, "encode_locations", lambda *a, **k: encoded.append(1) or encode(*a, **k))
    out = copy.predict(batch, k=5)
    assert all(torch.equal(out[key], expected[key]) for key in expected) and not encoded
    copy.train().eval()  # weights may have changed: the carried embeddings are stale
    copy.predict(batch, k=5)
    assert encoded == [1]
    with pytest.raises(ValueError, match="does not fit"):
        copy.load_inference_state({**state, "gallery": state["gallery"][:3]})
    with pytest.raises(ValueError, match="does not fit"):
        copy.load_inference_state({**state, "gallery_embeddings": state["gallery_embeddings"][:, :8]})


def test_ten_crop_averages_the_gallery_probabilities_over_the_ten_views(small_gallery):
    uri, latlon = small_gallery
    model = _model(gallery=uri).eval()
    batch = _batch(4)
    with torch.no_grad():
        g = model.encode_locations(latlon[:, 0], latlon[:, 1])
        views = ten_crop_views(batch["image"], None)
        probs = torch.stack([F.softmax(model.logits(model.embed_image(image), g), -1) for image, _ in views]).mean(0)
    top = probs.topk(5, dim=-1)
    out = model.predict(batch, k=5, ten_crop=True)
    assert torch.allclose(out["score"], top.values, atol=1e-6)
    assert torch.allclose(out["lat"], latlon[top.indices, 0], atol=1e-4)
    assert not torch.allclose(out["score"], model.predict(batch, k=5)["score"])


def test_gallery_files(tmp_path):
    path = tmp_path / "gallery.parquet"
    pd.DataFrame({"LAT": [10.0, -20.5], "LON": [30.0, 170.25]}).to_parquet(path)
    assert torch.equal(load_gallery(str(path)), torch.tensor([[10.0, 30.0], [-20.5, 170.25]]))

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"latitude_deg": [1.0], "lon": [2.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="needs lat and lon columns"):
        load_gallery(str(bad))
    with pytest.raises(ValueError, match="needs lat and lon columns"):
        _model(gallery=str(bad)).eval().predict(_batch(2), k=1)

    released = load_gallery("geoclip")
    first = pd.read_csv(geoclip_package_file("model", "gps_gallery", "coordinates_100K.csv"), nrows=1)
    assert released.shape == (100_000, 2)
    assert torch.allclose(released[0], torch.tensor([first.LAT[0], first.LON[0]], dtype=torch.float32))


# --- the whole release on a CLIP ViT-L/14 backbone (one block, small images: the real L/14 widths, no download)
CLIP_L14 = "vit_large_patch14_clip_224.openai"
CLIP_L14_SMALL = {"depth": 1, "img_size": 28}


@pytest.fixture(scope="module")
def clip_geoclip() -> GeoClip:
    cfg = ModelConfig(name="geoclip", backbone=CLIP_L14, backbone_kwargs=CLIP_L14_SMALL,
                      geoclip=GeoClipConfig(queue_size=8))  # the released location encoder: the whole release
    return create_model(cfg, NO_CELLS).eval()


@pytest.fixture(scope="module")
def package_image_mlp() -> torch.nn.Sequential:
    """The package's own ImageEncoder MLP with the package's released weights. Its CLIP tower (a hub download)
    is built on the meta device: only the MLP is materialised."""
    from geoclip.model.image_encoder import ImageEncoder

    with torch.device("meta"):
        encoder = ImageEncoder(from_pretrained=False)
    mlp = encoder.mlp.to_empty(device="cpu")
    mlp.load_state_dict(torch.load(geoclip_package_file("model", "weights", "image_encoder_mlp_weights.pth"),
                                   map_location="cpu", weights_only=True))
    return mlp.eval()


def test_clip_l14_image_head_equals_the_package_mlp_on_the_same_768d_features(clip_geoclip, package_image_mlp):
    assert clip_geoclip.backbone.feature_dim == 768  # CLIP's projection, not the 1024-d pre-projection token
    features = torch.randn(16, 768, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = clip_geoclip.image_head(features), package_image_mlp(features)
    assert (ours - theirs).abs().max().item() < 1e-6


def test_clip_l14_embeds_through_clip_projection_with_the_released_logit_scale(clip_geoclip, package_image_mlp):
    released = float(torch.load(geoclip_package_file("model", "weights", "logit_scale_weights.pth"), weights_only=True))
    assert clip_geoclip.logit_scale.item() == pytest.approx(released) and released == pytest.approx(3.681, abs=1e-3)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8))
    backbone = clip_geoclip.backbone
    with torch.no_grad():
        tokens = backbone.model.forward_features(backbone.pixels(image))
        clip_embedding = backbone.model.head(tokens[:, 0])  # CLIP: projection of the normalised class token
        expected = F.normalize(package_image_mlp(clip_embedding), dim=-1)
        got = clip_geoclip.embed_image(image)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        g = F.normalize(torch.randn(5, 512), dim=-1)
        torch.testing.assert_close(clip_geoclip.logits(got, g), np.exp(released) * got @ g.t())


def test_clip_l14_backbone_is_frozen_by_default_and_trainable_blocks_unfreezes(clip_geoclip):
    assert not any(p.requires_grad for p in clip_geoclip.backbone.parameters())
    assert all(p.requires_grad for p in clip_geoclip.image_head.parameters())
    cfg = ModelConfig(name="geoclip", backbone=CLIP_L14, backbone_kwargs=CLIP_L14_SMALL, trainable_blocks=1,
                      geoclip=GeoClipConfig(queue_size=8, pretrained_location_encoder=False))
    model = create_model(cfg, NO_CELLS)
    assert all(p.requires_grad for p in model.backbone.model.blocks[-1].parameters())
    # the paper's from-scratch location encoder (configs/geoclip-mp16.yaml) gets no released image head either
    assert model.backbone.feature_dim == 768 and model.logit_scale.item() == pytest.approx(GeoClipConfig().logit_scale_init)
