"""Shard rows → model batches: images, label maps, geocells at every level, and scene labels when present; one
split of the shards streamed into this process in batches of the asked size."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geosurge.data.images import encode_jpeg
from geosurge.data.shards import split_batches, split_rows, to_model_batch
from geosurge.geo.geocells import GeocellHierarchy


def _shard_rows(scene3=None) -> pa.Table:
    rows = {
        "image_id": ["a", "b"],
        "lat": [48.85, 40.71],
        "lon": [2.35, -74.0],
        "image": [encode_jpeg(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)],
        "label_map": [bytes([2] * 4), bytes([1] * 4)],
        "label_grid": [2, 2],
    }
    if scene3 is not None:
        rows["scene3"] = scene3
    return pa.table(rows)


def test_batch_has_images_label_maps_and_cells_at_every_level():
    rng = np.random.default_rng(0)
    lat = np.r_[rng.normal(48.85, 1, 200), rng.normal(40.71, 1, 200)]
    lon = np.r_[rng.normal(2.35, 1, 200), rng.normal(-74.0, 1, 200)]
    hierarchy = GeocellHierarchy.build(lat, lon, (300, 100), 5)
    out = to_model_batch(_shard_rows(), hierarchy)
    assert out["image"].shape == (2, 8, 8, 3) and out["image"].dtype == np.uint8
    assert out["label_map"].tolist() == [[[2, 2], [2, 2]], [[1, 1], [1, 1]]]
    assert (out["cells"] == hierarchy.assign(out["lat"], out["lon"])).all()
    assert "scene" not in out


def test_scene_labels_pass_through_with_missing_ones_marked_unknown():
    out = to_model_batch(_shard_rows(scene3=pa.array([2, None], pa.int64())))
    assert out["scene"].tolist() == [2, -1]


def test_cells_precomputed_at_ingest_are_used_without_a_hierarchy():
    rows = _shard_rows().append_column("cells", pa.array([[0, 3], [1, 7]], pa.list_(pa.int64())))
    assert to_model_batch(rows)["cells"].tolist() == [[0, 3], [1, 7]]


def test_a_split_streams_in_batches_of_the_asked_size_across_shard_files(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    splits = ["train", "test", "val"]
    for f in range(3):  # three files, each with its own row groups, rows of every split interleaved
        ids = [f"f{f}_{i}" for i in range(25)]
        pq.write_table(pa.table({"image_id": ids, "split": [splits[i % 3] for i in range(25)],
                                 "image": [i.encode() for i in ids]}), shards / f"part-{f}.parquet", row_group_size=7)
    expected = [f"f{f}_{i}" for f in range(3) for i in range(25) if i % 3 == 1]
    assert len(expected) == 24
    batches = list(split_batches(str(shards), "test", batch_size=5))
    assert [b.num_rows for b in batches] == [5, 5, 5, 5, 4]
    got = [i for b in batches for i in b.column("image_id").to_pylist()]
    assert sorted(got) == sorted(expected) and len(got) == split_rows(str(shards), "test")
    (only,) = list(split_batches(str(shards), "test", batch_size=100, columns=["image"]))
    assert only.column_names == ["image"] and only.num_rows == len(expected)
    assert list(split_batches(str(shards), "holdout")) == []
