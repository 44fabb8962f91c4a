"""The memory-mapped land mask answers exactly as the global-land-mask package it is built from."""

import numpy as np
import pytest

from geosurge.geo import land_mask


def test_packed_mask_agrees_with_the_package_everywhere_it_is_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSURGE_CACHE", str(tmp_path))
    land_mask._packed.cache_clear()
    from global_land_mask import globe

    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-90, 90, 200_000), [-90.0, 90.0, 0.0, 51.5, -33.9]])
    lon = np.concatenate([rng.uniform(-180, 180, 200_000), [-180.0, 180.0, 0.0, -0.1, 151.2]])
    try:
        ours = land_mask.is_land(lat, lon)
        assert sorted(p.name for p in (tmp_path / "land_mask").iterdir() if not p.name.startswith(".")) == [
            f"globe-{land_mask.version('global-land-mask')}.bits.npy",
            f"globe-{land_mask.version('global-land-mask')}.grid.npy"]
        np.testing.assert_array_equal(ours, globe.is_land(lat.copy(), lon.copy()))
        assert 0.2 < ours.mean() < 0.4  # about 29 % of the Earth's surface is land
        assert ours[-2] and ours[-1] and not ours[-3]  # London and Sydney on land; (0, 0) in the Gulf of Guinea
        # a second process would map the files, not rebuild them
        land_mask._packed.cache_clear()
        np.testing.assert_array_equal(land_mask.is_land(lat, lon), ours)
    finally:
        land_mask._packed.cache_clear()


def test_map_grid_is_every_step_th_cell_of_the_package_mask():
    from global_land_mask import globe

    grid = land_mask.land_grid(30)
    assert grid.shape == (720, 1440) and grid.dtype == np.bool_
    np.testing.assert_array_equal(grid, ~globe._mask[::30, ::30])  # the package stores ocean as True
    assert not grid.flags.writeable  # cached: a caller that drew on it would change every later map
    np.testing.assert_array_equal(land_mask.land_grid(7), ~globe._mask[::7, ::7])  # a step that cuts no byte evenly


def test_out_of_range_coordinates_are_a_clear_error():
    with pytest.raises(ValueError, match="latitude must be within"):
        land_mask.is_land(np.array([91.0]), np.array([0.0]))
