"""H3 geocell hierarchy: exact nesting, split/drop rules, means, assignment, persistence."""

from collections import defaultdict

import h3
import numpy as np
import pytest
from h3.api import basic_int as h3i

from geosurge.geo.distance import (
    latlon_to_unit_xyz,
    pairwise_haversine_km,
    unit_xyz_to_latlon,
)
from geosurge.geo.geocells import (
    IGNORE_CELL,
    GeocellHierarchy,
    h3_cell_to_parent,
    h3_resolution,
    latlng_to_h3,
)

TAU_MAX = (3000, 1000, 300)
TAU_MIN = 10
MAX_RES = 7


def make_points(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of varied spread, one very tight cluster (denser than tau_max at MAX_RES), sparse noise."""
    rng = np.random.default_rng(seed)
    centres = np.c_[rng.uniform(-60, 70, 40), rng.uniform(-180, 180, 40)]
    k = rng.integers(0, 40, 12000)
    spread = np.where(rng.random(12000) < 0.5, 0.05, 0.8)
    lat = [centres[k, 0] + rng.normal(0, 1, 12000) * spread]
    lon = [centres[k, 1] + rng.normal(0, 1, 12000) * spread]
    lat.append(48.8566 + rng.normal(0, 0.0003, 3500))  # ~30 m spread: one res-7 cell holds > 3000
    lon.append(2.3522 + rng.normal(0, 0.0003, 3500))
    lat.append(rng.uniform(-80, 80, 300))
    lon.append(rng.uniform(-180, 180, 300))
    lat, lon = np.concatenate(lat), np.concatenate(lon)
    return np.clip(lat, -90, 90), (lon + 180) % 360 - 180


@pytest.fixture(scope="module")
def data():
    return make_points()


@pytest.fixture(scope="module")
def hier(data):
    return GeocellHierarchy.build(*data, tau_max=TAU_MAX, tau_min=TAU_MIN, max_resolution=MAX_RES)


def reference_level(cells: list[int], tau_max: int, tau_min: int, max_res: int) -> dict[int, list[int]]:
    """Slow reference with the h3 library: split cells over tau_max from res 0, drop those under tau_min."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(cells):
        groups[h3i.cell_to_parent(c, 0)].append(i)
    final: dict[int, list[int]] = {}
    stack = list(groups.items())
    while stack:
        cell, members = stack.pop()
        res = h3i.get_resolution(cell)
        if len(members) > tau_max and res < max_res:
            children: dict[int, list[int]] = defaultdict(list)
            for i in members:
                children[h3i.cell_to_parent(cells[i], res + 1)].append(i)
            stack.extend(children.items())
        elif len(members) >= tau_min:
            final[cell] = members
    return final


def test_vectorised_parent_equals_h3():
    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)
    for res in (0, 1, 5, 9, 12, 15):
        cells = latlng_to_h3(lat, lon, res)
        pentagons = np.array([h3i.get_pentagons(res)[0], h3i.get_pentagons(res)[7]], dtype=np.uint64)
        cells = np.concatenate([cells, pentagons])
        assert (h3_resolution(cells) == res).all()
        for r in range(res + 1):
            got = h3_cell_to_parent(cells, r)
            assert [int(g) for g in got] == [h3i.cell_to_parent(int(c), r) for c in cells], (res, r)
    # per-cell resolutions, and a request finer than the cell is an error
    cells = latlng_to_h3(lat[:3], lon[:3], 9)
    got = h3_cell_to_parent(cells, np.array([0, 4, 9]))
    assert [int(g) for g in got] == [h3i.cell_to_parent(int(c), r) for c, r in zip(cells, [0, 4, 9])]
    with pytest.raises(ValueError):
        h3_cell_to_parent(cells, 10)


def test_latlng_to_h3_matches_h3():
    lat, lon = np.array([48.8566, -33.8688, 0.0]), np.array([2.3522, 151.2093, -180.0])
    got = latlng_to_h3(lat, lon, 9)
    assert [h3.int_to_str(int(g)) for g in got] == [h3.latlng_to_cell(a, b, 9) for a, b in zip(lat, lon)]


