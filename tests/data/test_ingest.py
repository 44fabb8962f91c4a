"""The ingest stage on a real local Ray: bad records are quarantined with their reason, counts reconcile."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geosurge.config import IngestConfig
from geosurge.data.geoworld import GeoWorldConfig, generate_geoworld
from geosurge.data.ingest import ingest, read_quarantine
from geosurge.data.images import encode_jpeg


@pytest.fixture(scope="module")
def manifest_with_bad_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=24, image_size=48, seed=3), str(root / "gw"), progress=False)
    good = pq.read_table(manifest_uri).select(["image_id", "uri", "lat", "lon", "split"]).to_pylist()
    bad_dir = root / "bad"
    bad_dir.mkdir()
    (bad_dir / "text.jpg").write_text("not a picture")
    (bad_dir / "empty.jpg").write_bytes(b"")
    (bad_dir / "truncated.jpg").write_bytes(encode_jpeg(np.full((64, 64, 3), 90, np.uint8))[:250])
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 120, 200, 10)).save(cmyk, format="JPEG")
    (bad_dir / "cmyk.jpg").write_bytes(cmyk.getvalue())
    rows = good + [
        {"image_id": "missing", "uri": str(bad_dir / "nope.jpg"), "lat": 1.0, "lon": 2.0, "split": "train"},
        {"image_id": "text", "uri": str(bad_dir / "text.jpg"), "lat": 1.0, "lon": 2.0, "split": "train"},
        {"image_id": "empty", "uri": str(bad_dir / "empty.jpg"), "lat": 1.0, "lon": 2.0, "split": "train"},
        {"image_id": "truncated", "uri": str(bad_dir / "truncated.jpg"), "lat": 1.0, "lon": 2.0, "split": "train"},
        {"image_id": "cmyk", "uri": str(bad_dir / "cmyk.jpg"), "lat": 10.0, "lon": 20.0, "split": "train"},
        {"image_id": "nan", "uri": good[0]["uri"], "lat": float("nan"), "lon": 2.0, "split": "train"},
        {"image_id": "lat91", "uri": good[0]["uri"], "lat": 91.0, "lon": 2.0, "split": "train"},
        {"image_id": "lon181", "uri": good[0]["uri"], "lat": 1.0, "lon": 181.0, "split": "train"},
        {**good[1], "lat": 5.0},  # duplicate id: the first occurrence wins
    ]
    uri = str(root / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows), uri)
    return uri, len(rows), len(good)


def test_bad_records_are_quarantined_with_reasons_and_counts_reconcile(ray_local, manifest_with_bad_rows, tmp_path):
    manifest_uri, rows_in, good = manifest_with_bad_rows
    config = IngestConfig(image_size=32, label_grid=4, segment_batch_size=8)
    result = ingest(manifest_uri, str(tmp_path / "out"), config)

    assert result.rows_in == rows_in and result.reconciles
    assert result.quarantined_by_reason == {
        "not_found": 1, "not_an_image": 1, "empty": 1, "truncated": 1, "bad_coordinates": 3, "duplicate_id": 1,
    }
    assert result.shard_rows == good + 1  # the CMYK JPEG is a good image

    quarantine = read_quarantine(result.quarantine_uri).to_pylist()
    by_id = {(r["image_id"], r["reason"]): r for r in quarantine}
    assert by_id[("missing", "not_found")]["stage"] == "fetch"
    assert by_id[("truncated", "truncated")]["stage"] == "decode"
    assert by_id[("lat91", "bad_coordinates")]["stage"] == "manifest"

    shards = pq.read_table(str(tmp_path / "out" / "shards"))
    assert sorted(shards.column("image_id").to_pylist()) == sorted({r["image_id"] for r in pq.read_table(manifest_uri).to_pylist()} - {"missing", "text", "empty", "truncated", "nan", "lat91", "lon181"})
    for row in shards.to_pylist():
        assert row["label_grid"] == 4 and len(row["label_map"]) == 16
        assert max(row["label_map"]) < 150
        assert Image.open(io.BytesIO(row["image"])).size == (32, 32)

    # A rerun rewrites the stage's output: same rows, no duplicates.
    again = ingest(manifest_uri, str(tmp_path / "out"), config)
    assert again.shard_rows == result.shard_rows and again.quarantined == result.quarantined
    assert pq.read_table(str(tmp_path / "out" / "shards")).num_rows == result.shard_rows


def test_ground_truth_label_maps_are_pooled_from_the_manifest(ray_local, tmp_path):
    from geosurge.data.images import ImageSpec, decode_label_map

    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=8, image_size=32, seed=9), str(tmp_path / "gw"), progress=False)
    config = IngestConfig(image_size=32, label_grid=4, segmenter="ground_truth")
    result = ingest(manifest_uri, str(tmp_path / "out"), config)
    assert result.reconciles and result.shard_rows == 8 and not result.segmenter_is_random
    label_uris = {r["image_id"]: r["label_uri"] for r in pq.read_table(manifest_uri).to_pylist()}
    for row in pq.read_table(str(tmp_path / "out" / "shards")).to_pylist():
        with open(label_uris[row["image_id"]], "rb") as f:
            expected = decode_label_map(f.read(), ImageSpec(size=32), 4)
        assert row["label_map"] == expected.tobytes()


def test_ground_truth_needs_label_uris(ray_local, tmp_path):
    uri = str(tmp_path / "m.parquet")
    pq.write_table(pa.Table.from_pylist([{"image_id": "a", "uri": "/nope.jpg", "lat": 1.0, "lon": 2.0}]), uri)
    with pytest.raises(ValueError, match="label_uri"):
        ingest(uri, str(tmp_path / "out"), IngestConfig(segmenter="ground_truth"))
