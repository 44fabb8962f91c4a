"""GeoSURGE model: gradients reach every trainable parameter, inference = brute-force products, loss = reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geosurge.config import ModelConfig
from geosurge.geo.geocells import IGNORE_CELL, GeocellHierarchy
from geosurge.models import HierarchySpec, create_model
from tests.models.model_helpers import TINY_VIT, random_batch, small_hierarchy

TINY = TINY_VIT


@pytest.fixture(scope="module")
def hierarchy() -> GeocellHierarchy:
    return small_hierarchy()


_batch = random_batch


def _model(h, **overrides):
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", backbone_kwargs=TINY, embed_dim=16, fusion_heads=2, **overrides)
    return create_model(cfg, HierarchySpec.from_hierarchy(h))


def test_hierarchy_has_several_levels_of_growing_size(hierarchy):
    assert hierarchy.num_levels == 3 and hierarchy.num_cells[0] < hierarchy.num_cells[-1]


@pytest.mark.parametrize("fusion", [True, False])
def test_every_trainable_parameter_gets_a_finite_gradient(hierarchy, fusion):
    model = _model(hierarchy, fusion=fusion)
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


@pytest.mark.parametrize("mode", ["histogram", "majority"])
def test_semantic_tokens_shapes_and_gradients(hierarchy, mode):
    model = _model(hierarchy, semantic_tokens=mode)
    batch = _batch(hierarchy, grid=8)  # a label map finer than the 4×4 patch grid: mixed patches
    tokens = model.semantic_tokens(batch["label_map"])
    assert tokens.shape == (6, 16, model.backbone.dim)
    model(batch)["loss"].backward()
    assert model.semantic_proj.weight.grad.abs().sum() > 0 and torch.isfinite(model.semantic_proj.weight.grad).all()


def test_histogram_tokens_keep_the_mix_of_classes_inside_a_patch(hierarchy):
    """On a label map at twice the patch grid, a patch of 3 sky + 1 road cells gets the projection of (0.75 sky,
    0.25 road) as a histogram token and of sky alone as a majority token; pure patches are the same in both."""
    histogram, majority = _model(hierarchy, semantic_tokens="histogram"), _model(hierarchy, semantic_tokens="majority")
    majority.load_state_dict(histogram.state_dict())  # the same weights: only the mode differs
    sky, road = 2, 6
    label_map = torch.full((1, 8, 8), sky, dtype=torch.uint8)
    label_map[0, 0, 0] = road  # patch (0, 0) covers cells [0:2, 0:2]: 3 sky, 1 road
    label_map[0, 6:8, 6:8] = road  # patch (3, 3): pure road
    with torch.no_grad():
        h, m = histogram.semantic_tokens(label_map)[0], majority.semantic_tokens(label_map)[0]
        w, b, pos = histogram.semantic_proj.weight, histogram.semantic_proj.bias, histogram.semantic_pos[0]
        torch.testing.assert_close(h[0], 0.75 * w[:, sky] + 0.25 * w[:, road] + b + pos[0])
        torch.testing.assert_close(m[0], w[:, sky] + b + pos[0])
        assert not torch.allclose(h[0], m[0])
        torch.testing.assert_close(h[1:], m[1:])  # every other patch is pure
        torch.testing.assert_close(h[15], w[:, road] + b + pos[15])
    with pytest.raises(ValueError, match="semantic_tokens"):
        _model(hierarchy, semantic_tokens="mean")


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


# --- cached unit cell embeddings at inference ----------------------------------------------------------------


@pytest.mark.parametrize("in_place", [False, True])
def test_top_down_ancestor_sums_equal_level_by_level_gathers(hierarchy, in_place):
    from geosurge.models.hierarchy import ancestor_log_sums

    spec = HierarchySpec.from_hierarchy(hierarchy)
    gen = torch.Generator().manual_seed(0)
    log_probs = [F.log_softmax(torch.randn(3, n, generator=gen) * 5, -1) for n in spec.num_cells]
    ancestors = torch.from_numpy(spec.ancestors())
    expected = torch.zeros(3, spec.num_cells[-1])
    for level, lp in enumerate(log_probs):  # every level gathered out to the finest cells
        expected = expected + lp[:, ancestors[level]]
    parents = [torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in spec.parents[1:]]
    assert torch.equal(ancestor_log_sums([lp.clone() for lp in log_probs], parents, in_place), expected)


def _uncached_scores(model, v: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # autograd on: every cell embedding is normalised afresh
        return model.finest_log_scores(v).detach()


def test_cached_inference_scores_equal_uncached_scores(hierarchy):
    model = _model(hierarchy).eval()
    v = _embeddings()
    with torch.no_grad():
        cached = model.finest_log_scores(v)
        assert model.unit_cells(1) is model.unit_cells(1)  # the second call reads the cache
        beam = model.beam_search(v, beam=2)
        again = model.finest_log_scores(v)
    assert torch.equal(cached, _uncached_scores(model, v)) and torch.equal(again, cached)
    with torch.enable_grad():
        reference = model.beam_search(v, beam=2)
    assert torch.equal(beam[0], reference[0]) and torch.allclose(beam[1], reference[1].detach(), atol=1e-6)


def _step(model, hierarchy):
    opt = torch.optim.SGD(model.cell_embeddings.parameters(), lr=10.0)
    model(_batch(hierarchy))["loss"].backward()
    opt.step()


def _load(model, hierarchy):
    model.load_state_dict(_model(hierarchy).state_dict())


def _edit_in_place(model, hierarchy):
    with torch.no_grad():
        model.cell_embeddings[-1].mul_(-1.0)


def _edit_data_in_train_mode(model, hierarchy):
    model.train()  # e.g. DeepSpeed writes its updated weights through `.data`, unseen by version counters
    model.cell_embeddings[-1].data.copy_(torch.randn_like(model.cell_embeddings[-1]))
    model.eval()


@pytest.mark.parametrize("change", [_step, _load, _edit_in_place, _edit_data_in_train_mode])
def test_cached_scores_follow_weight_changes(hierarchy, change):
    """Scores cached before a weight change are never served after it: an optimizer step in eval mode,
    load_state_dict, an in-place edit, and a `.data` write in train mode all give the new weights' scores."""
    model = _model(hierarchy).eval()
    v = _embeddings()
    with torch.no_grad():
        before = model.finest_log_scores(v)
    change(model, hierarchy)
    with torch.no_grad():
        after = model.finest_log_scores(v)
        cells, _ = model.beam_search(v, beam=max(hierarchy.num_cells))
    assert not torch.allclose(after, before)
    assert torch.equal(after, _uncached_scores(model, v))
    assert torch.equal(cells, after.topk(hierarchy.num_cells[-1], dim=-1).indices)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_flow_through_the_normalisation_after_a_cache_was_built(hierarchy, mode):
    """With autograd on (training, or fine-tuning in eval mode), the cache is never used: the loss and the
    scores reach every level's cell embeddings through their normalisation."""
    model = _model(hierarchy).eval()
    v = _embeddings()
    with torch.no_grad():
        model.finest_log_scores(v)  # builds the cache
    model.train(mode == "train")
    model(_batch(hierarchy))["loss"].backward()
    grads = torch.autograd.grad(model.finest_log_scores(v)[:, 0].sum(), list(model.cell_embeddings))
    for level, g in enumerate(model.cell_embeddings):
        assert g.grad is not None and g.grad.abs().sum() > 0, level
        assert grads[level].abs().sum() > 0, level


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


