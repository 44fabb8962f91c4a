"""GeoSURGE (design.md §1.1): semantic fusion over a timm backbone + a hierarchy of geocell embeddings.

image ─ backbone ─ RGB tokens (CLS + patches) ───────────────┐ keys/values (with the queries)
label map ─ one-hot pooled to the patch grid ─ linear ─ semantic tokens ─┴ queries (CLS prepended)
        → N × [cross-attention + MLP, residuals, LayerNorm] → fused CLS → LayerNorm → linear → v
v · g_l / τ_l against every cell embedding g_l of each level l → InfoNCE per level, summed.
Inference: per-level softmax; a finest cell's score is its probability times its ancestors'.
"""

from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from geosurge.data.ade20k import NUM_ADE20K_CLASSES
from geosurge.config import ModelConfig
from geosurge.models.backbone import Backbone
from geosurge.models.factory import register_model
from geosurge.models.hierarchy import HierarchySpec


class FusionBlock(nn.Module):
    """Cross-attention (semantic queries → RGB keys/values) then an MLP, pre-LayerNorm with residuals.

    The keys/values are the RGB tokens *and* the current queries: with RGB keys alone, the CLS query could
    never read the semantic tokens, and the fused CLS would not depend on the label map at all."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, rgb_tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(torch.cat([rgb_tokens, queries], dim=1))
        x = queries + self.attn(self.norm_q(queries), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class GeoSurge(nn.Module):
    """Image (+ semantic label map) → embedding v; cell embeddings per level; hierarchical loss and inference.

    `forward(batch)` takes a dict with `image` (uint8 [B,H,W,3] or float [B,3,H,W] in [0,1]), `label_map`
    (uint8 [B,g,g] ADE20K ids) and optionally `cells` (int [B, levels]); it returns `embedding`, and with
    `cells` also `loss` and `loss_level_<l>`. `predict(batch, k)` returns the top-k finest cells.
    """

    def __init__(
        self,
        hierarchy: HierarchySpec,
        backbone: str = "vit_tiny_patch16_224",
        backbone_kwargs: dict | None = None,
        pretrained: bool = False,
        trainable_blocks: int | None = None,
        embed_dim: int = 128,
        fusion: bool = True,
        fusion_blocks: int = 3,
        fusion_heads: int = 4,
        temperature_init: float = 0.07,
        semantic_classes: int = NUM_ADE20K_CLASSES,
    ):
        super().__init__()
        self.backbone = Backbone(backbone, backbone_kwargs, pretrained, trainable_blocks)
        self.grid = self.backbone.grid
        dim = self.backbone.dim

        self.semantic_classes = semantic_classes
        self.use_fusion = fusion
        if fusion:
            self.semantic_proj = nn.Linear(semantic_classes, dim)
            self.semantic_pos = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
            nn.init.trunc_normal_(self.semantic_pos, std=0.02)
            self.fusion = nn.ModuleList(FusionBlock(dim, fusion_heads) for _ in range(fusion_blocks))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, embed_dim)

        self.cell_embeddings = nn.ParameterList(
            nn.Parameter(torch.randn(n, embed_dim) * 0.02) for n in hierarchy.num_cells
        )
        self.log_temperature = nn.Parameter(torch.full((len(hierarchy.num_cells),), math.log(temperature_init)))
        self.register_buffer("ancestors", torch.from_numpy(hierarchy.ancestors()), persistent=False)
        self.register_buffer("finest_latlon", torch.from_numpy(np.stack([hierarchy.finest_lat, hierarchy.finest_lon], 1)), persistent=False)

    @property
    def num_levels(self) -> int:
        return len(self.cell_embeddings)

    def semantic_tokens(self, label_map: torch.Tensor) -> torch.Tensor:
        """uint8 [B,g,g] ADE20K ids → [B, grid_h*grid_w, dim]: one-hot, pooled to the patch grid, projected."""
        one_hot = F.one_hot(label_map.long(), self.semantic_classes).permute(0, 3, 1, 2).to(self.semantic_pos.dtype)
        if tuple(one_hot.shape[-2:]) != self.grid:  # stored grid ≠ model grid: class fractions per patch
            one_hot = F.adaptive_avg_pool2d(one_hot, self.grid)
        return self.semantic_proj(one_hot.flatten(2).transpose(1, 2)) + self.semantic_pos

    def embed(self, image: torch.Tensor, label_map: torch.Tensor | None) -> torch.Tensor:
        tokens = self.backbone(image)  # [B, 1 + patches, dim]
        cls = tokens[:, :1]
        if self.use_fusion:
            if label_map is None:
                raise ValueError("this GeoSURGE model fuses semantics: pass a label_map")
            x = torch.cat([cls, self.semantic_tokens(label_map)], dim=1)
            for block in self.fusion:
                x = block(x, tokens)
            cls = x[:, :1]
        return F.normalize(self.head(self.head_norm(cls[:, 0])), dim=-1)

    def level_logits(self, v: torch.Tensor) -> list[torch.Tensor]:
        temperature = self.log_temperature.exp().clamp(min=1e-3)
        return [v @ F.normalize(g, dim=-1).t() / temperature[l] for l, g in enumerate(self.cell_embeddings)]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch["image"], batch.get("label_map"))
        out = {"embedding": v}
        if "cells" in batch:
            cells = batch["cells"].long()
            losses = [F.cross_entropy(logits, cells[:, l]) for l, logits in enumerate(self.level_logits(v))]
            for l, loss in enumerate(losses):
                out[f"loss_level_{l}"] = loss.detach()
            out["loss"] = torch.stack(losses).sum()
        return out

    def finest_log_scores(self, v: torch.Tensor) -> torch.Tensor:
        """[B, n_finest]: log of (finest-cell probability × all its ancestors' probabilities)."""
        scores = torch.zeros(v.shape[0], self.ancestors.shape[1], device=v.device)
        for l, logits in enumerate(self.level_logits(v)):
            scores = scores + F.log_softmax(logits.float(), dim=-1)[:, self.ancestors[l]]
        return scores

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], k: int = 5) -> dict[str, torch.Tensor]:
        """Top-k finest cells: `cell` [B,k], `score` [B,k] (probability products), `lat`/`lon` [B,k]."""
        log_scores = self.finest_log_scores(self.embed(batch["image"], batch.get("label_map")))
        top = log_scores.topk(min(k, log_scores.shape[1]), dim=-1)
        latlon = self.finest_latlon[top.indices]
        return {"cell": top.indices, "score": top.values.exp(), "lat": latlon[..., 0], "lon": latlon[..., 1]}


@register_model("geosurge")
def _build(config: ModelConfig, hierarchy: HierarchySpec) -> GeoSurge:
    return GeoSurge(
        hierarchy,
        backbone=config.backbone,
        backbone_kwargs=config.backbone_kwargs,
        pretrained=config.pretrained,
        trainable_blocks=config.trainable_blocks,
        embed_dim=config.embed_dim,
        fusion=config.fusion,
        fusion_blocks=config.fusion_blocks,
        fusion_heads=config.fusion_heads,
        temperature_init=config.temperature_init,
    )
