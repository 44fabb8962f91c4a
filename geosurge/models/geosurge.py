"""GeoSURGE (design.md §1.1): semantic fusion over a timm backbone + a hierarchy of geocell embeddings.

image ─ backbone ─ RGB tokens (CLS + patches) ───────────────┐ keys/values (with the queries)
label map ─ per-patch class histogram (or its majority class) ─ linear ─ semantic tokens ─┴ queries (CLS prepended)
        → N × [cross-attention + MLP, residuals, LayerNorm] → fused CLS → LayerNorm → linear → v
v · g_l / τ_l against every cell embedding g_l of each level l → InfoNCE per level, summed.
Inference: per-level softmax; a finest cell's score is its probability times its ancestors'. Exact scoring
computes every finest cell's score; beam search scores only the children of the best cells of the level
above. Optional ten-crop test-time augmentation averages the finest-cell scores over 10 views. Without
autograd in eval mode, the unit cell embeddings are normalised once and cached (`unit_cells`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosurge.config import ModelConfig
from geosurge.models.backbone import Backbone
from geosurge.models.factory import register_model
from geosurge.models.hierarchy import AncestorSums, HierarchySpec, level_cross_entropy
from geosurge.models.tta import ten_crop_views
from geosurge.segmentation.ade20k import NUM_ADE20K_CLASSES

SEMANTIC_TOKEN_MODES = ("histogram", "majority")


def child_index(parents: np.ndarray, num_parent_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR children of a level: the children of parent p are `children[ptr[p]:ptr[p + 1]]` (ascending)."""
    parents = np.asarray(parents, dtype=np.int64)
    children = np.argsort(parents, kind="stable").astype(np.int64)
    ptr = np.zeros(num_parent_cells + 1, dtype=np.int64)
    np.cumsum(np.bincount(parents, minlength=num_parent_cells), out=ptr[1:])
    return ptr, children


