"""Figures for runs and reports, written as PNG files with matplotlib (Agg: no display needed).

The world map's land comes from `global-land-mask` (GLOBE 1 km land/sea grid, shipped inside the package), through
the packed copy every process maps (`geosurge.geo.land_mask`), so drawing a map downloads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never pick an interactive backend on a headless worker

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from geosurge.geo import land_mask

LAND_MASK_STEP = 30  # keep every 30th row/column of the 1/120° grid: a 0.25° map, 720 × 1440


def world_map(
    path: str | Path,
    pred_lat,
    pred_lon,
    true_lat=None,
    true_lon=None,
    labels: list[str] | None = None,
    title: str = "",
) -> Path:
    """A PNG world map (equirectangular) of predicted coordinates, with the true ones and a line from each
    prediction to its truth when those are given; `labels` (one per prediction, "" for none) are written
    beside the predictions. Returns the path written."""
    pred_lat, pred_lon = np.asarray(pred_lat, np.float64).ravel(), np.asarray(pred_lon, np.float64).ravel()
    if pred_lat.shape != pred_lon.shape:
        raise ValueError(f"pred_lat and pred_lon differ in length: {pred_lat.size} vs {pred_lon.size}")
    has_truth = true_lat is not None and true_lon is not None
    if has_truth:
        true_lat, true_lon = np.asarray(true_lat, np.float64).ravel(), np.asarray(true_lon, np.float64).ravel()
        if true_lat.shape != pred_lat.shape or true_lon.shape != pred_lon.shape:
            raise ValueError("true_lat/true_lon must have one coordinate per prediction")
    if labels is not None and len(labels) != pred_lat.size:
        raise ValueError(f"{len(labels)} labels for {pred_lat.size} predictions")

    fig, ax = plt.subplots(figsize=(12, 6.2), dpi=100)
    try:
        _draw_land(ax)
        if has_truth:
            for lat0, lon0, lat1, lon1 in zip(pred_lat, pred_lon, true_lat, true_lon):
                # the short way round: a pair across the antimeridian is drawn as two pieces leaving the map
                shift = 360.0 * np.sign(lon0 - lon1) if abs(lon0 - lon1) > 180 else 0.0
                for offset in ((0.0, -shift) if shift else (0.0,)):
                    ax.plot([lon0 + offset, lon1 + shift + offset], [lat0, lat1], color="#555555",
                            linewidth=0.7, alpha=0.7, zorder=1)
            ax.scatter(true_lon, true_lat, s=28, marker="o", facecolors="none", edgecolors="#1b7837",
                       linewidths=1.4, label="truth", zorder=2)
        ax.scatter(pred_lon, pred_lat, s=36, marker="x", color="#c51b7d", linewidths=1.6,
                   label="prediction", zorder=3)
        for lat, lon, text in zip(pred_lat, pred_lon, labels or []):
            if text:
                ax.annotate(text, (lon, lat), xytext=(4, 4), textcoords="offset points", fontsize=8, zorder=4,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
        _world_axes(ax)
        ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
        if title:
            ax.set_title(title)
        return _save_png(fig, path)
    finally:
        plt.close(fig)


def _draw_land(ax, land: str = "#cfcabb", sea: str = "#dce9f5") -> None:
    ax.imshow(land_mask.land_grid(LAND_MASK_STEP), extent=(-180, 180, -90, 90), origin="upper",
              interpolation="nearest", cmap=ListedColormap([sea, land]), vmin=0, vmax=1, zorder=0)


def _world_axes(ax) -> None:
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.grid(color="white", linewidth=0.4, alpha=0.6)


def accuracy_curve(path: str | Path, errors_km, thresholds_km=None, title: str = "") -> Path:
    """Accuracy against distance threshold: the share of images whose error is <= d, over a log-x range of d.

    `errors_km`: one array of great-circle errors, or {label: errors} for one curve per model (challenger vs
    champion). The curves are the exact step functions of the errors (the same `<=` as the metrics); markers at
    `thresholds_km` (default the benchmark's 1/25/200/750/2500 km) carry each model's accuracy there.
    Returns the path written."""
    from collections.abc import Mapping

    from geosurge.geo.metrics import ACCURACY_THRESHOLDS_KM

    curves = dict(errors_km) if isinstance(errors_km, Mapping) else {"model": errors_km}
    if not curves:
        raise ValueError("accuracy_curve needs at least one set of errors")
    marks = np.asarray(ACCURACY_THRESHOLDS_KM if thresholds_km is None else thresholds_km, np.float64)
    lo, hi = min(0.1, marks.min() / 10), max(20_037.5, marks.max())  # 20,037.5 km: half the circumference
    grid = np.logspace(np.log10(lo), np.log10(hi), 400)
    sorted_errors = {}
    for label, errors in curves.items():
        e = np.sort(np.asarray(errors, np.float64).ravel())
        if e.size == 0 or not np.isfinite(e).all():
            raise ValueError(f"accuracy_curve: the errors of {label!r} are empty or not finite")
        sorted_errors[label] = e

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        for x in marks:
            ax.axvline(x, color="0.88", linewidth=0.8, zorder=0)
        for i, (label, e) in enumerate(sorted_errors.items()):
            share = np.searchsorted(e, grid, side="right") / e.size
            at_marks = np.searchsorted(e, marks, side="right") / e.size
            (line,) = ax.step(grid, 100 * share, where="post", label=f"{label} (n={e.size})", zorder=2)
            ax.plot(marks, 100 * at_marks, "o", color=line.get_color(), zorder=3)
            for x, y in zip(marks, at_marks):
                ax.annotate(f"{100 * y:.1f}%", (x, 100 * y), xytext=(5, -12 - 11 * i), textcoords="offset points",
                            fontsize=7, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 100)
        ax.set_xticks(marks, [f"{x:g} km" for x in marks])
        ax.minorticks_off()
        ax.set_xlabel("distance threshold (great-circle, log scale)")
        ax.set_ylabel("images within the threshold (%)")
        ax.set_title(title or "accuracy against distance")
        ax.grid(axis="y", color="0.92")
        ax.legend(loc="upper left", fontsize=8)
        return _save_png(fig, path)
    finally:
        plt.close(fig)


BELIEF_DECADES = 6  # a belief map's colours span this many powers of ten below the best candidate; less is not drawn


@dataclass
class BeliefPanel:
    """One image's belief, for `belief_map`: every candidate place the model scores and its probability."""

    lat: np.ndarray  # [N] candidate coordinates: the finest cells' coordinates, or the GPS gallery's
    lon: np.ndarray
    prob: np.ndarray  # [N] the model's probability of each candidate
    cells: list[str] | None = None  # H3 index per candidate, drawn as its hexagon; None (a gallery): as points
    top_k: int = 5  # the best candidates marked and numbered
    true_lat: float | None = None
    true_lon: float | None = None
    title: str = ""


def belief_map(path: str | Path, panels: BeliefPanel | list[BeliefPanel]) -> Path:
    """A PNG of what a model believes, one world map per image: each candidate (H3 cell polygon, or gallery point)
    coloured by its probability on a log scale over `BELIEF_DECADES` decades below the best, the top-k numbered,
    the true location as a star with the top-1 error in the title. Returns the path written."""
    panels = [panels] if isinstance(panels, BeliefPanel) else list(panels)
    if not panels:
        raise ValueError("belief_map needs at least one panel")
    for p in panels:
        _check_belief(p)
    cols = 1 if len(panels) == 1 else 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12 * cols, 6.4 * rows), dpi=100, squeeze=False)
    try:
        for ax, panel in zip(axes.ravel(), panels):
            _draw_belief(fig, ax, panel)
        for ax in axes.ravel()[len(panels):]:
            ax.set_axis_off()
        return _save_png(fig, path)
    finally:
        plt.close(fig)


