"""Everything that names data works on a real S3 server (SeaweedFS on loopback), as on a local folder."""

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from geosurge.config import IngestConfig
from geosurge.data import storage
from geosurge.data.geoworld import GeoWorldConfig, generate_geoworld
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