@pytest.mark.parametrize("name", ["geosurge", "geodecoder", "flat_classifier"])
def test_ignored_cells_add_nothing_to_the_loss(hierarchy, name):
    """Rows labelled IGNORE_CELL at a level (their cell was dropped) are skipped there: the loss equals the loss
    of the labelled rows alone, and a batch with no labelled row at a level is finite (0 there), not NaN."""
    model = _model(hierarchy, name=name).eval()
    batch = _batch(hierarchy)
    partial = batch["cells"].clone()
    partial[:3, -1] = IGNORE_CELL  # three rows lose their finest cell
    out = model({**batch, "cells": partial})
    kept_only = model({k: v[3:] for k, v in batch.items()})
    finest = f"loss_level_{hierarchy.num_levels - 1}"
    if name == "flat_classifier":
        assert out["loss"].item() == pytest.approx(kept_only["loss"].item(), rel=1e-5)
    else:
        assert out[finest].item() == pytest.approx(kept_only[finest].item(), rel=1e-5)
        assert out["loss_level_0"].item() == pytest.approx(model(batch)["loss_level_0"].item(), rel=1e-6)
    none = model({**batch, "cells": torch.full_like(partial, IGNORE_CELL)})
    assert torch.isfinite(none["loss"])


def test_unknown_model_name_is_a_clear_error(hierarchy):
    with pytest.raises(ValueError, match="registered"):
        _model(hierarchy, name="nope")