def _check_belief(p: BeliefPanel) -> None:
    p.lat, p.lon, p.prob = (np.asarray(a, np.float64).ravel() for a in (p.lat, p.lon, p.prob))
    if not p.lat.size or not (p.lat.size == p.lon.size == p.prob.size):
        raise ValueError(f"a belief needs one lat, lon and probability per candidate: {p.lat.size}, {p.lon.size}, "
                         f"{p.prob.size}")
    if p.cells is not None and len(p.cells) != p.prob.size:
        raise ValueError(f"{len(p.cells)} cells for {p.prob.size} probabilities")
    if not np.isfinite(p.prob).all() or (p.prob < 0).any() or p.prob.max() <= 0:
        raise ValueError("belief probabilities must be finite, non-negative and not all zero")
    if (p.true_lat is None) != (p.true_lon is None):
        raise ValueError("give both true_lat and true_lon, or neither")


def _draw_belief(fig, ax, p: BeliefPanel) -> None:
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LogNorm

    from geosurge.geo.distance import haversine_km

    best = float(p.prob.max())
    norm = LogNorm(vmin=best * 10.0**-BELIEF_DECADES, vmax=best)
    shown = np.flatnonzero(p.prob >= norm.vmin)
    shown = shown[np.argsort(p.prob[shown], kind="stable")]  # likeliest drawn last, on top
    cmap = plt.get_cmap("viridis")
    _draw_land(ax, land="#e6e2d6", sea="#f3f6f9")  # pale: the belief's colours carry the picture
    if p.cells is not None:
        polygons, values = _cell_polygons([p.cells[i] for i in shown], p.prob[shown])
        colours = cmap(norm(values))
        # edges in the face colour: a cell smaller than a pixel still shows as a dot
        ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors=colours, linewidths=0.6, zorder=1))
    else:
        ax.scatter(p.lon[shown], p.lat[shown], c=p.prob[shown], cmap=cmap, norm=norm, s=4, linewidths=0, zorder=1)
    top = np.argsort(-p.prob, kind="stable")[: max(p.top_k, 0)]
    if top.size:
        ax.scatter(p.lon[top], p.lat[top], s=90, marker="o", facecolors="white", edgecolors="black",
                   linewidths=1.0, zorder=3, label=f"top {len(top)}")
    for rank, i in enumerate(top, 1):
        ax.annotate(str(rank), (p.lon[i], p.lat[i]), ha="center", va="center", fontsize=7, zorder=4)
    title = p.title
    if p.true_lat is not None:
        ax.scatter([p.true_lon], [p.true_lat], s=220, marker="*", color="#d7191c", edgecolors="white",
                   linewidths=0.8, zorder=5, label="truth")
        first = int(np.argmax(p.prob))
        error = float(haversine_km(p.lat[first], p.lon[first], p.true_lat, p.true_lon))
        title = f"{title}\n" if title else ""
        title += f"top-1 is {error:,.0f} km from the truth"
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=ax, fraction=0.025, pad=0.01,
                 label=f"probability (log scale; {len(shown):,} of {p.prob.size:,} "
                       f"{'cells' if p.cells is not None else 'gallery points'} drawn)")
    _world_axes(ax)
    if top.size or p.true_lat is not None:
        ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    ax.set_title(title, fontsize=10)


