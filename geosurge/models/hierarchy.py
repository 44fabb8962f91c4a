"""What a model needs of a GeocellHierarchy: cells per level, parent links, the finest cells' coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosurge.geo.geocells import IGNORE_CELL, GeocellHierarchy


def level_cross_entropy(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the rows that have a cell at this level; rows labelled IGNORE_CELL (their cell
    was dropped from the level, see `GeocellHierarchy.assign`) are skipped. A batch with no labelled row gives 0,
    not the NaN of a mean over nothing, so one sparse batch cannot poison the summed loss."""
    cells = cells.long()
    total = F.cross_entropy(logits, cells, ignore_index=IGNORE_CELL, reduction="sum")
    return total / (cells != IGNORE_CELL).sum().clamp(min=1)


def ancestor_log_sums(
    log_probs: list[torch.Tensor], parents: list[torch.Tensor], in_place: bool = False
) -> torch.Tensor:
    """Per-level log probabilities [B, n_l] → [B, n_finest]: each finest cell's plus all its ancestors'.

    `parents[l - 1]` holds the level-(l-1) parent of every level-l cell. Summed top-down, one gather of each
    level's own width, instead of gathering every level out to the finest width; each sum adds the same
    terms in the same order as level-by-level gathers, so the result is bit-identical to that. `in_place`
    (without autograd) adds into `log_probs[1:]`, saving a [B, n_l] allocation per level."""
    out = log_probs[0]
    for level_log_probs, parent in zip(log_probs[1:], parents):
        parent_sums = out.index_select(1, parent)
        out = level_log_probs.add_(parent_sums) if in_place else level_log_probs + parent_sums
    return out


class AncestorSums(nn.Module):
    """`ancestor_log_sums` over one hierarchy: holds each level's parent index as a non-persistent buffer (it
    moves with the model's device and stays out of its state dict) and sums top-down."""

    def __init__(self, hierarchy: HierarchySpec):
        super().__init__()
        self.num_levels = len(hierarchy.num_cells)
        for level in range(1, self.num_levels):
            parents = np.asarray(hierarchy.parents[level], dtype=np.int64)
            self.register_buffer(f"parents_{level}", torch.from_numpy(parents), persistent=False)

    def forward(self, log_probs: list[torch.Tensor], in_place: bool = False) -> torch.Tensor:
        """Per-level log probabilities [B, n_l] → [B, n_finest] (see `ancestor_log_sums`)."""
        parents = [getattr(self, f"parents_{level}") for level in range(1, self.num_levels)]
        return ancestor_log_sums(log_probs, parents, in_place)


@dataclass(frozen=True)
class HierarchySpec:
    """What a model needs of a GeocellHierarchy: cells per level, parent links, every cell's coordinate."""

    num_cells: tuple[int, ...]
    parents: tuple[np.ndarray, ...]  # parents[l][i]: index in level l-1 of cell i of level l (-1 at level 0)
    lat: tuple[np.ndarray, ...]  # lat[l][i]: the coordinate of cell i of level l (mean of its members)
    lon: tuple[np.ndarray, ...]

    @classmethod
    def from_hierarchy(cls, h: GeocellHierarchy) -> HierarchySpec:
        levels = range(h.num_levels)
        coords = [h.cell_coordinates(l) for l in levels]
        return cls(tuple(h.num_cells), tuple(np.asarray(h.parents(l)) for l in levels),
                   tuple(c[0] for c in coords), tuple(c[1] for c in coords))

    def latlon(self, level: int = -1) -> np.ndarray:
        """[n_cells, 2] (lat, lon) of one level's cells; the finest level by default."""
        return np.stack([self.lat[level], self.lon[level]], axis=1)

    def ancestors(self) -> np.ndarray:
        """[num_levels, n_finest]: the index at every level of each finest cell's ancestor (itself last)."""
        levels = len(self.num_cells)
        out = np.empty((levels, self.num_cells[-1]), dtype=np.int64)
        out[-1] = np.arange(self.num_cells[-1])
        for level in range(levels - 1, 0, -1):
            out[level - 1] = self.parents[level][out[level]]
        return out
