"""The geocell hierarchy of GeoSURGE on H3 (design.md §1.1).

Each level partitions the training coordinates adaptively: starting at H3 resolution 0, a cell holding more
than `tau_max[level]` points is split into its children (down to `max_resolution`), and a final cell holding
fewer than `tau_min` points is dropped. A falling `tau_max` makes every level a refinement of the previous one.

The hierarchy is exact: every point's H3 cell is computed once at `max_resolution`, and its cell at a coarser
resolution is its H3 ancestor (the `cell_to_parent` relation, done here with vectorised bit operations). H3
children are not geometrically inside their parents, so looking points up at each resolution separately would
not nest.

Scale: MP-16 has 4.72 M training coordinates. Points are sorted once by their max-resolution H3 id; all
descendants of any H3 cell are then contiguous, so grouping at any resolution is a run-length pass over the
sorted array, and the per-level splitting is a few vectorised passes over points.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from h3.api import basic_int as h3_int
from scipy.spatial import cKDTree

from geosurge.config import MAX_H3_RESOLUTION as _MAX_H3_RES
from geosurge.config import GeocellConfig
from geosurge.geo.distance import latlon_to_unit_xyz, unit_xyz_to_latlon
from geosurge.storage import S3Config, resolve, write_parquet

__all__ = ["IGNORE_CELL", "GeocellConfig", "GeocellHierarchy", "h3_cell_to_parent", "h3_resolution", "latlng_to_h3"]

# H3 64-bit index layout: resolution in bits 52-55; resolution digit r (1..15) in 3 bits at offset 3*(15-r);
# digits finer than the cell's resolution are all 0b111.
_RES_SHIFT = np.uint64(52)
_RES_MASK = np.uint64(0xF) << _RES_SHIFT
_METADATA_KEY = b"geosurge.geocells"
_FORMAT_VERSION = 1
_LEVEL_COLUMNS = ("cell", "h3", "resolution", "lat", "lon", "count", "parent")
IGNORE_CELL = -1  # "no cell at this level" in assign's labels; the models' losses skip it (ignore_index)
_H3_CHUNK = 1 << 20  # points per h3 batch: bounds the temporary Python lists (~100 MB per million)


def h3_resolution(cells: Any) -> np.ndarray:
    """Resolution of each H3 cell index (uint64 array in, int64 out)."""
    cells = np.asarray(cells, dtype=np.uint64)
    return ((cells & _RES_MASK) >> _RES_SHIFT).astype(np.int64)


def h3_cell_to_parent(cells: Any, res: Any) -> np.ndarray:
    """Vectorised `h3.cell_to_parent`: the ancestor of each cell at resolution `res` (scalar or per cell).

    `res` equal to a cell's own resolution returns the cell. Raises ValueError if `res` is finer than a cell.
    """
    cells = np.asarray(cells, dtype=np.uint64)
    res_arr = np.asarray(res, dtype=np.int64)
    if res_arr.size and (res_arr.min() < 0 or (res_arr > h3_resolution(cells)).any()):
        raise ValueError("parent resolution must be between 0 and the cell's own resolution")
    res_u = res_arr.astype(np.uint64)
    # digits finer than res occupy the low 3*(15-res) bits; setting them all to 1 marks them unused (0b111)
    low_bits = (np.uint64(1) << (np.uint64(3) * (np.uint64(_MAX_H3_RES) - res_u))) - np.uint64(1)
    return ((cells | low_bits) & ~_RES_MASK) | (res_u << _RES_SHIFT)


def latlng_to_h3(lat: np.ndarray, lon: np.ndarray, res: int) -> np.ndarray:
    """H3 cell ids (uint64) of points at resolution `res`; h3 has no vectorised call, so batches of map()."""
    n = lat.size
    out = np.empty(n, dtype=np.uint64)
    to_cell = h3_int.latlng_to_cell
    for start in range(0, n, _H3_CHUNK):
        la = lat[start:start + _H3_CHUNK].tolist()
        lo = lon[start:start + _H3_CHUNK].tolist()
        out[start:start + len(la)] = np.fromiter(map(to_cell, la, lo, [res] * len(la)), dtype=np.uint64, count=len(la))
    return out


def _validate_coords(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    if lat.size != lon.size:
        raise ValueError(f"lat and lon differ in length: {lat.size} vs {lon.size}")
    if lat.size == 0:
        raise ValueError("no coordinates given")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0)
    bad = int(lat.size - np.count_nonzero(ok))
    if bad:
        raise ValueError(
            f"{bad} of {lat.size} rows have NaN/inf or out-of-range coordinates "
            "(lat must be in [-90, 90], lon in [-180, 180])"
        )
    return lat, lon


def _run_starts(keys: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in an array where equal values are contiguous."""
    change = np.empty(keys.size, dtype=bool)
    change[0] = True
    np.not_equal(keys[1:], keys[:-1], out=change[1:])
    return np.flatnonzero(change)



