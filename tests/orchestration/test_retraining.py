"""The retraining job's bucket state: the lock admits one run at a time, the watermark finds only new manifests.
Both run against a local folder and the real S3 server."""

import gzip
import json
import time

import pytest

from geosurge import storage
from geosurge.data.manifest import list_manifest_files
from geosurge.orchestration.retraining import (
    BucketLock,
    LockHeld,
    Watermark,
    find_new_manifests,
)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path), None
    s3 = request.getfixturevalue("s3")
    return f"s3://retrain-test/{request.node.name.replace('[', '-').replace(']', '')}-{time.time_ns()}", s3


def test_lock_admits_one_holder_and_releases(root):
    root, s3 = root
    uri = storage.join(root, "retrain", "lock.json")
    first = BucketLock(uri, ttl_s=60, s3=s3)
    with first:
        with pytest.raises(LockHeld, match="held by"):
            BucketLock(uri, ttl_s=60, s3=s3).acquire()
        assert first.holder() == first.info
    assert not storage.exists(uri, s3)
    with BucketLock(uri, ttl_s=60, s3=s3) as again:  # free again after release
        assert again.info is not None


def test_expired_lock_is_broken(root, capsys):
    root, s3 = root
    uri = storage.join(root, "retrain", "lock.json")
    storage.write_bytes(uri, json.dumps({"owner": "crashed", "acquired_at": 0, "expires_at": 1}).encode(), s3)
    with BucketLock(uri, ttl_s=60, s3=s3) as lock:
        assert lock.holder().owner != "crashed"
    assert "breaking an expired lock" in capsys.readouterr().out


def test_release_leaves_a_lock_taken_over_by_another_run(root):
    root, s3 = root
    uri = storage.join(root, "retrain", "lock.json")
    lock = BucketLock(uri, ttl_s=60, s3=s3)
    lock.acquire()
    other = json.dumps({"owner": "other", "acquired_at": time.time(), "expires_at": time.time() + 60}).encode()
    storage.write_bytes(uri, other, s3)  # e.g. our lease expired and another run broke it
    lock.release()
    assert storage.read_bytes(uri, s3) == other


def test_watermark_finds_only_new_manifests(root):
    root, s3 = root
    incoming = storage.join(root, "incoming")
    assert find_new_manifests(incoming, Watermark(), s3) == []  # no prefix yet: nothing new
    storage.write_bytes(storage.join(incoming, "batch1", "manifest.parquet"), b"x", s3)
    storage.write_bytes(storage.join(incoming, "batch1", "images", "a.jpg"), b"x", s3)
    watermark_uri = storage.join(root, "retrain", "watermark.json")
    watermark = Watermark.load(watermark_uri, s3)
    first = find_new_manifests(incoming, watermark, s3)
    assert [m.uri.rsplit("/", 2)[-2:] for m in first] == [["batch1", "manifest.parquet"]]
    watermark.advance(first)
    watermark.save(watermark_uri, s3)

    storage.write_bytes(storage.join(incoming, "batch2.csv"), b"x", s3)
    reloaded = Watermark.load(watermark_uri, s3)
    second = find_new_manifests(incoming, reloaded, s3)
    assert [m.uri.rsplit("/", 1)[-1] for m in second] == ["batch2.csv"]
    reloaded.advance(second)
    assert find_new_manifests(incoming, reloaded, s3) == []
    assert reloaded.newest_mtime >= first[0].mtime


def test_retraining_finds_the_compressed_manifests_ingest_reads(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "batch1.csv.gz").write_bytes(gzip.compress(b"image_id,uri,lat,lon\na,/a.jpg,1.0,2.0\n"))
    (incoming / "notes.txt").write_text("not a manifest")
    (incoming / "BATCH2.CSV").write_text("image_id,uri,lat,lon\nb,/b.jpg,1.0,2.0\n")
    found = find_new_manifests(str(incoming), Watermark())
    assert sorted(m.uri.rsplit("/", 1)[-1] for m in found) == ["BATCH2.CSV", "batch1.csv.gz"]
    assert sorted(m.uri for m in found) == sorted(list_manifest_files(str(incoming)))  # one list of suffixes for both
