"""What a model needs of a GeocellHierarchy: cells per level, parent links, the finest cells' coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geosurge.geo.geocells import GeocellHierarchy


@dataclass(frozen=True)
class HierarchySpec:
    """What the model needs of a GeocellHierarchy: cells per level, parent links, finest-cell coordinates."""

    num_cells: tuple[int, ...]
    parents: tuple[np.ndarray, ...]  # parents[l][i]: index in level l-1 of cell i of level l (-1 at level 0)
    finest_lat: np.ndarray
    finest_lon: np.ndarray

    @classmethod
    def from_hierarchy(cls, h: GeocellHierarchy) -> "HierarchySpec":
        lat, lon = h.cell_coordinates(h.num_levels - 1)
        return cls(tuple(h.num_cells), tuple(np.asarray(h.parents(l)) for l in range(h.num_levels)), lat, lon)

    def ancestors(self) -> np.ndarray:
        """[num_levels, n_finest]: the index at every level of each finest cell's ancestor (itself last)."""
        levels = len(self.num_cells)
        out = np.empty((levels, self.num_cells[-1]), dtype=np.int64)
        out[-1] = np.arange(self.num_cells[-1])
        for level in range(levels - 1, 0, -1):
            out[level - 1] = self.parents[level][out[level]]
        return out
