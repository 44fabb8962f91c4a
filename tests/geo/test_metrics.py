"""Geo-localization metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from geosurge.geo.distance import EARTH_RADIUS_KM
from geosurge.geo.metrics import (
    ACCURACY_THRESHOLDS_KM,
    THRESHOLD_NAMES,
    format_metrics_table,
    geolocation_metrics,
    geoscore,
)


def north_of(lat0: float, lon0: float, d_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points exactly d km north of (lat0, lon0) along the meridian: d = R * dlat in radians."""
    d_km = np.asarray(d_km, dtype=np.float64)
    return lat0 + np.degrees(d_km / EARTH_RADIUS_KM), np.full(d_km.shape, lon0)


def test_thresholds_and_names():
    assert ACCURACY_THRESHOLDS_KM == (1, 25, 200, 750, 2500)
    assert [THRESHOLD_NAMES[t] for t in ACCURACY_THRESHOLDS_KM] == ["street", "city", "region", "country", "continent"]


def test_geoscore_values():
    assert float(geoscore(0.0)) == 5000.0
    assert float(geoscore(1492.7)) == pytest.approx(5000.0 / math.e)
    np.testing.assert_allclose(geoscore([0.0, 100.0]), [5000.0, 5000.0 * math.exp(-100.0 / 1492.7)])


@pytest.mark.parametrize("lat0", [0.0, 45.0, -30.0])
def test_hand_computed_case_with_boundaries(lat0):
    # 0 and 1 km within 1 km; exactly 25 counts (<=) but 25.001 does not; and so on up the thresholds
    d = np.array([0.0, 1.0, 25.0, 25.001, 200.0, 800.0, 2500.0, 3000.0])
    true_lat, true_lon = np.full(d.size, lat0), np.full(d.size, 12.0)
    pred_lat, pred_lon = north_of(lat0, 12.0, d)
    m = geolocation_metrics(pred_lat, pred_lon, true_lat, true_lon)
    assert m["n"] == 8
    assert m["acc_1km"] == 2 / 8
    assert m["acc_25km"] == 3 / 8
    assert m["acc_200km"] == 5 / 8
    assert m["acc_750km"] == 5 / 8
    assert m["acc_2500km"] == 7 / 8
    assert m["median_km"] == pytest.approx((25.001 + 200.0) / 2, abs=1e-6)
    assert m["mean_km"] == pytest.approx(d.mean(), abs=1e-6)
    assert m["geoscore"] == pytest.approx(np.mean(5000.0 * np.exp(-d / 1492.7)), rel=1e-9)


@pytest.mark.parametrize("threshold", ACCURACY_THRESHOLDS_KM)
def test_exact_threshold_counts_and_just_over_does_not(threshold):
    lat_on, lon_on = north_of(10.0, -70.0, [threshold])
    lat_over, lon_over = north_of(10.0, -70.0, [threshold + 0.001])
    on = geolocation_metrics(lat_on, lon_on, [10.0], [-70.0])
    over = geolocation_metrics(lat_over, lon_over, [10.0], [-70.0])
    assert on[f"acc_{threshold}km"] == 1.0
    assert over[f"acc_{threshold}km"] == 0.0


def test_perfect_predictions():
    lat = np.array([10.0, -20.0, 60.0])
    lon = np.array([179.9, -5.0, 30.0])
    m = geolocation_metrics(lat, lon, lat, lon)
    assert all(m[f"acc_{t}km"] == 1.0 for t in ACCURACY_THRESHOLDS_KM)
    assert m["median_km"] == 0.0 and m["mean_km"] == 0.0 and m["geoscore"] == 5000.0 and m["n"] == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        geolocation_metrics([1.0, 2.0], [1.0, 2.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="pred_lon has 1 NaN"):
        geolocation_metrics([1.0, 2.0], [1.0, np.nan], [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        geolocation_metrics([], [], [], [])


def test_format_metrics_table():
    a = geolocation_metrics(*north_of(0.0, 0.0, [0.5, 30.0, 900.0, 5000.0]), np.zeros(4), np.zeros(4))
    b = {**a, "acc_1km": 1 / 3, "median_km": 12.345, "geoscore": 4321.4}
    table = format_metrics_table({"geosurge": a, "geoclip-baseline": b})
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert lines[0].split()[:2] == ["run", "@1km"]
    row_a = lines[2].split()
    assert row_a[0] == "geosurge"
    assert row_a[1:6] == ["25.0", "25.0", "50.0", "50.0", "75.0"]
    assert row_a[6] == f"{a['median_km']:.1f}"
    row_b = lines[3].split()
    assert row_b[0] == "geoclip-baseline" and row_b[1] == "33.3" and row_b[6] == "12.3" and row_b[7] == "4321"
    # columns line up: every line has the same width
    assert len({len(line) for line in lines}) == 1
