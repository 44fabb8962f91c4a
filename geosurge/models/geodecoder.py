"""GeoDecoder (design.md §1.3; Clark et al., "Where We Are and What We're Looking At", CVPR 2023).

image ─ backbone ─ tokens (CLS + patches) ─ transformer encoder ─ memory
queries: one learned query per (hierarchy level × scene) ─ shared decoder layers (self-attention over all
    queries, cross-attention to memory, FFN) ─ hierarchy-dependent layers (self-attention only among one
    level's queries, cross-attention to memory, a separate FFN per level) ─ LayerNorm
each (level, scene) output ─ that level's linear classifier → logits over the level's cells
each (level, scene) output ─ the scene channel (a linear read-out, one score per query) ─ mean over levels
    → scene logits [B, scenes]

Training: for each level, cross-entropy of the logits of the image's own scene's query (scene from the batch's
`scene` labels, else derived from the label map by `scene_from_label_map`), summed over levels; plus the scene
channel's cross-entropy against the same scene labels (`loss_scene`, weighted by `scene_loss_weight`), as the
paper trains its queries' confidence channel on the scene labels.
Inference: the scene with the highest scene-channel logit is chosen (the paper's scene prediction; the old rule,
highest mean max-probability of the geo-classifiers, agreed with the label-map scene on 17.5% of test images);
a finest cell's score is its probability times its ancestors' (as GeoSURGE's `finest_log_scores`) under that
scene's queries. Ten-crop: the scene is chosen on the scene probabilities averaged over the 10 views, then the
finest-cell probability products under that scene are averaged over the views (as GeoSURGE averages its products).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geosurge.config import ModelConfig
from geosurge.models.backbone import Backbone
from geosurge.models.factory import register_model
from geosurge.models.hierarchy import AncestorSums, HierarchySpec, level_cross_entropy
from geosurge.models.tta import prediction_views
from geosurge.segmentation.ade20k import ADE20K_ID

# Scene ids follow Places365's 3-way labels (S3_Label / the manifest's `scene3`): 0 indoor, 1 natural, 2 urban.
INDOOR, NATURAL, URBAN = 0, 1, 2
SCENE_NAMES: tuple[str, ...] = ("indoor", "natural", "urban")

# ADE20K classes that mark each scene type. Only classes that rarely appear in the other two kinds of scene are
# listed; ambiguous ones (person, window, fence, path, stairs, boat, animal, …) count for no scene. `sky` counts as
# natural, so an outdoor photo is urban only when built structures outweigh sky and vegetation.
SCENE_CLASSES: dict[int, tuple[str, ...]] = {
    INDOOR: (
        "wall", "floor", "ceiling", "bed", "cabinet", "door", "table", "curtain", "chair", "painting", "sofa",
        "shelf", "mirror", "rug", "armchair", "desk", "wardrobe", "lamp", "bathtub", "cushion",
        "chest of drawers", "counter", "sink", "fireplace", "refrigerator", "pool table", "pillow", "bookcase",
        "blind", "coffee table", "toilet", "book", "countertop", "stove", "kitchen island", "computer",
        "swivel chair", "arcade machine", "chandelier", "television receiver", "ottoman", "buffet", "washer",
        "cradle", "oven", "microwave", "dishwasher", "blanket", "hood", "sconce", "vase", "tray", "fan",
        "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    ),
    NATURAL: (
        "sky", "tree", "grass", "earth", "mountain", "plant", "water", "sea", "field", "rock", "sand", "river",
        "flower", "hill", "palm", "land", "waterfall", "lake",
    ),
    URBAN: (
        "building", "road", "sidewalk", "car", "house", "skyscraper", "signboard", "grandstand", "runway",
        "bridge", "hovel", "bus", "truck", "tower", "awning", "streetlight", "booth", "pole", "van", "fountain",
        "minibike", "bicycle", "traffic light",
    ),
}
_NO_SCENE = len(SCENE_NAMES)


def _scene_lookup() -> torch.Tensor:
    # uint8 label maps hold ids 0..255; ids outside ADE20K (e.g. an "ignore" 255) count for no scene
    table = torch.full((256,), _NO_SCENE, dtype=torch.long)
    for scene, names in SCENE_CLASSES.items():
        for name in names:
            if table[ADE20K_ID[name]] != _NO_SCENE:
                raise ValueError(f"ADE20K class {name!r} is in two scene groups")
            table[ADE20K_ID[name]] = scene
    return table


_SCENE_OF_CLASS = _scene_lookup()


def scene_from_label_map(label_map: torch.Tensor) -> torch.Tensor:
    """uint8/int [B,g,g] ADE20K ids → LongTensor [B] of scene ids (0 indoor, 1 natural, 2 urban).

    Each pixel votes for the scene group its class belongs to (`SCENE_CLASSES`); the group with the largest pixel
    share wins (ties: the lower id). An image with no pixel in any group is called natural, GeoWorld's default
    outdoor scene (`geosurge.data.geoworld.scene_of`).
    """
    groups = _SCENE_OF_CLASS.to(label_map.device)[label_map.long().flatten(1)]  # [B, g*g]
    counts = F.one_hot(groups, _NO_SCENE + 1)[..., :_NO_SCENE].sum(1)  # [B, 3]
    scene = counts.argmax(1)  # argmax returns the first maximum: ties go to the lower id
    return torch.where(counts.sum(1) > 0, scene, torch.full_like(scene, NATURAL))


class HierarchyDependentLayer(nn.Module):
    """A pre-norm decoder layer whose self-attention stays within one level's queries and whose FFN is per level.

    Input/output [B, levels, scenes, dim]. The attention projections are shared by the levels: the paper names
    only the FFNs as per hierarchy, and restricts which queries self-attention mixes. Cross-attention to the
    image is as in any decoder layer.
    """

    def __init__(self, dim: int, heads: int, levels: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.ffns = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
            )
            for _ in range(levels)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, levels, scenes, dim = x.shape
        h = self.norm_self(x).reshape(b * levels, scenes, dim)  # one attention "batch" per (image, level)
        x = x + self.dropout(self.self_attn(h, h, h, need_weights=False)[0]).reshape(b, levels, scenes, dim)
        h = self.norm_cross(x).reshape(b, levels * scenes, dim)
        attended = self.cross_attn(h, memory, memory, need_weights=False)[0]
        x = x + self.dropout(attended).reshape(b, levels, scenes, dim)
        return x + self.dropout(torch.stack([ffn(x[:, l]) for l, ffn in enumerate(self.ffns)], dim=1))


class GeoDecoder(nn.Module):
    """Scene- and hierarchy-specific queries decoded from the image; hierarchical inference with scene selection.

    `forward(batch)` takes `image` (uint8 [B,H,W,3] or float [B,3,H,W] in [0,1]), and with `cells` (int
    [B, levels]) also `scene` (int64 [B]; values < 0 mean unknown) or `label_map` (uint8 [B,g,g] ADE20K ids) to
    derive it; it returns `scene_confidence` [B, scenes], and with `cells` also `loss`, `loss_level_<l>` and the
    `scene` used. `predict(batch, k)` returns the top-k finest cells and the chosen `scene`.
    """

    def __init__(
        self,
        hierarchy: HierarchySpec,
        backbone: Backbone,
        num_scenes: int = 3,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        hierarchy_layers: int = 1,
        heads: int = 4,
        dropout: float = 0.0,  # as the other models here (the ViT backbone has none either)
        scene_loss_weight: float = 1.0,
    ):
        super().__init__()
        self.backbone = backbone
        dim = self.backbone.dim  # the paper decodes at the backbone's width (768 for its ViT-B/16)
        levels = len(hierarchy.num_cells)
        self.num_scenes = num_scenes

        layer_kw = dict(d_model=dim, nhead=heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu",
                        batch_first=True, norm_first=True)
        # plain ModuleLists, not nn.TransformerEncoder/Decoder: those index layers[0] and fail with 0 layers
        self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(**layer_kw) for _ in range(encoder_layers))
        self.encoder_norm = nn.LayerNorm(dim)  # pre-norm layers leave their output unnormalised
        self.queries = nn.Parameter(torch.zeros(levels, num_scenes, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.decoder = nn.ModuleList(nn.TransformerDecoderLayer(**layer_kw) for _ in range(decoder_layers))
        self.hierarchy_decoder = nn.ModuleList(
            HierarchyDependentLayer(dim, heads, levels, dropout=dropout) for _ in range(hierarchy_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        # One classifier per level, shared by the scenes: the paper feeds the chosen scene's queries "to their
        # corresponding classifier" per hierarchy, and its released prototype has one classifier per hierarchy.
        self.classifiers = nn.ModuleList(nn.Linear(dim, n) for n in hierarchy.num_cells)
        # The scene channel: one score per (level, scene) query, read from its decoded output; a scene's logit is
        # the mean of its queries' scores over the levels. Trained with cross-entropy on the scene labels.
        self.scene_channel = nn.Linear(dim, 1)
        self.scene_loss_weight = scene_loss_weight

        self.register_buffer("ancestors", torch.from_numpy(hierarchy.ancestors()), persistent=False)
        self.register_buffer("finest_latlon", torch.from_numpy(hierarchy.latlon()), persistent=False)
        self.ancestor_sums = AncestorSums(hierarchy)  # exact scoring sums ancestors top-down

    @property
    def num_levels(self) -> int:
        return len(self.classifiers)

    def query_logits(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Per level l: [B, scenes, n_l], the logits of every scene's query of that level."""
        return self.decode(image)[0]

    def decode(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per level l: [B, scenes, n_l] logits of every scene's query, [B, scenes] scene-channel logits)."""
        memory = self.backbone(image)
        for layer in self.encoder:
            memory = layer(memory)
        memory = self.encoder_norm(memory)
        b, (levels, scenes, dim) = memory.shape[0], self.queries.shape
        x = self.queries.reshape(1, levels * scenes, dim).expand(b, -1, -1)
        for layer in self.decoder:  # hierarchy-independent: every query attends to every other
            x = layer(x, memory)
        x = x.reshape(b, levels, scenes, dim)
        for layer in self.hierarchy_decoder:
            x = layer(x, memory)
        x = self.decoder_norm(x)
        scene_logits = self.scene_channel(x).squeeze(-1).mean(1)  # [B, levels, scenes] → mean over levels
        return [classifier(x[:, l]) for l, classifier in enumerate(self.classifiers)], scene_logits

    def batch_scene(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LongTensor [B]: the batch's `scene` labels; unknown (< 0) or absent ones derived from `label_map`."""
        scene = batch.get("scene")
        if scene is not None:
            scene = scene.long()
        if scene is None or bool((scene < 0).any()):
            derived = self._derived_scene(batch)
            scene = derived if scene is None else torch.where(scene >= 0, scene, derived)
        if bool((scene >= self.num_scenes).any()):
            raise ValueError(f"scene labels must lie in [0, {self.num_scenes})")
        return scene

    def _derived_scene(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.num_scenes == 1:
            return torch.zeros(len(batch["image"]), dtype=torch.long, device=batch["image"].device)
        if self.num_scenes != len(SCENE_NAMES):
            raise ValueError(f"scenes are derived from label maps only for {len(SCENE_NAMES)} scenes; pass `scene`")
        if "label_map" not in batch:
            raise ValueError("GeoDecoder training needs each image's scene: pass `scene` or a `label_map`")
        return scene_from_label_map(batch["label_map"])

    @staticmethod
    def scene_confidence(level_logits: list[torch.Tensor]) -> torch.Tensor:
        """[B, scenes]: for each scene, the mean over levels of its query's max softmax probability. A diagnostic
        only: the scene is selected by the scene channel (`decode`), which is trained on the scene labels."""
        return torch.stack([F.softmax(l.float(), dim=-1).amax(-1) for l in level_logits]).mean(0)

    def finest_log_scores(self, level_logits: list[torch.Tensor], scene: torch.Tensor) -> torch.Tensor:
        """[B, n_finest]: log of (finest-cell probability × its ancestors' probabilities) under `scene`'s queries."""
        rows = torch.arange(len(scene), device=scene.device)
        log_probs = [F.log_softmax(logits[rows, scene].float(), dim=-1) for logits in level_logits]
        return self.ancestor_sums(log_probs, in_place=not torch.is_grad_enabled())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        level_logits, scene_logits = self.decode(batch["image"])
        out = {"scene_confidence": self.scene_confidence(level_logits).detach(), "scene_logits": scene_logits.detach()}
        if "cells" in batch:
            cells = batch["cells"].long()
            scene = self.batch_scene(batch)
            rows = torch.arange(len(scene), device=scene.device)
            losses = [level_cross_entropy(logits[rows, scene], cells[:, l]) for l, logits in enumerate(level_logits)]
            for l, loss in enumerate(losses):
                out[f"loss_level_{l}"] = loss.detach()
            scene_loss = F.cross_entropy(scene_logits.to(torch.promote_types(scene_logits.dtype, torch.float32)), scene)
            out["loss_scene"] = scene_loss.detach()
            out["loss"] = torch.stack(losses).sum() + self.scene_loss_weight * scene_loss
            out["scene"] = scene
        return out

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], k: int = 5, ten_crop: bool = False) -> dict[str, torch.Tensor]:
        """Top-k finest cells: `cell`, `score` (probability products), `lat`, `lon` [B,k]; `scene` [B] chosen.

        The scene is chosen by the model's scene channel (highest scene logit), not taken from the batch, as in the
        paper. `ten_crop=True`: one scene per image, from the scene probabilities averaged over the 10 views of
        `ten_crop_views`; the finest-cell probability products under it are averaged over the views.
        """
        decoded = [self.decode(image) for image, _ in prediction_views(batch, ten_crop)]
        per_view = [level_logits for level_logits, _ in decoded]
        scene = (sum(F.softmax(s.float(), dim=-1) for _, s in decoded) / len(decoded)).argmax(-1)
        if len(per_view) == 1:
            top = self.finest_log_scores(per_view[0], scene).topk(min(k, self.ancestors.shape[1]), dim=-1)
            cells, scores = top.indices, top.values.exp()
        else:
            probs = sum(self.finest_log_scores(l, scene).exp() for l in per_view) / len(per_view)
            top = probs.topk(min(k, probs.shape[1]), dim=-1)
            cells, scores = top.indices, top.values
        latlon = self.finest_latlon[cells]
        return {"cell": cells, "score": scores, "lat": latlon[..., 0], "lon": latlon[..., 1], "scene": scene}


@register_model("geodecoder")
def _build(config: ModelConfig, hierarchy: HierarchySpec) -> GeoDecoder:
    gd = config.geodecoder
    return GeoDecoder(
        hierarchy,
        backbone=Backbone.from_config(config),
        num_scenes=gd.num_scenes,
        encoder_layers=gd.encoder_layers,
        decoder_layers=gd.decoder_layers,
        hierarchy_layers=gd.hierarchy_layers,
        heads=gd.heads,
        scene_loss_weight=gd.scene_loss_weight,
    )
