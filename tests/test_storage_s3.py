"""Everything that names data works on a real S3 server (SeaweedFS on loopback), as on a local folder."""

import dataclasses
import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from geosurge import storage
from geosurge.config import GeoWorldConfig, IngestConfig, S3Config
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import ingest, read_quarantine
from geosurge.geo.geocells import GeocellHierarchy


def test_geoworld_writes_images_label_maps_and_manifest_to_s3(s3):
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=10, image_size=32, seed=5), "s3://world/gw", s3, progress=False)
    assert manifest_uri == "s3://world/gw/manifest.parquet"
    fs, path = storage.resolve(manifest_uri, s3)
    manifest = pq.read_table(path, filesystem=fs)
    assert manifest.num_rows == 10
    row = manifest.to_pylist()[0]
    assert row["uri"].startswith("s3://world/gw/images/")
    image = Image.open(io.BytesIO(storage.read_bytes(row["uri"], s3)))
    labels = np.asarray(Image.open(io.BytesIO(storage.read_bytes(row["label_uri"], s3))))
    assert image.size == (32, 32) and labels.shape == (32, 32) and labels.max() < 150


def test_geocell_hierarchy_round_trips_through_s3(s3):
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-50, 60, 2000), rng.uniform(-120, 140, 2000)
    hierarchy = GeocellHierarchy.build(lat, lon, (200, 50), 5)
    hierarchy.save("s3://cells/h.parquet", s3)
    assert GeocellHierarchy.load("s3://cells/h.parquet", s3) == hierarchy


def test_ingest_reads_and_writes_s3_and_reconciles(ray_local, s3):
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=16, image_size=40, seed=6), "s3://world/ingest-src", s3, progress=False)
    result = ingest(manifest_uri, "s3://world/ingest-out", IngestConfig(image_size=32, label_grid=4, segment_batch_size=8), s3)
    assert result.reconciles and result.shard_rows == 16 and result.quarantined == 0
    assert read_quarantine(result.quarantine_uri, s3).num_rows == 0
    fs, path = storage.resolve(result.shards_uri, s3)
    shards = pq.read_table(path, filesystem=fs)
    assert sorted(shards.column("image_id").to_pylist()) == [f"gw_{i:06d}" for i in range(16)]
    assert storage.exists("s3://world/ingest-out/ingest_report.json", s3)


def test_fetcher_does_not_retry_missing_or_refused_objects_and_retries_a_dead_server(s3, seaweed_server):
    storage.write_bytes("s3://fetch/there", b"bytes", s3)
    policy = storage.RetryPolicy(retries=2, backoff_s=0.01, timeout_s=5)
    assert storage.Fetcher(s3, policy).read("s3://fetch/there") == (b"bytes", 0)
    with pytest.raises(storage.FetchFailed) as missing:
        storage.Fetcher(s3, policy).read("s3://fetch/nope")
    assert missing.value.reason == "not_found" and missing.value.retries == 0

    wrong_key = dataclasses.replace(s3, secret_access_key="not-the-secret")
    with pytest.raises(storage.FetchFailed) as refused:
        storage.Fetcher(wrong_key, policy).read("s3://fetch/there")
    assert refused.value.reason == "fetch_error" and refused.value.retries == 0
    assert "not-the-secret" not in str(refused.value) and "not-the-secret" not in repr(wrong_key)

    dead = seaweed_server.config
    seaweed_server.stop(kill=True)
    with pytest.raises(storage.FetchFailed) as down:
        storage.Fetcher(dead, policy).read("s3://fetch/there")
    assert down.value.reason == "fetch_error" and down.value.retries == 2 and "after 3 attempts" in down.value.detail


def test_ingest_streams_a_gzipped_csv_manifest_from_s3_with_geocells(ray_local, s3):
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=12, image_size=32, seed=7), "s3://world/csv-src", s3,
                                     progress=False)
    fs, path = storage.resolve(manifest_uri, s3)
    table = pq.read_table(path, filesystem=fs).drop_columns(["label_uri"])
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "gzip") as gz:
        pacsv.write_csv(table, gz)
    storage.write_bytes("s3://world/csv-src/manifest.csv.gz", sink.getvalue().to_pybytes(), s3)
    hierarchy = GeocellHierarchy.build(table.column("lat").to_numpy(), table.column("lon").to_numpy(), (6, 3), 1)
    config = IngestConfig(image_size=32, label_grid=4, segment_batch_size=8, shard_rows=5)
    result = ingest("s3://world/csv-src/manifest.csv.gz", "s3://world/csv-out", config, s3, hierarchy=hierarchy)
    assert result.reconciles and result.rows_in == 12 and result.shard_rows == 12 and result.chunks == 3
    fs, path = storage.resolve(result.shards_uri, s3)
    shards = pq.read_table(path, filesystem=fs)
    assert sorted(shards.column("image_id").to_pylist()) == [f"gw_{i:06d}" for i in range(12)]
    np.testing.assert_array_equal(np.stack(shards.column("cells").to_numpy(zero_copy_only=False)),
                                  hierarchy.assign(shards.column("lat").to_numpy(), shards.column("lon").to_numpy()))
    report = storage.read_bytes("s3://world/csv-out/ingest_report.json", s3).decode()
    assert "testsecret" not in report and "testkey" not in report


def test_s3_settings_pickle_without_their_keys_into_ray_tasks():
    """Each node takes the keys from its own AWS chain. (A whole training run on a config that holds keys, and every
    place they must not reach: tests/train/test_trainer.py's learning test.)"""
    s3 = S3Config(endpoint_url="http://127.0.0.1:1", region="us-east-1", access_key_id="KEY-ID-1",
                  secret_access_key="SECRET-1")
    for shipped in (s3, storage.s3_filesystem(s3)):
        assert b"SECRET-1" not in ray.cloudpickle.dumps(shipped) and b"KEY-ID-1" not in ray.cloudpickle.dumps(shipped)
    received = ray.cloudpickle.loads(ray.cloudpickle.dumps(s3))
    assert (received.endpoint_url, received.region, received.secret_access_key) == (s3.endpoint_url, s3.region, None)
