"""GeoWorld's drawing: one image and its exact ADE20K label map from a location's attributes."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from geosurge.data.geoworld.world import (
    _CLIMATE,
    BOAT,
    BUILDING,
    CAR,
    CITY_RADIUS_KM,
    EARTH,
    FIELD,
    GRASS,
    HILL,
    HOUSE,
    LAND,
    MOUNTAIN,
    PALM,
    PERSON,
    PIER,
    ROAD,
    SAND,
    SEA,
    SHIP,
    SIDEWALK,
    SKY,
    SKYSCRAPER,
    TREE,
    _hsv,
    _rgb,
    city_signature,
    country_style,
    landmark_motif,
)

URBAN_SCENE_SHARE = 0.12  # share of building/road pixels above which a scene is 'urban'
URBAN_IDS = np.array([BUILDING, HOUSE, SKYSCRAPER, ROAD, SIDEWALK, CAR], dtype=np.uint8)

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

