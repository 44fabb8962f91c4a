"""Benchmark: how training labels treat points whose geocell was dropped, before and after issue 12.

Training coordinates: the 100K GPS gallery that ships in the `geoclip` package (coordinates of MP-16 photos);
hierarchy: the paper schedule of configs/geosurge-mp16.yaml (`geocells` section). For every level it prints
  - dropped: the share of training points whose own cell at that level was dropped (fewer than tau_min);
  - before: what `assign(nearest=True)` did to them (every level on its own, the nearest kept cell anywhere):
    the share moved, their median distance to the cell they were moved to, and the share of points whose
    label at this level is not a child of their label at the level above (breaks product-of-ancestors);
  - after: training labels (`assign(nearest=False)`, what ingest writes): the share ignored (-1) and the share
    moved or not nested (0 by construction); and `assign(nearest=True)` now (nearest child of the point's own
    coarser cell): moved share and nesting.

    python benchmarks/geocell_labels.py [--config configs/geosurge-mp16.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

from geosurge.data.gps_gallery import load_gps_gallery
from geosurge.geo.distance import latlon_to_unit_xyz, pairwise_haversine_km
from geosurge.geo.geocells import IGNORE_CELL, GeocellHierarchy

ROOT = Path(__file__).resolve().parents[1]


def per_level_nearest(cells: GeocellHierarchy, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The labels the code before issue 12 gave: each level's missing cell → the nearest kept cell of that level."""
    out = cells.assign(lat, lon, nearest=False)
    for lvl in range(cells.num_levels):
        miss = np.flatnonzero(out[:, lvl] == IGNORE_CELL)
        if miss.size:
            out[miss, lvl] = cells._tree(lvl).query(latlon_to_unit_xyz(lat[miss], lon[miss]), k=1)[1]
    return out


def not_nested(cells: GeocellHierarchy, labels: np.ndarray, lvl: int) -> float:
    """Share of points with a label at lvl and lvl-1 where the first is not a child of the second."""
    both = (labels[:, lvl] != IGNORE_CELL) & (labels[:, lvl - 1] != IGNORE_CELL)
    return float(np.mean(both & (cells.parents(lvl)[np.maximum(labels[:, lvl], 0)] != labels[:, lvl - 1])))


def moved_km(cells: GeocellHierarchy, labels: np.ndarray, exact: np.ndarray, lat, lon, lvl: int) -> float:
    """Median distance from each moved point to the coordinate of the cell it was moved to."""
    moved = np.flatnonzero((exact[:, lvl] == IGNORE_CELL) & (labels[:, lvl] != IGNORE_CELL))
    if not moved.size:
        return float("nan")
    c_lat, c_lon = cells.cell_coordinates(lvl)
    cell = labels[moved, lvl]
    return float(np.median([pairwise_haversine_km(lat[i], lon[i], c_lat[c], c_lon[c])[0, 0]
                            for i, c in zip(moved, cell)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "geosurge-mp16.yaml"))
    args = parser.parse_args(argv)
    geocells = yaml.safe_load(Path(args.config).read_text())["geocells"]
    tau_max, tau_min = geocells["tau_max"], geocells["tau_min"]
    gallery = load_gps_gallery()
    lat, lon = gallery[:, 0].astype(np.float64), gallery[:, 1].astype(np.float64)
    cells = GeocellHierarchy.build(lat, lon, tau_max, tau_min)
    exact = cells.assign(lat, lon, nearest=False)
    before = per_level_nearest(cells, lat, lon)
    hierarchical = cells.assign(lat, lon, nearest=True)

    print(f"{lat.size:,} training points (geoclip's 100K gallery); tau_max {tau_max}, tau_min {tau_min}")
    print(f"{'level':>5} {'cells':>6} {'dropped':>8} | {'before: moved':>13} {'median km':>9} {'not nested':>10} | "
          f"{'after: ignored':>14} {'moved':>5} {'not nested':>10} | {'nearest=True now: moved':>23} {'median km':>9} "
          f"{'not nested':>10}")
    for lvl in range(cells.num_levels):
        dropped = float(np.mean(exact[:, lvl] == IGNORE_CELL))
        nested = [not_nested(cells, x, lvl) if lvl else 0.0 for x in (before, exact, hierarchical)]
        moved_now = float(np.mean((exact[:, lvl] == IGNORE_CELL) & (hierarchical[:, lvl] != IGNORE_CELL)))
        print(f"{lvl:>5} {cells.num_cells[lvl]:>6} {dropped:>8.2%} | {dropped:>13.2%} "
              f"{moved_km(cells, before, exact, lat, lon, lvl):>9.0f} {nested[0]:>10.2%} | "
              f"{dropped:>14.2%} {0:>5.0%} {nested[1]:>10.2%} | {moved_now:>23.2%} "
              f"{moved_km(cells, hierarchical, exact, lat, lon, lvl):>9.0f} {nested[2]:>10.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
