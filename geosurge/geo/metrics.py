"""Geo-localization metrics: accuracy within 1/25/200/750/2500 km, median/mean error, OSV-5M GeoScore."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from geosurge.geo.distance import haversine_km

ACCURACY_THRESHOLDS_KM: tuple[int, ...] = (1, 25, 200, 750, 2500)
THRESHOLD_NAMES: dict[int, str] = {1: "street", 25: "city", 200: "region", 750: "country", 2500: "continent"}

GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7

# An error constructed to lie exactly on a threshold can come out of the haversine a few 1e-13 km above
# it through float rounding; 1 micrometre of slack keeps `<=` meaning what it says.
_THRESHOLD_SLACK_KM = 1e-9


def geoscore(distance_km: Any) -> np.ndarray:
    """OSV-5M GeoScore per prediction: 5000 * exp(-d / 1492.7), elementwise (float64)."""
    d = np.asarray(distance_km, dtype=np.float64)
    return GEOSCORE_MAX * np.exp(-d / GEOSCORE_SCALE_KM)


def _as_1d(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


def geolocation_metrics(pred_lat: Any, pred_lon: Any, true_lat: Any, true_lon: Any) -> dict[str, float]:
    """Accuracy within each threshold (fraction, `<=`), median/mean haversine error (km), mean GeoScore, n.

    Raises ValueError on empty input, inputs of different lengths, or non-finite values.
    """
    arrays = {
        "pred_lat": _as_1d(pred_lat),
        "pred_lon": _as_1d(pred_lon),
        "true_lat": _as_1d(true_lat),
        "true_lon": _as_1d(true_lon),
    }
    lengths = {k: v.size for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("no predictions: metrics need at least one image")
    for k, v in arrays.items():
        bad = int((~np.isfinite(v)).sum())
        if bad:
            raise ValueError(f"{k} has {bad} NaN/inf value(s) out of {n}")
    d = haversine_km(arrays["pred_lat"], arrays["pred_lon"], arrays["true_lat"], arrays["true_lon"])
    out: dict[str, float] = {}
    for t in ACCURACY_THRESHOLDS_KM:
        out[f"acc_{t}km"] = float(np.mean(d <= t + _THRESHOLD_SLACK_KM))
    out["median_km"] = float(np.median(d))
    out["mean_km"] = float(np.mean(d))
    out["geoscore"] = float(np.mean(geoscore(d)))
    out["n"] = float(n)
    return out


def format_metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Plain-text table: one row per run name; accuracies in percent (1 decimal), median km, GeoScore."""
    headers = ["run"] + [f"@{t}km" for t in ACCURACY_THRESHOLDS_KM] + ["median km", "GeoScore"]
    body: list[list[str]] = []
    for name, m in rows.items():
        cells = [str(name)]
        cells += [f"{100.0 * float(m[f'acc_{t}km']):.1f}" for t in ACCURACY_THRESHOLDS_KM]
        cells += [f"{float(m['median_km']):.1f}", f"{float(m['geoscore']):.0f}"]
        body.append(cells)
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]

    def fmt(cells: list[str]) -> str:
        # name left-aligned, numbers right-aligned so decimals line up
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
    return "\n".join(lines)