# --- beam search and ten-crop inference -------------------------------------------------------------------

from torchvision.transforms.v2 import functional as TVF

from geosurge.models.geosurge import ten_crop_views


def _embeddings(n: int = 5, dim: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=gen), dim=-1)


def test_beam_wider_than_every_level_equals_exact_scoring(hierarchy):
    model = _model(hierarchy).eval()
    v = _embeddings()
    exact = model.finest_log_scores(v).topk(hierarchy.num_cells[-1], dim=-1)
    cells, log_scores = model.beam_search(v, beam=max(hierarchy.num_cells))
    assert torch.equal(cells, exact.indices)
    assert torch.allclose(log_scores, exact.values, atol=1e-4)
    out, ref = model.predict(_batch(hierarchy), k=4, beam=10_000), model.predict(_batch(hierarchy), k=4)
    assert torch.equal(out["cell"], ref["cell"]) and torch.allclose(out["score"], ref["score"], rtol=1e-4)


@pytest.mark.parametrize("beam", [1, 2, 3])
def test_narrow_beam_returns_real_cells_with_their_exact_scores(hierarchy, beam):
    model = _model(hierarchy).eval()
    v = _embeddings()
    cells, log_scores = model.beam_search(v, beam=beam)
    assert cells.shape[1] <= beam and (cells >= 0).any(dim=1).all()
    valid = cells >= 0
    exact = model.finest_log_scores(v).gather(1, cells.clamp(min=0))
    assert torch.allclose(log_scores[valid], exact[valid], atol=1e-4)
    assert torch.isneginf(log_scores[~valid]).all()
    assert (log_scores[:, :-1] >= log_scores[:, 1:]).all()  # best first
    # the beam only ever reaches descendants of the best level-0 cells: a greedy beam of 1 follows argmaxes
    if beam == 1:
        top0 = model.level_logits(v)[0].argmax(-1)
        assert torch.equal(model.ancestors[0][cells[:, 0]], top0)
    # skipping the normalisers changes the scores, not the cells
    unnormalised, _ = model.beam_search(v, beam=beam, normalize=False)
    assert torch.equal(unnormalised, cells)


def test_narrow_beam_prediction_pads_missing_cells(hierarchy):
    model = _model(hierarchy).eval()
    out = model.predict(_batch(hierarchy), k=5, beam=2)
    assert out["cell"].shape == (6, 5)
    pad = out["cell"] < 0
    assert pad[:, 2:].all() and not pad[:, :2].any()  # a beam of 2 yields 2 cells (every kept cell has children here)
    assert (out["score"][pad] == 0).all() and out["lat"][pad].isnan().all()
    lat, _ = hierarchy.cell_coordinates(hierarchy.num_levels - 1)
    assert np.allclose(out["lat"][~pad].numpy(), lat[out["cell"][~pad].numpy()])


def test_child_index_lists_every_cell_under_its_parent(hierarchy):
    model = _model(hierarchy)
    for level in range(1, hierarchy.num_levels):
        ptr, children = getattr(model, f"child_ptr_{level}"), getattr(model, f"children_{level}")
        parents = hierarchy.parents(level)
        assert sorted(children.tolist()) == list(range(hierarchy.num_cells[level]))
        for p in range(hierarchy.num_cells[level - 1]):
            assert children[ptr[p]:ptr[p + 1]].tolist() == np.flatnonzero(parents == p).tolist()