def test_matches_reference_split_and_drop(data, hier):
    cells = [int(c) for c in latlng_to_h3(*data, MAX_RES)]
    for lvl, t in enumerate(TAU_MAX):
        ref = reference_level(cells, t, TAU_MIN, MAX_RES)
        df = hier.levels[lvl]
        assert dict(zip(df["h3"].astype(int), df["count"].astype(int))) == {c: len(m) for c, m in ref.items()}
        assert (df["resolution"].to_numpy() == [h3i.get_resolution(int(c)) for c in df["h3"]]).all()
        assert (df["cell"].to_numpy() == np.arange(len(df))).all()


def test_parents_nest_exactly(hier):
    assert (hier.parents(0) == -1).all()
    for lvl in range(1, hier.num_levels):
        child, parent = hier.levels[lvl], hier.levels[lvl - 1]
        p = hier.parents(lvl)
        assert ((p >= 0) & (p < len(parent))).all()
        for c_h3, c_res, pi in zip(child["h3"], child["resolution"], p):
            p_h3, p_res = int(parent["h3"].iloc[pi]), int(parent["resolution"].iloc[pi])
            assert p_res <= c_res
            assert h3.cell_to_parent(h3.int_to_str(int(c_h3)), p_res) == h3.int_to_str(p_h3)


def test_level_sizes_and_counts(data, hier):
    n = data[0].size
    assert hier.num_levels == 3
    assert hier.num_cells == [len(df) for df in hier.levels]
    assert all(a <= b for a, b in zip(hier.num_cells, hier.num_cells[1:]))
    assert hier.num_cells[0] < hier.num_cells[-1]
    a = hier.assign(*data, nearest=True)
    assert a.shape == (n, 3) and a.dtype == np.int64 and (a >= 0).all()
    exact = hier.assign(*data, nearest=False)
    cells = latlng_to_h3(*data, MAX_RES)
    for lvl in range(hier.num_levels):
        df = hier.levels[lvl]
        member = exact[:, lvl] >= 0
        # a member is exactly the points whose H3 ancestor is the cell (checked with the h3 library)
        anc = [h3i.cell_to_parent(int(c), int(df["resolution"].iloc[i])) for c, i in zip(cells, a[:, lvl])]
        assert (np.array(anc, dtype=np.uint64) == df["h3"].to_numpy()[a[:, lvl]]).tolist() == member.tolist()
        assert (exact[member, lvl] == a[member, lvl]).all()
        assert int(df["count"].sum()) == int(member.sum()) < n  # noise points were dropped
        np.testing.assert_array_equal(np.bincount(a[member, lvl], minlength=len(df)), df["count"].to_numpy())
        # membership is consistent across levels: a member's cell's parent is its cell one level up
        if lvl:
            both = member & (exact[:, lvl - 1] >= 0)
            assert (hier.parents(lvl)[a[both, lvl]] == a[both, lvl - 1]).all()