def _cell_polygons(cells: list[str], values: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """H3 cells → (lon, lat) polygons and their values; a cell across the antimeridian becomes two pieces, one on
    each edge of the map."""
    import h3

    polygons, out = [], []
    for cell, value in zip(cells, values):
        ring = np.asarray(h3.cell_to_boundary(cell))[:, ::-1]  # (lat, lng) pairs → (lon, lat)
        if np.ptp(ring[:, 0]) > 180:
            ring[:, 0] = np.where(ring[:, 0] < 0, ring[:, 0] + 360, ring[:, 0])
            polygons.append(ring - [360, 0])
            out.append(value)
        polygons.append(ring)
        out.append(value)
    return polygons, np.asarray(out)


def error_region_map(path: str | Path, lat, lon, errors_km, resolution: int = 0, title: str = "") -> Path:
    """A PNG world map of the median error by region: the images' true locations grouped into H3 cells of
    `resolution` (0: 122 cells of about 1,100 km edge), each cell coloured by its images' median error (km, log
    scale) and labelled with its image count. Returns the path written."""
    import h3
    import pandas as pd
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LogNorm

    lat, lon, err = (np.asarray(a, np.float64).ravel() for a in (lat, lon, errors_km))
    if not lat.size or not (lat.size == lon.size == err.size):
        raise ValueError(f"error_region_map needs one lat, lon and error per image: {lat.size}, {lon.size}, {err.size}")
    if not (np.isfinite(lat).all() and np.isfinite(lon).all() and np.isfinite(err).all()):
        raise ValueError("error_region_map: coordinates and errors must be finite")
    regions = pd.DataFrame({"cell": [h3.latlng_to_cell(a, o, resolution) for a, o in zip(lat, lon)], "err": err})
    stats = regions.groupby("cell").err.agg(["median", "size"])
    norm = LogNorm(vmin=1.0, vmax=20_037.5)  # 1 km to half the circumference
    cmap = plt.get_cmap("RdYlGn_r")
    polygons, values = _cell_polygons(list(stats.index), stats["median"].to_numpy())
    fig, ax = plt.subplots(figsize=(12, 6.2), dpi=100)
    try:
        _draw_land(ax)
        colours = cmap(norm(np.clip(values, norm.vmin, norm.vmax)))
        ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="#333333", linewidths=0.4,
                                         alpha=0.85, zorder=1))
        for cell, row in stats.iterrows():
            c_lat, c_lon = h3.cell_to_latlng(cell)
            ax.annotate(f"{row['size']:.0f}", (c_lon, c_lat), ha="center", va="center", fontsize=7, zorder=2)
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.025, pad=0.01,
                     label="median error (km, log scale)")
        _world_axes(ax)
        ax.set_title(title or f"median error by region (H3 resolution {resolution}; numbers: images per region)",
                     fontsize=10)
        return _save_png(fig, path)
    finally:
        plt.close(fig)


def _save_png(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
