"""Great-circle distances (haversine, R = 6371 km) for NumPy and torch, and unit-vector conversions.

Unit xyz vectors are how the rest of the package averages coordinates (antimeridian-safe means) and searches
nearest neighbours (chord distance between unit vectors is monotone in great-circle distance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: geocells and metrics must not pay its import time and memory
    import torch

EARTH_RADIUS_KM = 6371.0

ArrayLike = Any  # anything np.asarray accepts


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; NumPy broadcasting, float64 out."""
    lat1 = np.radians(np.asarray(lat1, dtype=np.float64))
    lon1 = np.radians(np.asarray(lon1, dtype=np.float64))
    lat2 = np.radians(np.asarray(lat2, dtype=np.float64))
    lon2 = np.radians(np.asarray(lon2, dtype=np.float64))
    a = np.sin((lat2 - lat1) * 0.5) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) * 0.5) ** 2
    # rounding can push `a` a hair outside [0, 1] for (near-)antipodal points; arcsin would give NaN
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def haversine_km_torch(
    lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor, lon2: torch.Tensor
) -> torch.Tensor:
    """Differentiable haversine distance in km (degrees in) for torch tensors; broadcasting, input dtype kept.

    `a` is clamped below at the dtype's smallest normal number before the square root: at zero distance
    d sqrt(a)/da is infinite, and the clamp makes that gradient 0 instead of NaN (which would poison a whole
    batch); the distance changes by < 1e-15 km. The asin argument is clamped into [0, 1].
    """
    import torch
    lat1, lon1 = torch.deg2rad(lat1), torch.deg2rad(lon1)
    lat2, lon2 = torch.deg2rad(lat2), torch.deg2rad(lon2)
    a = torch.sin((lat2 - lat1) * 0.5) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) * 0.5) ** 2
    tiny = torch.finfo(a.dtype).tiny
    s = torch.sqrt(torch.clamp(a, min=tiny)).clamp(0.0, 1.0)
    return 2.0 * EARTH_RADIUS_KM * torch.asin(s)


def pairwise_haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Distance matrix [n1, n2] in km between every point of set 1 and every point of set 2 (degrees in)."""
    lat1 = np.asarray(lat1, dtype=np.float64).reshape(-1, 1)
    lon1 = np.asarray(lon1, dtype=np.float64).reshape(-1, 1)
    lat2 = np.asarray(lat2, dtype=np.float64).reshape(1, -1)
    lon2 = np.asarray(lon2, dtype=np.float64).reshape(1, -1)
    return haversine_km(lat1, lon1, lat2, lon2)


def latlon_to_unit_xyz(lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
    """Unit vectors [n, 3] (float64, Earth-centred: x to (0, 0), z to the north pole) from degrees."""
    lat = np.radians(np.asarray(lat, dtype=np.float64).ravel())
    lon = np.radians(np.asarray(lon, dtype=np.float64).ravel())
    if lat.shape != lon.shape:
        raise ValueError(f"lat and lon differ in length: {lat.size} vs {lon.size}")
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=1)


def unit_xyz_to_latlon(xyz: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees from vectors [n, 3]; the vectors are normalised first (sums of unit vectors work).

    Raises ValueError for zero-length vectors, whose direction is undefined.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    norm = np.linalg.norm(xyz, axis=1)
    bad = ~(norm > 0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} vector(s) have zero length or are not finite; no direction to convert")
    x, y, z = (xyz / norm[:, None]).T
    # atan2 of (z, horizontal norm) stays accurate near the poles, where arcsin(z) loses precision
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = np.degrees(np.arctan2(y, x))
    return lat, lon