def test_ten_crop_views_match_torchvision_and_crop_the_label_map_alike():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 150, (2, 32, 32), generator=gen, dtype=torch.uint8)  # one label per pixel
    views = ten_crop_views(image, labels, fraction=0.875)
    assert len(views) == 10
    crops = TVF.ten_crop(image, [28, 28])  # 5 crops of the image, then 5 of its mirror image
    for (view, _), crop in zip(views[:5], crops[:5]):
        assert torch.allclose(view, F.interpolate(crop, size=(32, 32), mode="bilinear", align_corners=False))
    mirrored = {0: 6, 1: 5, 2: 8, 3: 7, 4: 9}  # a corner of the flipped image is the flip of the other corner
    for ours, theirs in mirrored.items():
        assert torch.allclose(views[ours + 5][0], F.interpolate(crops[theirs], size=(32, 32), mode="bilinear", align_corners=False), atol=1e-6)
    # with a label per pixel, the label view is the same crop resized by nearest neighbour (pixel centres)
    label_crops = TVF.ten_crop(labels[:, None].float(), [28, 28])
    for (_, lm), crop in zip(views[:5], label_crops[:5]):
        assert torch.equal(lm, F.interpolate(crop, size=(32, 32), mode="nearest-exact")[:, 0].to(torch.uint8))
    for i in range(5):
        assert torch.equal(views[i + 5][1], views[i][1].flip(-1)) and torch.equal(views[i + 5][0], views[i][0].flip(-1))


def test_ten_crop_label_views_on_a_coarse_grid():
    # a 4x4 label grid over a 32x32 image whose left half is class 1 and right half class 2: every view keeps
    # the boundary in the middle column pair (crops are near the full image), mirrored in the flipped views
    labels = torch.tensor([[1, 1, 2, 2]] * 4, dtype=torch.uint8)[None]
    views = ten_crop_views(torch.zeros(1, 3, 32, 32), labels)
    for _, lm in views[:5]:
        assert torch.equal(lm, labels)
    for _, lm in views[5:]:
        assert torch.equal(lm, labels.flip(-1))


def test_ten_crop_prediction_averages_the_ten_views(hierarchy):
    model = _model(hierarchy).eval()
    batch = _batch(hierarchy)
    out = model.predict(batch, k=4, ten_crop=True)
    assert out["cell"].shape == (6, 4) and out["lat"].shape == (6, 4)
    with torch.no_grad():
        views = ten_crop_views(batch["image"], batch["label_map"])
        probs = torch.stack([model.finest_log_scores(model.embed(img, lm)).exp() for img, lm in views])
    expected = probs.mean(0).topk(4, dim=-1)
    assert torch.equal(out["cell"], expected.indices) and torch.allclose(out["score"], expected.values)
    # the views differ, so the average is not the plain prediction's score
    plain = model.predict(batch, k=4)
    assert not torch.allclose(plain["score"], out["score"])
    # ten-crop with a beam: the same average, over the cells the views' beams reached
    beamed = model.predict(batch, k=4, ten_crop=True, beam=3)
    valid = beamed["cell"] >= 0
    mean = probs.mean(0).gather(1, beamed["cell"].clamp(min=0))
    assert torch.allclose(beamed["score"][valid], mean[valid], atol=1e-6)
    wide = model.predict(batch, k=4, ten_crop=True, beam=10_000)
    assert torch.equal(wide["cell"], out["cell"]) and torch.allclose(wide["score"], out["score"], rtol=1e-4)


def test_geoclip_initialised_cells_start_geographically_ordered(hierarchy):
    model = _model(hierarchy, cell_init="geoclip")
    finest = F.normalize(model.cell_embeddings[-1].detach(), dim=-1)
    latlon = HierarchySpec.from_hierarchy(hierarchy).latlon()
    from geosurge.geo.distance import pairwise_haversine_km

    km = pairwise_haversine_km(latlon[:, 0], latlon[:, 1], latlon[:, 0], latlon[:, 1])
    cos = (finest @ finest.t()).numpy()
    near, far = km < 1000, km > 8000
    np.fill_diagonal(near, False)
    assert near.any() and far.any()
    assert cos[near].mean() > cos[far].mean() + 0.2  # random initial embeddings would give ~0 for both
    assert torch.allclose(model.cell_embeddings[0].norm(dim=-1), torch.full((hierarchy.num_cells[0],), 0.02 * 4.0))


def test_unknown_cell_init_is_a_clear_error(hierarchy):
    with pytest.raises(ValueError, match="cell_init"):
        _model(hierarchy, cell_init="nope")
