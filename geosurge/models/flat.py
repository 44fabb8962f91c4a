"""A flat geocell classifier (PlaNet-style baseline): one softmax over the finest level's cells only.

image ─ backbone ─ CLS → LayerNorm → Linear → logits over the finest cells → cross-entropy with cells[:, -1].
Inference: softmax, top-k cells, each cell's coordinate (mean of its members). The coarser levels are unused:
this is the "1 level" point of comparison for the hierarchical models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geosurge.config import ModelConfig
from geosurge.models.backbone import Backbone
from geosurge.models.factory import register_model
from geosurge.models.hierarchy import HierarchySpec, level_cross_entropy
from geosurge.models.tta import prediction_views


class FlatClassifier(nn.Module):
    """Backbone CLS → LayerNorm → Linear over the finest cells of the hierarchy.

    `forward(batch)` takes `image` (uint8 [B,H,W,3] or float [B,3,H,W] in [0,1]) and optionally `cells`
    (int [B, levels]); it returns `logits` [B, n_finest], and with `cells` also `loss` (cross-entropy with the
    finest column). `predict(batch, k)` returns the top-k finest cells (`ten_crop=True`: softmax averaged over
    ten crops). A `label_map` in the batch is ignored.
    """

    def __init__(
        self,
        hierarchy: HierarchySpec,
        backbone: Backbone,
    ):
        super().__init__()
        self.backbone = backbone
        self.head_norm = nn.LayerNorm(self.backbone.dim)
        self.head = nn.Linear(self.backbone.dim, hierarchy.num_cells[-1])
        self.register_buffer("finest_latlon", torch.from_numpy(hierarchy.latlon()), persistent=False)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """[B, n_finest] unnormalised scores of the finest cells."""
        cls = self.backbone(image)[:, 0]
        return self.head(self.head_norm(cls))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.logits(batch["image"])
        out = {"logits": logits}
        if "cells" in batch:
            out["loss"] = level_cross_entropy(logits, batch["cells"][:, -1])  # points without a finest cell skipped
        return out

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], k: int = 5, ten_crop: bool = False) -> dict[str, torch.Tensor]:
        """Top-k finest cells: `cell` [B,k], `score` [B,k] (softmax probabilities), `lat`/`lon` [B,k].
        `ten_crop=True`: the probabilities are averaged over the 10 views of `ten_crop_views`."""
        views = prediction_views(batch, ten_crop)
        probs = sum(F.softmax(self.logits(image).float(), dim=-1) for image, _ in views) / len(views)
        top = probs.topk(min(k, probs.shape[1]), dim=-1)
        latlon = self.finest_latlon[top.indices]
        return {"cell": top.indices, "score": top.values, "lat": latlon[..., 0], "lon": latlon[..., 1]}


@register_model("flat_classifier")
def _build(config: ModelConfig, hierarchy: HierarchySpec) -> FlatClassifier:
    return FlatClassifier(
        hierarchy,
        backbone=Backbone.from_config(config),
    )
