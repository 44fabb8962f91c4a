"""Great-circle distances and unit-vector conversions."""

import math

import numpy as np
import pytest
import torch

from geosurge.geo.distance import (
    EARTH_RADIUS_KM,
    haversine_km,
    haversine_km_torch,
    latlon_to_unit_xyz,
    pairwise_haversine_km,
    unit_xyz_to_latlon,
)

LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)
NEW_YORK = (40.7128, -74.0060)
LOS_ANGELES = (34.0522, -118.2437)
SYDNEY = (-33.8688, 151.2093)
TOKYO = (35.6762, 139.6503)


def central_angle_vincenty(lat1, lon1, lat2, lon2):
    """Independent reference: the Vincenty (atan2) form of the great-circle central angle."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    num = math.hypot(math.cos(p2) * math.sin(dl), math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl))
    den = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return math.atan2(num, den)


@pytest.mark.parametrize(
    "a, b, published_km",
    [(LONDON, PARIS, 343.5), (NEW_YORK, LOS_ANGELES, 3936.0), (SYDNEY, TOKYO, 7792.0)],
)
def test_city_pairs(a, b, published_km):
    d = float(haversine_km(a[0], a[1], b[0], b[1]))
    assert d == pytest.approx(published_km, rel=0.005)
    assert d == pytest.approx(EARTH_RADIUS_KM * central_angle_vincenty(*a, *b), rel=1e-10)
    # symmetric
    assert float(haversine_km(b[0], b[1], a[0], a[1])) == pytest.approx(d, rel=1e-12)


def test_antipodes_and_zero():
    assert float(haversine_km(0, 0, 0, 180)) == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-12)
    # haversine loses precision next to the antipode (asin near 1): ~0.2 m here
    assert float(haversine_km(10, 20, -10, -160)) == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-7)
    assert float(haversine_km(90, 0, -90, 0)) == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-12)
    assert float(haversine_km(47.3, 8.5, 47.3, 8.5)) == 0.0
    # the antimeridian is no boundary: 0.2 deg of longitude at the equator
    assert float(haversine_km(0, 179.9, 0, -179.9)) == pytest.approx(EARTH_RADIUS_KM * math.radians(0.2), rel=1e-9)


def test_broadcasting_and_dtype():
    d = haversine_km(np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((1, 4)), np.arange(4.0).reshape(1, 4))
    assert d.shape == (3, 4) and d.dtype == np.float64
    np.testing.assert_allclose(d[0], EARTH_RADIUS_KM * np.radians(np.arange(4.0)), rtol=1e-12)


def test_pairwise_matches_elementwise():
    rng = np.random.default_rng(1)
    la1, lo1 = rng.uniform(-90, 90, 5), rng.uniform(-180, 180, 5)
    la2, lo2 = rng.uniform(-90, 90, 7), rng.uniform(-180, 180, 7)
    m = pairwise_haversine_km(la1, lo1, la2, lo2)
    assert m.shape == (5, 7)
    for i in range(5):
        for j in range(7):
            assert m[i, j] == pytest.approx(EARTH_RADIUS_KM * central_angle_vincenty(la1[i], lo1[i], la2[j], lo2[j]), rel=1e-9)


def test_torch_matches_numpy():
    rng = np.random.default_rng(2)
    pts = [rng.uniform(-90, 90, 100), rng.uniform(-180, 180, 100), rng.uniform(-90, 90, 100), rng.uniform(-180, 180, 100)]
    ref = haversine_km(*pts)
    got64 = haversine_km_torch(*[torch.from_numpy(p) for p in pts])
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), ref, rtol=1e-12, atol=1e-9)
    got32 = haversine_km_torch(*[torch.from_numpy(p).float() for p in pts])
    np.testing.assert_allclose(got32.numpy(), ref, rtol=1e-4, atol=0.5)


def test_torch_gradient_finite_including_zero_distance():
    lat1 = torch.tensor([48.8566, 10.0], dtype=torch.float64, requires_grad=True)
    lon1 = torch.tensor([2.3522, 20.0], dtype=torch.float64, requires_grad=True)
    lat2 = torch.tensor([51.5074, 10.0], dtype=torch.float64)  # second pair: zero distance
    lon2 = torch.tensor([-0.1278, 20.0], dtype=torch.float64)
    d = haversine_km_torch(lat1, lon1, lat2, lon2)
    assert float(d[1].detach()) == pytest.approx(0.0, abs=1e-9)
    d.sum().backward()
    assert torch.isfinite(lat1.grad).all() and torch.isfinite(lon1.grad).all()
    # moving Paris north brings it closer to London: d(distance)/d(lat1) < 0
    assert float(lat1.grad[0]) < 0
    # d/dlat of distance along a meridian is R * pi/180 km per degree
    lat_a = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    haversine_km_torch(lat_a, torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)).sum().backward()
    assert float(lat_a.grad[0]) == pytest.approx(EARTH_RADIUS_KM * math.pi / 180, rel=1e-9)


def test_unit_xyz_round_trip():
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-89.9, 89.9, 200), rng.uniform(-179.9, 179.9, 200)
    xyz = latlon_to_unit_xyz(lat, lon)
    assert xyz.shape == (200, 3) and xyz.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(latlon_to_unit_xyz(0, 0), [[1.0, 0.0, 0.0]], atol=1e-15)
    np.testing.assert_allclose(latlon_to_unit_xyz(90, 0), [[0.0, 0.0, 1.0]], atol=1e-15)
    # scaled (non-unit) input is normalised first
    back_lat, back_lon = unit_xyz_to_latlon(xyz * 7.5)
    np.testing.assert_allclose(back_lat, lat, atol=1e-10)
    np.testing.assert_allclose(back_lon, lon, atol=1e-10)


def test_unit_xyz_mean_across_antimeridian():
    lat, lon = unit_xyz_to_latlon(latlon_to_unit_xyz([0.0, 0.0], [179.9, -179.9]).sum(axis=0))
    assert abs(abs(float(lon[0])) - 180.0) < 1e-9 and abs(float(lat[0])) < 1e-9


def test_unit_xyz_zero_vector_rejected():
    with pytest.raises(ValueError, match="1 vector"):
        unit_xyz_to_latlon(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