@torch.no_grad()
def geoclip_cell_embeddings(hierarchy: HierarchySpec, embed_dim: int, row_norm: float) -> list[torch.Tensor]:
    """Initial cell embeddings from GeoCLIP's pretrained location encoder (the released weights that ship in
    the geoclip package) evaluated at every cell's coordinate, mapped to `embed_dim` by a fitted projection:
    the top principal directions of all cells' GeoCLIP embeddings, so nearby cells start close together.

    Rows are scaled to `row_norm`, the norm of the random initialisation, so both options start with the
    same step-size-to-weight ratio under AdamW and differ only in direction."""
    from geosurge.models.geoclip import LocationEncoder, load_geoclip_location_weights

    encoder = load_geoclip_location_weights(LocationEncoder()).eval()
    per_level = [encoder.encode_locations(lat, lon, chunk_size=8192).double() for lat, lon in zip(hierarchy.lat, hierarchy.lon)]
    stacked = torch.cat(per_level)
    mean = stacked.mean(0)
    _, _, vh = torch.linalg.svd(stacked - mean, full_matrices=False)
    k = min(embed_dim, vh.shape[0])
    projection = vh[:k].T  # [512, k]: fitted by PCA over all cells of all levels
    out = []
    for e in per_level:
        z = F.pad((e - mean) @ projection, (0, embed_dim - k))  # zero-pad if embed_dim exceeds the components
        out.append((F.normalize(z, dim=-1) * row_norm).float())
    return out


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
    `cells` also `loss` and `loss_level_<l>`. `predict(batch, k)` returns the top-k finest cells (exactly,
    or by beam search; optionally averaged over ten crops).
    """

    def __init__(
        self,
        hierarchy: HierarchySpec,
        backbone: Backbone,
        embed_dim: int = 128,
        fusion: bool = True,
        fusion_blocks: int = 3,
        fusion_heads: int = 4,
        temperature_init: float = 0.07,
        semantic_classes: int = NUM_ADE20K_CLASSES,
        cell_init: str = "random",
        semantic_tokens: str = "histogram",
    ):
        super().__init__()
        # Unit cell embeddings for inference (see `unit_cells`): (key, per-level tensors).
        self._cell_cache: tuple[tuple, list[torch.Tensor]] | None = None
        if semantic_tokens not in SEMANTIC_TOKEN_MODES:
            raise ValueError(f"semantic_tokens must be one of {SEMANTIC_TOKEN_MODES}, got {semantic_tokens!r}")
        self.semantic_mode = semantic_tokens
        self.backbone = backbone
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

        if cell_init == "random":
            initial = [torch.randn(n, embed_dim) * 0.02 for n in hierarchy.num_cells]
        elif cell_init == "geoclip":
            initial = geoclip_cell_embeddings(hierarchy, embed_dim, row_norm=0.02 * math.sqrt(embed_dim))
        else:
            raise ValueError(f"cell_init must be 'random' or 'geoclip', got {cell_init!r}")
        self.cell_embeddings = nn.ParameterList(nn.Parameter(e) for e in initial)
        self.log_temperature = nn.Parameter(torch.full((len(hierarchy.num_cells),), math.log(temperature_init)))
        self.register_buffer("ancestors", torch.from_numpy(hierarchy.ancestors()), persistent=False)
        self.register_buffer("finest_latlon", torch.from_numpy(hierarchy.latlon()), persistent=False)
        # Beam search walks down from kept cells to their children: a CSR child index per level, built once.
        for level in range(1, len(hierarchy.num_cells)):
            ptr, children = child_index(hierarchy.parents[level], hierarchy.num_cells[level - 1])
            self.register_buffer(f"child_ptr_{level}", torch.from_numpy(ptr), persistent=False)
            self.register_buffer(f"children_{level}", torch.from_numpy(children), persistent=False)
        self.ancestor_sums = AncestorSums(hierarchy)  # exact scoring sums ancestors top-down

    @property
    def num_levels(self) -> int:
        return len(self.cell_embeddings)

    def train(self, mode: bool = True) -> GeoSurge:
        if mode:  # weights may change from here on, even behind the version counters (DeepSpeed, `.data`)
            self._cell_cache = None
        return super().train(mode)

    def unit_cells(self, level: int, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """[n_cells, D]: L2-normalised cell embeddings of `level`; `rows` (indices or a slice) picks some cells.

        Training (or any call with autograd on) normalises them afresh, so gradients flow through the
        normalisation. Inference without autograd in eval mode normalises each level once and caches it:
        at 100k × 768 cells the normalisation costs several times the scoring itself. The cache is keyed on
        each parameter's in-place version counter (optimizer steps, `load_state_dict`, in-place edits), its
        storage, device and dtype; train mode drops it (writes through `.data`, as DeepSpeed's, bypass the
        counters). Without the cache, only the picked rows are normalised."""
        if self.training or torch.is_grad_enabled():
            g = self.cell_embeddings[level]
            return F.normalize(g if rows is None else g[rows], dim=-1)
        key = tuple((p._version, p.data_ptr(), p.device, p.dtype, p.shape) for p in self.cell_embeddings)
        cache = self._cell_cache  # one read: a concurrent caller may replace it
        if cache is None or cache[0] != key:
            self._cell_cache = None  # free the stale copy before building the new one
            cache = self._cell_cache = (key, [F.normalize(g, dim=-1) for g in self.cell_embeddings])
        g = cache[1][level]
        return g if rows is None else g[rows]

    def patch_histograms(self, label_map: torch.Tensor) -> torch.Tensor:
        """uint8 [B,g,g] ADE20K ids → [B, classes, grid_h, grid_w]: the share of each class in each patch.

        The shards hold one label per cell of the stored label grid (the segmenter's argmax of its mean logits
        there), so a histogram sees the mix inside a patch only at that resolution: a stored grid k times the patch
        grid gives k² votes per patch; a stored grid equal to the patch grid gives one-hot patches."""
        one_hot = F.one_hot(label_map.long(), self.semantic_classes).permute(0, 3, 1, 2).to(self.semantic_pos.dtype)
        if tuple(one_hot.shape[-2:]) != self.grid:
            one_hot = F.adaptive_avg_pool2d(one_hot, self.grid)
        return one_hot

    def semantic_tokens(self, label_map: torch.Tensor) -> torch.Tensor:
        """uint8 [B,g,g] ADE20K ids → [B, grid_h*grid_w, dim]: per-patch class histograms, projected ("histogram":
        the whole mix of classes in a patch), or the one-hot of each patch's majority class ("majority")."""
        patches = self.patch_histograms(label_map)
        if self.semantic_mode == "majority":  # ties go to the lower class id (argmax's first maximum)
            patches = F.one_hot(patches.argmax(1), self.semantic_classes).permute(0, 3, 1, 2).to(patches.dtype)
        return self.semantic_proj(patches.flatten(2).transpose(1, 2)) + self.semantic_pos

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
        """[B, n_l] logits v·g/τ per level. v/τ is taken before the product: a [B, D] operation instead of a
        [B, n_l] pass over every cell."""
        temperature = self.temperatures()
        return [(v / temperature[l]) @ self.unit_cells(l).t() for l in range(self.num_levels)]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed(batch["image"], batch.get("label_map"))
        out = {"embedding": v}
        if "cells" in batch:
            cells = batch["cells"].long()
            losses = [level_cross_entropy(logits, cells[:, l]) for l, logits in enumerate(self.level_logits(v))]
            for l, loss in enumerate(losses):
                out[f"loss_level_{l}"] = loss.detach()
            out["loss"] = torch.stack(losses).sum()
        return out

    def finest_log_scores(self, v: torch.Tensor) -> torch.Tensor:
        """[B, n_finest]: log of (finest-cell probability × all its ancestors' probabilities)."""
        in_place = not torch.is_grad_enabled()  # inference: normalise over the logits, no second [B, n_l] each
        log_probs = [torch.log_softmax(x, dim=-1, out=x) if in_place else F.log_softmax(x, dim=-1)
                     for x in (logits.float() for logits in self.level_logits(v))]
        return self.ancestor_sums(log_probs, in_place=in_place)

    def temperatures(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=1e-3)

    def cell_logits(self, v: torch.Tensor, level: int, cells: torch.Tensor) -> torch.Tensor:
        """v [B,D], cells [B,M] (indices at `level`) → [B,M] logits v·g/τ of only those cells (float32)."""
        g = self.unit_cells(level, cells).float()  # gathers M rows, not the level
        return torch.einsum("bmd,bd->bm", g, v.float()) / self.temperatures()[level].float()

    def level_log_partition(self, v: torch.Tensor, level: int, chunk: int = 65536) -> torch.Tensor:
        """[B]: log Σ_j exp(v·g_j/τ) over all cells of `level`, streamed over chunks of `chunk` cells.

        The softmax normaliser needs every cell of the level; streaming keeps memory at [B, chunk]."""
        tau = self.temperatures()[level].float()
        out = torch.full((v.shape[0],), -math.inf, device=v.device)
        for start in range(0, self.cell_embeddings[level].shape[0], chunk):
            logits = v.float() @ self.unit_cells(level, slice(start, start + chunk)).float().t() / tau
            out = torch.logaddexp(out, torch.logsumexp(logits, dim=-1))
        return out

    def cell_log_scores(self, v: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """v [B,D], finest cells [B,M] → [B,M] log(probability × ancestors' probabilities) of those cells."""
        out = torch.zeros(cells.shape, device=v.device)
        for level in range(self.num_levels):
            logits = self.cell_logits(v, level, self.ancestors[level][cells])
            out = out + logits - self.level_log_partition(v, level)[:, None]
        return out

    def beam_search(self, v: torch.Tensor, beam: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the `beam` best cells of each level, expanding only their children at the next level.

        Returns the final beam at the finest level: cells [B, ≤beam] and their log scores, best first; a row
        whose kept cells have fewer descendants than `beam` is padded with cell -1 and score -inf. Only
        kept cells' children get logits (their embeddings are gathered), never a whole fine level. The
        ranking needs no softmax normaliser (it is one constant per image and level); `normalize` adds it
        (`level_log_partition`, one streamed pass over each level's cells) so that scores are log
        probability products. With beam ≥ the cell count of every level the result is exact scoring.
        """
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        rows = v.shape[0]
        # the coarsest level is small: all of its logits
        logits = v.float() @ self.unit_cells(0).float().t() / self.temperatures()[0].float()
        if normalize:
            logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        top = logits.topk(min(beam, logits.shape[1]), dim=-1)
        kept, cum = top.indices, top.values
        for level in range(1, self.num_levels):
            ptr, children = getattr(self, f"child_ptr_{level}"), getattr(self, f"children_{level}")
            width = kept.shape[1]
            parent = kept.clamp(min=0)
            counts = torch.where(torch.isfinite(cum), ptr[parent + 1] - ptr[parent], 0)  # pads expand to nothing
            flat_counts = counts.flatten()
            per_row = counts.sum(dim=1)
            slots = max(int(per_row.max()), 1) if rows else 1
            # one entry per (kept cell, child): which kept slot it came from and its place in the row
            source = torch.repeat_interleave(torch.arange(rows * width, device=v.device), flat_counts)
            first = torch.cumsum(flat_counts, 0) - flat_counts
            offset = torch.arange(source.numel(), device=v.device) - first[source]
            child = children[ptr[parent.flatten()[source]] + offset]
            row = source // width
            position = torch.arange(source.numel(), device=v.device) - (torch.cumsum(per_row, 0) - per_row)[row]
            score = cum.flatten()[source] + self.cell_logits(v[row], level, child[:, None])[:, 0]
            if normalize:
                score = score - self.level_log_partition(v, level)[row]
            cand_cells = torch.full((rows, slots), -1, dtype=torch.long, device=v.device)
            cand_score = torch.full((rows, slots), -math.inf, device=v.device)
            cand_cells[row, position] = child
            cand_score[row, position] = score
            top = cand_score.topk(min(beam, slots), dim=-1)
            kept, cum = cand_cells.gather(1, top.indices), top.values
        return torch.where(torch.isfinite(cum), kept, -1), cum

    @torch.no_grad()
    def predict(
        self,
        batch: dict[str, torch.Tensor],
        k: int = 5,
        ten_crop: bool = False,
        beam: int | None = None,
        normalize: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Top-k finest cells: `cell` [B,k], `score` [B,k] (probability products), `lat`/`lon` [B,k].

        `beam=None` scores every finest cell (the paper's method); `beam=B` runs `beam_search` (see there;
        `normalize=False` skips the softmax normalisers, so scores are then unnormalised, the cells the same).
        `ten_crop=True` averages the finest-cell probability products over the 10 views of `ten_crop_views`;
        with a beam, over the union of the 10 views' final beams (each cell scored exactly in every view).
        Rows with fewer than k reachable cells (a small beam) are padded with cell -1, score 0, lat/lon NaN.
        """
        image, label_map = batch["image"], batch.get("label_map")
        views = ten_crop_views(image, label_map) if ten_crop else [(image, label_map)]
        embeddings = [self.embed(img, lm) for img, lm in views]
        if beam is None and len(embeddings) == 1:
            top = self.finest_log_scores(embeddings[0]).topk(min(k, self.ancestors.shape[1]), dim=-1)
            cells, scores = top.indices, top.values.exp()
        elif beam is None:
            probs = sum(self.finest_log_scores(v).exp() for v in embeddings) / len(embeddings)
            top = probs.topk(min(k, probs.shape[1]), dim=-1)
            cells, scores = top.indices, top.values
        elif len(embeddings) == 1:
            cells, log_scores = self.beam_search(embeddings[0], beam, normalize)
            cells, scores = cells[:, :k], log_scores[:, :k].exp()
        else:
            if not normalize:
                raise ValueError("ten-crop averages probabilities across views: it needs normalize=True")
            candidates = torch.cat([self.beam_search(v, beam)[0] for v in embeddings], dim=1).sort(dim=1).values
            unusable = candidates < 0
            unusable[:, 1:] |= candidates[:, 1:] == candidates[:, :-1]  # each cell once
            safe = candidates.clamp(min=0)
            probs = sum(self.cell_log_scores(v, safe).exp() for v in embeddings) / len(embeddings)
            top = probs.masked_fill(unusable, -1.0).topk(min(k, probs.shape[1]), dim=-1)
            cells = torch.where(top.values >= 0, candidates.gather(1, top.indices), -1)
            scores = top.values.clamp(min=0)
        if cells.shape[1] < k and cells.shape[1] < self.ancestors.shape[1]:  # a beam narrower than k
            pad = min(k, self.ancestors.shape[1]) - cells.shape[1]
            cells = F.pad(cells, (0, pad), value=-1)
            scores = F.pad(scores, (0, pad), value=0.0)
        latlon = self.finest_latlon[cells.clamp(min=0)]
        latlon = latlon.masked_fill((cells < 0)[..., None], math.nan)
        return {"cell": cells, "score": scores, "lat": latlon[..., 0], "lon": latlon[..., 1]}


@register_model("geosurge")
def _build(config: ModelConfig, hierarchy: HierarchySpec) -> GeoSurge:
    return GeoSurge(
        hierarchy,
        backbone=Backbone.from_config(config),
        embed_dim=config.embed_dim,
        fusion=config.fusion,
        fusion_blocks=config.fusion_blocks,
        fusion_heads=config.fusion_heads,
        temperature_init=config.temperature_init,
        cell_init=config.cell_init,
        semantic_tokens=config.semantic_tokens,
    )