class GeocellHierarchy:
    """Nested levels of H3 geocells built from training coordinates; level 0 is the coarsest.

    Each level is a pandas DataFrame sorted by H3 id with columns `cell` (0..n-1), `h3` (uint64), `resolution`,
    `lat`, `lon` (mean of the members' coordinates), `count` (training members) and `parent` (row of the
    containing cell in the previous level; -1 at level 0).
    """

    def __init__(self, levels: Sequence[pd.DataFrame], config: GeocellConfig) -> None:
        if len(levels) != len(config.tau_max):
            raise ValueError(f"{len(levels)} levels given for {len(config.tau_max)} tau_max entries")
        self._config = config
        self._levels = [df.reset_index(drop=True) for df in levels]
        self._h3 = [df["h3"].to_numpy(dtype=np.uint64) for df in self._levels]
        for i, h in enumerate(self._h3):
            if h.size == 0:
                raise ValueError(f"level {i} has no cells")
            if (np.diff(h) <= 0).any():
                raise ValueError(f"level {i} is not sorted by unique H3 id")
        self._resolutions = [np.unique(df["resolution"].to_numpy()) for df in self._levels]
        self._trees: list[cKDTree | None] = [None] * len(self._levels)
        self._child_index: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self._levels)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        lat: Any,
        lon: Any,
        tau_max: Sequence[int],
        tau_min: int,
        max_resolution: int = 12,
    ) -> GeocellHierarchy:
        """Build one level per `tau_max` entry from training coordinates (degrees)."""
        config = GeocellConfig(tuple(tau_max), tau_min, max_resolution)
        lat, lon = _validate_coords(lat, lon)
        n = lat.size
        max_res = config.max_resolution
        n_levels = len(config.tau_max)

        cells = latlng_to_h3(lat, lon, max_res)
        # stable: points sharing a max-res cell keep input order, so the per-cell sums are reproducible
        order = np.argsort(cells, kind="stable")
        sorted_cells = cells[order]
        del cells

        # final_res[l, i]: resolution at which point i's cell stops splitting at level l. Member counts only
        # fall with resolution, so it is the first resolution whose cell holds <= tau_max[l] points.
        final_res = np.full((n_levels, n), -1, dtype=np.int8)
        for r in range(max_res + 1):
            # ancestors at r differ exactly where the bits above digit r's offset differ (same res field)
            starts = _run_starts(sorted_cells >> np.uint64(3 * (_MAX_H3_RES - r)))
            lengths = np.diff(np.append(starts, n))
            count = np.repeat(lengths, lengths)
            for lvl, t in enumerate(config.tau_max):
                fr = final_res[lvl]
                decide = fr < 0
                if r < max_res:
                    decide &= count <= t
                fr[decide] = r
            # tau_max falls with the level, so the finest level decides last
            if not (final_res[-1] < 0).any():
                break
        del count

        xyz = latlon_to_unit_xyz(lat[order], lon[order])
        del order
        levels: list[pd.DataFrame] = []
        prev_point_cell: np.ndarray | None = None
        for lvl in range(n_levels):
            point_h3 = h3_cell_to_parent(sorted_cells, final_res[lvl])
            starts = _run_starts(point_h3)
            lengths = np.diff(np.append(starts, n))
            ids = point_h3[starts]
            del point_h3
            kept = np.flatnonzero(lengths >= config.tau_min)
            if kept.size == 0:
                raise ValueError(
                    f"level {lvl}: every cell holds fewer than tau_min={config.tau_min} points; lower tau_min"
                )
            perm = np.argsort(ids[kept], kind="stable")  # cell index = rank of the H3 id within the level
            kept_sorted = kept[perm]
            run_cell = np.full(starts.size, -1, dtype=np.int64)
            run_cell[kept_sorted] = np.arange(kept_sorted.size)

            # mean via unit vectors, not of raw degrees: a cell straddling the antimeridian (lon 179.9 and
            # -179.9) must average to ~180, not 0; the vector mean is the spherical centroid direction
            sums = np.add.reduceat(xyz, starts, axis=0)[kept_sorted]
            c_lat, c_lon = unit_xyz_to_latlon(sums)
            if prev_point_cell is None:
                parent = np.full(kept_sorted.size, -1, dtype=np.int64)
            else:
                parent = prev_point_cell[starts[kept_sorted]]
                # a kept cell's parent holds at least as many points, so it is never dropped
                assert (parent >= 0).all(), "a kept cell has a dropped parent"
            levels.append(
                pd.DataFrame(
                    {
                        "cell": np.arange(kept_sorted.size, dtype=np.int64),
                        "h3": ids[kept_sorted].astype(np.uint64),
                        "resolution": final_res[lvl][starts[kept_sorted]].astype(np.int64),
                        "lat": c_lat,
                        "lon": c_lon,
                        "count": lengths[kept_sorted].astype(np.int64),
                        "parent": parent,
                    }
                )
            )
            prev_point_cell = np.repeat(run_cell, lengths)
        return cls(levels, config)

    # ------------------------------------------------------------------ access
    @property
    def config(self) -> GeocellConfig:
        """The build parameters (tau_max, tau_min, max_resolution)."""
        return self._config

    @property
    def num_levels(self) -> int:
        """Number of levels (one per tau_max entry)."""
        return len(self._levels)

    @property
    def num_cells(self) -> list[int]:
        """Number of kept cells at each level, coarsest first."""
        return [len(df) for df in self._levels]

    @property
    def levels(self) -> list[pd.DataFrame]:
        """Copies of the per-level tables (see the class docstring for the columns)."""
        return [df.copy() for df in self._levels]

    def _check_level(self, level: int) -> int:
        if not -self.num_levels <= level < self.num_levels:
            raise IndexError(f"level {level} out of range for {self.num_levels} levels")
        return level % self.num_levels

    def cell_coordinates(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) in degrees of every cell of a level: the mean of its training members."""
        df = self._levels[self._check_level(level)]
        return df["lat"].to_numpy(copy=True), df["lon"].to_numpy(copy=True)

    def parents(self, level: int) -> np.ndarray:
        """Index of each cell's containing cell in level-1 (all -1 at level 0)."""
        return self._levels[self._check_level(level)]["parent"].to_numpy(copy=True)

    # ------------------------------------------------------------------ assignment
    def _tree(self, level: int) -> cKDTree:
        tree = self._trees[level]
        if tree is None:
            tree = cKDTree(self._unit_xyz(level))
            self._trees[level] = tree
        return tree

    def _children(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR children of level-1's cells in `level`: those of cell p are `children[ptr[p]:ptr[p + 1]]`."""
        if self._child_index[level] is None:
            parents = self._levels[level]["parent"].to_numpy(dtype=np.int64)
            ptr = np.zeros(len(self._levels[level - 1]) + 1, dtype=np.int64)
            np.cumsum(np.bincount(parents, minlength=len(self._levels[level - 1])), out=ptr[1:])
            self._child_index[level] = (ptr, np.argsort(parents, kind="stable").astype(np.int64))
        return self._child_index[level]

    def _unit_xyz(self, level: int) -> np.ndarray:
        df = self._levels[level]
        return latlon_to_unit_xyz(df["lat"].to_numpy(), df["lon"].to_numpy())

    def assign(self, lat: Any, lon: Any, nearest: bool = False) -> np.ndarray:
        """Cell index at every level for arbitrary points: int64 array [n, num_levels]; IGNORE_CELL (-1) = none.

        A point gets the kept cell that is its H3 ancestor (or its own cell) at each level. The labels always
        respect the hierarchy: wherever a point has cells at levels l-1 and l, the second is a child of the first
        (`parents(l)[label[l]] == label[l-1]`), so product-of-ancestors inference scores the cell it was taught.

        `nearest=False` (the default: training labels, what ingest writes): a point whose cell was dropped at a level gets
        IGNORE_CELL there. Drops only go down the levels (a finer cell holds a subset of its parent's points), so
        a point keeps a prefix of its levels and is ignored below it, as TIBHannover/GeoEstimation drops an
        image from a partitioning where its cell is too small. Moving it instead would teach a cell that, in
        sparse regions, lies hundreds of km away.

        `nearest=True` (a cell at every level it can have, e.g. for points off the training data): a point with
        no kept cell at level 0 gets the level-0 cell with the nearest coordinate (great-circle); a point with
        no kept cell at level l gets the nearest among the children of its level-(l-1) cell, never a cell
        under another parent. A level-(l-1) cell without children ends the chain: IGNORE_CELL from there on.
        """
        lat, lon = _validate_coords(lat, lon)
        cells = latlng_to_h3(lat, lon, self._config.max_resolution)
        # sorted needles make searchsorted much faster (each search starts from the previous hit)
        order = np.argsort(cells)
        cells = cells[order]
        out = np.empty((lat.size, self.num_levels), dtype=np.int64)
        prev = None
        for lvl in range(self.num_levels):
            h = self._h3[lvl]
            idx = np.full(lat.size, IGNORE_CELL, dtype=np.int64)
            for r in self._resolutions[lvl]:
                anc = h3_cell_to_parent(cells, int(r))
                pos = np.searchsorted(h, anc)
                np.minimum(pos, h.size - 1, out=pos)
                hit = h[pos] == anc
                idx[hit] = pos[hit]
            if nearest:
                miss = np.flatnonzero(idx < 0)
                if miss.size and lvl == 0:
                    pts = latlon_to_unit_xyz(lat[order[miss]], lon[order[miss]])
                    # chord distance between unit vectors is monotone in great-circle distance
                    _, idx[miss] = self._tree(0).query(pts, k=1)
                elif miss.size:
                    idx[miss] = self._nearest_child(lvl, prev[miss], lat[order[miss]], lon[order[miss]])
            prev = idx
            out[order, lvl] = idx
        return out

    def _nearest_child(self, level: int, parent: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """For each point, the child of its `parent` (a cell of level-1) at `level` with the nearest coordinate."""
        ptr, children = self._children(level)
        xyz = self._unit_xyz(level)
        pts = latlon_to_unit_xyz(lat, lon)
        out = np.full(parent.size, IGNORE_CELL, dtype=np.int64)
        for p in np.unique(parent[parent >= 0]):  # one small search per parent: children are few
            rows = np.flatnonzero(parent == p)
            kids = children[ptr[p]:ptr[p + 1]]
            if kids.size:  # largest dot product of unit vectors = smallest great-circle distance
                out[rows] = kids[np.argmax(pts[rows] @ xyz[kids].T, axis=1)]
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, uri: str, s3: S3Config | None = None) -> None:
        """Write all levels to ONE Parquet file (a `level` column; config as JSON in the schema metadata)."""
        columns: dict[str, list[np.ndarray]] = {name: [] for name in ("level", *_LEVEL_COLUMNS)}
        for lvl, df in enumerate(self._levels):
            columns["level"].append(np.full(len(df), lvl, dtype=np.int64))
            for name in _LEVEL_COLUMNS:
                columns[name].append(df[name].to_numpy())
        table = pa.table({name: pa.array(np.concatenate(parts)) for name, parts in columns.items()})
        meta = {"format_version": _FORMAT_VERSION, **self._config.to_dict()}
        write_parquet(table, uri, s3, metadata={_METADATA_KEY: json.dumps(meta).encode()})

    @classmethod
    def load(cls, uri: str, s3: S3Config | None = None) -> GeocellHierarchy:
        """Read a hierarchy written by `save` (local path, file:// or s3://)."""
        fs, path = resolve(uri, s3)
        table = pq.read_table(path, filesystem=fs)
        raw = (table.schema.metadata or {}).get(_METADATA_KEY)
        if raw is None:
            raise ValueError(f"{uri} is not a geocell hierarchy file (no {_METADATA_KEY.decode()} metadata)")
        meta = json.loads(raw)
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{uri}: unsupported geocell file format {meta.get('format_version')}")
        config = GeocellConfig(tuple(meta["tau_max"]), meta["tau_min"], meta["max_resolution"])
        cols = {name: table.column(name).to_numpy() for name in ("level", *_LEVEL_COLUMNS)}
        levels = []
        for lvl in range(len(config.tau_max)):
            sel = cols["level"] == lvl
            levels.append(pd.DataFrame({name: cols[name][sel] for name in _LEVEL_COLUMNS}))
        return cls(levels, config)

    # ------------------------------------------------------------------ misc
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GeocellHierarchy):
            return NotImplemented
        return self._config == other._config and all(a.equals(b) for a, b in zip(self._levels, other._levels))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container; equality is by value

    def __repr__(self) -> str:
        c = self._config
        per_level = ", ".join(
            f"L{i}: {len(df)} cells (res {int(df['resolution'].min())}-{int(df['resolution'].max())})"
            for i, df in enumerate(self._levels)
        )
        return (
            f"GeocellHierarchy({self.num_levels} levels, tau_max={list(c.tau_max)}, tau_min={c.tau_min}, "
            f"max_resolution={c.max_resolution}; {per_level})"
        )