def test_cell_coordinates_are_member_means(data, hier):
    exact = hier.assign(*data, nearest=False)
    xyz = latlon_to_unit_xyz(*data)
    for lvl in range(hier.num_levels):
        clat, clon = hier.cell_coordinates(lvl)
        for c in range(0, len(clat), max(1, len(clat) // 25)):
            m_lat, m_lon = unit_xyz_to_latlon(xyz[exact[:, lvl] == c].mean(axis=0))
            assert float(pairwise_haversine_km(m_lat, m_lon, clat[c], clon[c])[0, 0]) < 1e-6


def test_over_tau_max_only_at_max_resolution(hier):
    over_seen = 0
    for lvl, t in enumerate(TAU_MAX):
        df = hier.levels[lvl]
        over = df["count"] > t
        assert (df.loc[over, "resolution"] == MAX_RES).all()
        over_seen += int(over.sum())
        assert (df["count"] >= TAU_MIN).all()
    assert over_seen >= 1  # the tight cluster exceeds every tau_max at MAX_RES


def test_deterministic(data, hier):
    again = GeocellHierarchy.build(*data, tau_max=TAU_MAX, tau_min=TAU_MIN, max_resolution=MAX_RES)
    assert again == hier
    for a, b in zip(again.levels, hier.levels):
        assert a.equals(b)
    np.testing.assert_array_equal(again.assign(*data), hier.assign(*data))
    other = GeocellHierarchy.build(*data, tau_max=TAU_MAX, tau_min=TAU_MIN + 1, max_resolution=MAX_RES)
    assert other != hier


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_save_load_round_trip(hier, tmp_path, scheme):
    uri = f"{scheme}{tmp_path}/nested/dir/cells.parquet"
    hier.save(uri)
    back = GeocellHierarchy.load(uri)
    assert back == hier
    assert back.config == hier.config and back.num_cells == hier.num_cells
    for a, b in zip(back.levels, hier.levels):
        assert list(a.columns) == ["cell", "h3", "resolution", "lat", "lon", "count", "parent"]
        assert a.equals(b) and (a.dtypes == b.dtypes).all()
    assert len(list(tmp_path.rglob("*.parquet"))) == 1


def test_load_rejects_foreign_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not a geocell"):
        GeocellHierarchy.load(str(tmp_path / "x.parquet"))


def test_antimeridian_mean():
    rng = np.random.default_rng(0)
    lat = 60.0 + rng.normal(0, 0.01, 200)
    lon = np.r_[np.full(100, 179.9), np.full(100, -179.9)]
    cells = GeocellHierarchy.build(lat, lon, tau_max=[1000], tau_min=1, max_resolution=2)
    assert cells.num_cells == [1]  # all in one cell that straddles the antimeridian
    clat, clon = cells.cell_coordinates(0)
    assert abs(abs(float(clon[0])) - 180.0) < 1e-3  # a mean of raw degrees would give ~0
    assert abs(float(clat[0]) - lat.mean()) < 0.01


def test_dropped_points_go_to_nearest_kept_cell():
    rng = np.random.default_rng(1)
    # two dense clusters on the equator at lon 0 and lon 20, one lone point at lon 14 (its cell is dropped)
    lat = np.r_[rng.normal(0, 1e-4, 100), rng.normal(0, 1e-4, 100), 0.0]
    lon = np.r_[rng.normal(0, 1e-4, 100), 20 + rng.normal(0, 1e-4, 100), 14.0]
    cells = GeocellHierarchy.build(lat, lon, tau_max=[50], tau_min=5, max_resolution=4)
    assert sum(cells.num_cells) >= 2 and int(cells.levels[0]["count"].sum()) == 200
    assert cells.assign([0.0], [14.0], nearest=False)[0, 0] == -1
    assert (cells.assign(lat, lon) == cells.assign(lat, lon, nearest=False)).all()  # training labels by default
    got = cells.assign(lat, lon, nearest=True)
    c_lat, c_lon = cells.cell_coordinates(0)
    east = np.flatnonzero(c_lon > 10)
    assert got[-1, 0] in east.tolist()
    assert got[-1, 0] == np.argmin(pairwise_haversine_km(0.0, 14.0, c_lat, c_lon)[0])


def test_unmatched_points_nearest_by_great_circle(hier):
    rng = np.random.default_rng(7)
    lat, lon = rng.uniform(-90, 90, 400), rng.uniform(-180, 180, 400)
    exact = hier.assign(lat, lon, nearest=False)
    got = hier.assign(lat, lon, nearest=True)
    assert (got[:, 0] >= 0).all()
    for lvl in range(hier.num_levels):
        miss = exact[:, lvl] < 0
        assert miss.sum() > 100  # most random points fall where no training point was
        c_lat, c_lon = hier.cell_coordinates(lvl)
        d = pairwise_haversine_km(lat[miss], lon[miss], c_lat, c_lon)
        if lvl > 0:  # only the children of the point's own coarser cell are candidates
            d[hier.parents(lvl)[None, :] != got[miss, lvl - 1][:, None]] = np.inf
        reachable = np.isfinite(d.min(axis=1))
        assert (got[miss][~reachable, lvl] == IGNORE_CELL).all()
        rows = np.flatnonzero(reachable)
        np.testing.assert_allclose(d[rows, got[miss][rows, lvl]], d[rows].min(axis=1), rtol=1e-9)
        assert (got[~miss, lvl] == exact[~miss, lvl]).all()


def assert_labels_nest(hier, labels):
    """Wherever a point has cells at levels l-1 and l, the second is a child of the first."""
    for lvl in range(1, hier.num_levels):
        both = (labels[:, lvl] != IGNORE_CELL) & (labels[:, lvl - 1] != IGNORE_CELL)
        assert (hier.parents(lvl)[labels[both, lvl]] == labels[both, lvl - 1]).all(), f"level {lvl}"
        assert (labels[labels[:, lvl - 1] == IGNORE_CELL, lvl] == IGNORE_CELL).all(), f"level {lvl}: label under none"


@pytest.mark.parametrize("nearest", [False, True])
def test_training_labels_respect_the_hierarchy(data, hier, nearest):
    """Every training point's labels nest (parent(label[l]) == label[l-1]), in both modes; random points too."""
    lat, lon = data
    labels = hier.assign(lat, lon, nearest=nearest)
    assert_labels_nest(hier, labels)
    rng = np.random.default_rng(3)
    assert_labels_nest(hier, hier.assign(rng.uniform(-90, 90, 2000), rng.uniform(-180, 180, 2000), nearest=nearest))
    dropped = (labels == IGNORE_CELL).mean(axis=0)
    if not nearest:  # exactly the points the build dropped are ignored, level by level
        kept = np.array([int(df["count"].sum()) for df in hier.levels])
        np.testing.assert_array_equal((labels != IGNORE_CELL).sum(axis=0), kept)
        assert dropped[-1] > 0  # the fixture's sparse noise is dropped at the finest level


def test_bad_inputs():
    ok_lat, ok_lon = np.zeros(20), np.zeros(20)
    with pytest.raises(ValueError, match="2 of 20 rows"):
        GeocellHierarchy.build(np.r_[np.nan, 91.0, ok_lat[2:]], ok_lon, tau_max=[10], tau_min=1)
    with pytest.raises(ValueError, match="1 of 20 rows"):
        GeocellHierarchy.build(ok_lat, np.r_[200.0, ok_lon[1:]], tau_max=[10], tau_min=1)
    with pytest.raises(ValueError, match="no coordinates"):
        GeocellHierarchy.build([], [], tau_max=[10], tau_min=1)
    with pytest.raises(ValueError, match="differ in length"):
        GeocellHierarchy.build(ok_lat, ok_lon[:5], tau_max=[10], tau_min=1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        GeocellHierarchy.build(ok_lat, ok_lon, tau_max=[10, 10], tau_min=1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        GeocellHierarchy.build(ok_lat, ok_lon, tau_max=[10, 20], tau_min=1)
    with pytest.raises(ValueError, match="tau_min"):
        GeocellHierarchy.build(ok_lat, ok_lon, tau_max=[100, 10], tau_min=10)
    with pytest.raises(ValueError, match="max_resolution"):
        GeocellHierarchy.build(ok_lat, ok_lon, tau_max=[10], tau_min=1, max_resolution=16)
    with pytest.raises(ValueError, match="fewer than tau_min"):
        GeocellHierarchy.build(ok_lat[:3], ok_lon[:3], tau_max=[10], tau_min=5)
    cells = GeocellHierarchy.build(ok_lat, ok_lon, tau_max=[10], tau_min=1)
    with pytest.raises(ValueError, match="1 of 2 rows"):
        cells.assign([0.0, np.inf], [0.0, 0.0])


def test_repr(hier):
    r = repr(hier)
    assert "3 levels" in r and "tau_min=10" in r
    for k in hier.num_cells:
        assert f"{k} cells" in r
