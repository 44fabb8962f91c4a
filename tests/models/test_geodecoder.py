"""GeoDecoder: scene derivation, gradients, loss = reference, hierarchical inference = brute force, scene choice."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geosurge.config import GeoDecoderConfig, ModelConfig
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model
from geosurge.models.geodecoder import (
    INDOOR,
    NATURAL,
    URBAN,
    GeoDecoder,
    scene_from_label_map,
)
from geosurge.models.tta import ten_crop_views
from geosurge.segmentation.ade20k import ADE20K_ID
from tests.models.model_helpers import TINY_VIT, random_batch, small_hierarchy

TINY = TINY_VIT


@pytest.fixture(scope="module")
def hierarchy() -> GeocellHierarchy:
    return small_hierarchy()


_batch = random_batch


def _model(h: GeocellHierarchy, **geodecoder) -> GeoDecoder:
    torch.manual_seed(0)
    cfg = ModelConfig(name="geodecoder", backbone="vit_tiny_patch16_224", backbone_kwargs=TINY,
                      geodecoder=dataclasses.replace(GeoDecoderConfig(), **geodecoder))
    model = create_model(cfg, HierarchySpec.from_hierarchy(h))
    assert isinstance(model, GeoDecoder)
    return model


def _label_map(counts: dict[str, int], side: int = 4) -> torch.Tensor:
    ids = [ADE20K_ID[name] for name, n in counts.items() for _ in range(n)]
    assert len(ids) == side * side
    return torch.tensor(ids, dtype=torch.uint8).reshape(1, side, side)


# ------------------------------------------------------------------------------------------- scenes


@pytest.mark.parametrize(
    "counts, scene",
    [
        ({"sky": 8, "grass": 8}, NATURAL),
        ({"building": 8, "road": 8}, URBAN),
        ({"wall": 8, "floor": 8}, INDOOR),
        ({"building": 6, "car": 3, "sky": 7}, URBAN),  # largest share: 9 urban pixels against 7 natural
        ({"tree": 5, "mountain": 4, "building": 7}, NATURAL),
        ({"ceiling": 6, "person": 10}, INDOOR),  # person counts for no scene
        ({"person": 16}, NATURAL),  # no evidence at all: the outdoor default
    ],
)
def test_scene_from_label_map(counts, scene):
    assert scene_from_label_map(_label_map(counts)).tolist() == [scene]


def test_scene_from_label_map_is_per_image():
    maps = torch.cat([_label_map({"sky": 16}), _label_map({"wall": 16}), _label_map({"road": 16})])
    assert scene_from_label_map(maps).tolist() == [NATURAL, INDOOR, URBAN]


# ------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("with_scene", [False, True])
def test_every_parameter_gets_a_finite_gradient(hierarchy, with_scene):
    model = _model(hierarchy)
    batch = _batch(hierarchy)
    if with_scene:
        batch["scene"] = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(batch)
    assert torch.isfinite(out["loss"]) and out["scene_confidence"].shape == (6, 3)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def _reference_loss(level_logits: list[torch.Tensor], scene_logits: torch.Tensor, scene: torch.Tensor,
                    cells: torch.Tensor) -> float:
    total = 0.0
    for level, logits in enumerate(level_logits):
        rows = logits[torch.arange(len(scene)), scene]  # the scene's query of this level
        true = cells[:, level]
        total += (torch.logsumexp(rows, 1) - rows.gather(1, true[:, None]).squeeze(1)).mean().item()
    # the scene channel's cross-entropy on the same scene labels (weight 1)
    scene_nll = torch.logsumexp(scene_logits, 1) - scene_logits.gather(1, scene[:, None]).squeeze(1)
    return total + scene_nll.mean().item()


def test_loss_uses_the_given_scene_or_the_derived_one(hierarchy):
    model = _model(hierarchy).double().eval()
    batch = _batch(hierarchy)
    image = batch["image"].permute(0, 3, 1, 2).double() / 255
    level_logits, scene_logits = model.decode(image)
    derived = scene_from_label_map(batch["label_map"])
    given = (derived + 1) % 3

    out = model({**batch, "image": image})
    assert torch.equal(out["scene"], derived)
    expected = _reference_loss(level_logits, scene_logits, derived, batch["cells"])
    assert out["loss"].item() == pytest.approx(expected, rel=1e-9)

    out_given = model({**batch, "image": image, "scene": given})
    assert torch.equal(out_given["scene"], given)
    expected = _reference_loss(level_logits, scene_logits, given, batch["cells"])
    assert out_given["loss"].item() == pytest.approx(expected, rel=1e-9)
    assert out_given["loss"].item() != pytest.approx(out["loss"].item(), rel=1e-6)

    unknown = given.clone()
    unknown[:3] = -1  # Places365 labels missing for some rows: those fall back to the label map
    mixed = model({**batch, "image": image, "scene": unknown})
    assert torch.equal(mixed["scene"], torch.cat([derived[:3], given[3:]]))


def test_scene_labels_out_of_range_are_an_error(hierarchy):
    model = _model(hierarchy)
    with pytest.raises(ValueError, match="scene"):
        model({**_batch(hierarchy), "scene": torch.full((6,), 3)})


def test_hierarchy_dependent_layers_attend_only_within_a_level(hierarchy):
    image = _batch(hierarchy)["image"]
    for decoder_layers, coarse_reaches_finer in [(0, False), (1, True)]:
        model = _model(hierarchy, decoder_layers=decoder_layers).eval()
        before = model.query_logits(image)
        with torch.no_grad():
            # change only the coarsest level's queries (not by a constant: the pre-norms would erase that)
            model.queries[0].add_(torch.randn(model.queries[0].shape, generator=torch.Generator().manual_seed(1)))
        after = model.query_logits(image)
        assert not torch.allclose(before[0], after[0])
        for level in (1, 2):
            assert torch.allclose(before[level], after[level], atol=1e-6) != coarse_reaches_finer


# ------------------------------------------------------------------------------------------- inference


def _brute_force(h: GeocellHierarchy, probs: list[torch.Tensor]) -> torch.Tensor:
    """[B, n_finest] products of each finest cell's probability and its ancestors', walking parents by hand."""
    fine = h.num_cells[-1]
    out = torch.empty(len(probs[0]), fine, dtype=torch.float64)
    for i in range(fine):
        score, cell = probs[-1][:, i].clone(), i
        for level in range(h.num_levels - 1, 0, -1):
            cell = int(h.parents(level)[cell])
            score *= probs[level - 1][:, cell]
        out[:, i] = score
    return out


def test_hierarchical_scores_equal_brute_force_products_for_the_chosen_scene(hierarchy):
    model = _model(hierarchy).eval()
    batch = _batch(hierarchy)
    level_logits, scene_logits = (x for x in model.decode(batch["image"]))
    level_logits = [l.detach() for l in level_logits]
    scene = scene_logits.argmax(-1)
    rows = torch.arange(len(scene))
    probs = [F.softmax(l[rows, scene].double(), -1) for l in level_logits]
    expected = _brute_force(hierarchy, probs)
    assert torch.allclose(model.finest_log_scores(level_logits, scene).exp().double(), expected, atol=1e-6)

    out = model.predict(batch, k=4)
    assert torch.equal(out["scene"], scene)
    assert out["cell"].shape == out["score"].shape == out["lat"].shape == out["lon"].shape == (6, 4)
    assert (out["score"][:, :-1] >= out["score"][:, 1:]).all()
    top = expected.topk(4, dim=-1)
    assert torch.allclose(out["score"].double(), top.values, atol=1e-6)
    with torch.no_grad():  # the in-place path (no autograd) gives the same bits
        no_grad = model.finest_log_scores(level_logits, scene)
    assert torch.equal(no_grad, model.finest_log_scores(level_logits, scene))
    assert torch.allclose(expected.gather(1, out["cell"]), top.values, atol=1e-6)  # same cells up to exact ties
    lat, lon = hierarchy.cell_coordinates(hierarchy.num_levels - 1)
    assert np.allclose(out["lat"].numpy(), lat[out["cell"].numpy()])
    assert np.allclose(out["lon"].numpy(), lon[out["cell"].numpy()])


def _logit_for(p: float, n: int) -> float:
    """The logit a that makes one of n cells (the others at 0) have softmax probability p."""
    return float(np.log(p * (n - 1) / (1 - p)))


def test_scene_channel_is_trained_on_the_scene_labels(hierarchy):
    """The loss holds the scene channel's cross-entropy (`loss_scene`), its gradient reaches the channel, and a
    few steps on fixed scene labels make the channel predict them."""
    model = _model(hierarchy)
    batch = {**_batch(hierarchy), "scene": torch.tensor([0, 1, 2, 2, 1, 0])}
    out = model(batch)
    levels = sum(out[f"loss_level_{l}"] for l in range(hierarchy.num_levels))
    assert out["loss_scene"].item() > 0
    assert out["loss"].item() == pytest.approx((levels + out["loss_scene"]).item(), rel=1e-6)
    expected = F.cross_entropy(out["scene_logits"], batch["scene"])
    assert out["loss_scene"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert model.scene_channel.weight.grad.abs().sum() > 0
    weightless = _model(hierarchy, scene_loss_weight=0.0)(batch)
    assert weightless["loss"].item() == pytest.approx(levels.item(), rel=1e-5)

    # the channel alone learns the labels (the rest frozen keeps this quick): selection follows the training
    for p in model.parameters():
        p.requires_grad_(p is model.scene_channel.weight or p is model.scene_channel.bias)
    optimizer = torch.optim.Adam(model.scene_channel.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        optimizer.step()
    model.eval()
    assert model.predict(batch, k=1)["scene"].tolist() == batch["scene"].tolist()


def test_scene_is_selected_by_the_scene_channel_not_by_confidence(hierarchy):
    # max probability per (scene, level): scene 1 is the most confident on average (0.70 against 0.66 and 0.68), so
    # the old mean-confidence rule picks scene 1; the scene channel is set to score scene 2 highest: it must win
    confidence = np.array([[0.98, 0.50, 0.50], [0.70, 0.70, 0.70], [0.55, 0.55, 0.95]])
    assert np.argmax(confidence.mean(1)) == 1 and np.argmax(confidence[:, 0]) == 0 and np.argmax(confidence[:, -1]) == 2
    model = _model(hierarchy).eval()
    levels, scenes, dim = model.queries.shape
    targets = []
    with torch.no_grad():
        # Make the decoder the identity on the queries: every residual branch writes zeros.
        for layer in model.decoder:
            for proj in (layer.self_attn.out_proj, layer.multihead_attn.out_proj, layer.linear2):
                proj.weight.zero_(), proj.bias.zero_()
        for layer in model.hierarchy_decoder:
            for proj in [layer.self_attn.out_proj, layer.cross_attn.out_proj, *(ffn[-1] for ffn in layer.ffns)]:
                proj.weight.zero_(), proj.bias.zero_()
        # Then set each level's classifier so that scene s's query gives the target logits T[s] exactly:
        # logits = W z_s with z_s = LayerNorm(query); W = T^T pinv(Z) solves it as the z_s are independent.
        z = model.decoder_norm(model.queries)  # [levels, scenes, dim]
        for level, classifier in enumerate(model.classifiers):
            n = classifier.out_features
            t = torch.zeros(scenes, n, dtype=torch.float64)
            for s in range(scenes):
                t[s, (7 * s + level) % n] = _logit_for(confidence[s, level], n)
            classifier.weight.copy_((t.t() @ torch.linalg.pinv(z[level].double().t())).float())
            classifier.bias.zero_()
            targets.append(t)
        # the scene channel: per-query scores S[level, scene] (mean over levels: scene 2 highest, scene 1 lowest)
        channel_targets = torch.tensor([[0.0, -1.0, 2.0], [0.5, -0.5, 1.0], [0.0, -1.0, 3.0]], dtype=torch.float64)
        flat = z.reshape(levels * scenes, dim).double()
        model.scene_channel.weight.copy_((channel_targets.reshape(1, -1) @ torch.linalg.pinv(flat.t())).float())
        model.scene_channel.bias.zero_()

    batch = _batch(hierarchy)
    level_logits = [l.detach() for l in model.query_logits(batch["image"])]
    for level, t in enumerate(targets):  # the construction holds, whatever the image
        assert torch.allclose(level_logits[level].double(), t.expand(6, -1, -1), atol=1e-3)
    assert np.allclose(model.scene_confidence(level_logits).numpy(), confidence.mean(1), atol=1e-4)
    assert model.scene_confidence(level_logits).argmax(-1).tolist() == [1] * 6  # what the old rule chose
    torch.testing.assert_close(model.decode(batch["image"])[1].double(), channel_targets.mean(0).expand(6, -1),
                               atol=1e-3, rtol=0)

    out = model.predict(batch, k=1)
    assert out["scene"].tolist() == [2] * 6
    probs = [F.softmax(t[2], -1).expand(6, -1) for t in targets]
    best = _brute_force(hierarchy, probs).max(-1).values
    assert torch.allclose(out["score"][:, 0].double(), best, atol=1e-4)


def test_ten_crop_picks_one_scene_on_the_mean_scene_probability_and_averages_the_products(hierarchy):
    model = _model(hierarchy).eval()
    batch = _batch(hierarchy, n=4)
    with torch.no_grad():
        decoded = [model.decode(image) for image, _ in ten_crop_views(batch["image"], batch["label_map"])]
        level_logits = [l for l, _ in decoded]
        scene = torch.stack([F.softmax(s, -1) for _, s in decoded]).mean(0).argmax(-1)
        probs = torch.stack([model.finest_log_scores(l, scene).exp() for l in level_logits]).mean(0)
    top = probs.topk(5, dim=-1)
    out = model.predict(batch, k=5, ten_crop=True)
    assert torch.equal(out["scene"], scene)
    assert torch.equal(out["cell"], top.indices) and torch.allclose(out["score"], top.values, atol=1e-6)
    lat, _ = hierarchy.cell_coordinates(hierarchy.num_levels - 1)
    assert np.allclose(out["lat"].numpy(), lat[top.indices.numpy()])
