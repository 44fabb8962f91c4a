"""Land or sea at ~1 km: the GLOBE mask of the `global-land-mask` package, bit-packed once per machine into a file
that every later process memory-maps.

The package decompresses its whole 21,600 × 43,200 boolean mask on import: 3.5 s and 0.9 GB of memory in every
process that would use it (GeoWorld's generator, a manifest's swapped-columns check, each eval job's world maps).
The packed copy is 117 MB on disk, maps in milliseconds and is paged in only where points fall (or, for a map's
coarse grid, only the rows it keeps). Answers are the package's own: the same grid and index rule.
"""

from __future__ import annotations

import functools
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from geosurge.layout import CACHE_ENV


def land_mask_folder() -> Path:
    """`$GEOSURGE_CACHE/land_mask`, else ~/.cache/geosurge/land_mask."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) / "land_mask" if root else Path.home() / ".cache" / "geosurge" / "land_mask"


@functools.lru_cache(maxsize=1)
def _packed() -> tuple[np.ndarray, np.ndarray]:
    """(the mask's rows bit-packed along longitude, memory-mapped; the grid [lat0, dlat, lat_lo, lat_hi, lon0, dlon,
    lon_lo, lon_hi]), built from the package's file on first use. An unwritable cache folder (a read-only home in
    a container) costs speed, not correctness: the packed mask is then held in this process's memory."""
    folder = land_mask_folder()
    stem = f"globe-{version('global-land-mask')}"
    bits, grid = folder / f"{stem}.bits.npy", folder / f"{stem}.grid.npy"
    if bits.exists() and grid.exists():
        return np.load(bits, mmap_mode="r"), np.load(grid)
    from global_land_mask import globe  # the one slow import, once per machine

    lat, lon = globe._lat, globe._lon
    grid_values = np.array([lat[0], lat[1] - lat[0], lat.min(), lat.max(),
                            lon[0], lon[1] - lon[0], lon.min(), lon.max()], np.float64)
    packed = np.packbits(globe._mask, axis=1)  # True = ocean, as the package stores it
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(grid, grid_values)
        _write_atomically(bits, packed)
    except OSError:
        pass
    return packed, grid_values


def _write_atomically(path: Path, array: np.ndarray) -> None:
    """Concurrent first uses (several Ray workers) each write a temporary file and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@functools.cache
def land_grid(step: int) -> np.ndarray:
    """bool [rows, cols], True on land, north-up from 90°N and west-first from 180°W: every `step`-th row and
    column of the 21,600 × 43,200 grid (step 30: a 0.25° map of 720 × 1440), for drawing maps."""
    bits, _ = _packed()
    n_cols = bits.shape[1] * 8
    ocean = np.unpackbits(np.asarray(bits[::step]), axis=1, count=n_cols)[:, ::step]  # reads only the kept rows
    land = ocean == 0
    land.flags.writeable = False  # one cached array for every caller: none may change it
    return land


def is_land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Whether each point is on land (lakes count as land), as `global_land_mask.globe.is_land` answers it; `lat`
    in [-90, 90], `lon` in [-180, 180]."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    if np.any(np.abs(lat) > 90) or np.any(np.abs(lon) > 180):
        raise ValueError("latitude must be within [-90, 90] and longitude within [-180, 180]")
    bits, (lat0, dlat, lat_lo, lat_hi, lon0, dlon, lon_lo, lon_hi) = _packed()
    row = ((np.clip(lat, lat_lo, lat_hi) - lat0) / dlat).astype(int)
    col = ((np.clip(lon, lon_lo, lon_hi) - lon0) / dlon).astype(int)
    ocean = (bits[row, col >> 3] >> (7 - (col & 7))) & 1
    return ocean == 0
