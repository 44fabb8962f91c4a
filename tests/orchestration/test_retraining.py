"""The retraining job's bucket state: the lock admits one run at a time, the watermark finds only new manifests.
Both run against a local folder and the real S3 server."""

import dataclasses
import gzip
import json
import random
import socket
import threading
import time

import pytest

from geosurge import storage
from geosurge.data.manifest import list_manifest_files
from geosurge.orchestration.retraining import (
    BucketLock,
    IncomingManifest,
    LockHeld,
    LockLost,
    Watermark,
    WatermarkConflict,
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


# ------------------------------------------------------------------ the lease: renewal, races, crashes, fencing


class LatencyProxy:
    """A TCP proxy on loopback that delays every chunk by 0–`max_delay_s` (as S3 over a network does), in front
    of the real S3 server: races that a local server answers too fast to show come out."""

    def __init__(self, target: str, max_delay_s: float = 0.05):
        host, port = target.rsplit("//", 1)[1].split(":")
        self.target, self.max_delay_s = (host, int(port)), max_delay_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                time.sleep(random.uniform(0, self.max_delay_s))
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture(params=["local", "s3"])
def slow_root(request, tmp_path):
    """A lock folder: local, or on the real S3 server behind 0–50 ms of latency."""
    if request.param == "local":
        yield str(tmp_path), None
        return
    s3 = request.getfixturevalue("s3")
    proxy = LatencyProxy(s3.endpoint_url)
    yield f"s3://retrain-test/race-{time.time_ns()}", dataclasses.replace(s3, endpoint_url=proxy.endpoint_url)
    proxy.close()


def _expired_lock(uri: str, s3) -> None:
    storage.write_bytes(uri, json.dumps({"owner": "crashed", "acquired_at": 0, "expires_at": 1}).encode(), s3)


def test_a_live_holder_keeps_the_lock_past_its_ttl(root):
    root, s3 = root
    uri = storage.join(root, "retrain", "lock.json")
    with BucketLock(uri, ttl_s=1.0, s3=s3) as holder:  # renews every ttl/3
        time.sleep(2.5)
        with pytest.raises(LockHeld, match="held by"):
            BucketLock(uri, ttl_s=1.0, s3=s3).acquire()
        holder.check()  # still ours
    assert not storage.exists(uri, s3)


def test_two_runs_breaking_the_same_expired_lock_never_both_hold_it(slow_root):
    root, s3 = slow_root
    uri = storage.join(root, "retrain", "lock.json")
    both, errors = 0, []
    for _ in range(20):
        _expired_lock(uri, s3)
        start, winners = threading.Barrier(2), []

        def contend(start: threading.Barrier, winners: list[BucketLock]) -> None:
            lock = BucketLock(uri, ttl_s=60, s3=s3, heartbeat=False)
            start.wait()
            try:
                lock.acquire()
                winners.append(lock)
            except LockHeld:
                pass
            except Exception as e:  # noqa: BLE001 - e.g. reading the lock file half-written by the other run
                errors.append(repr(e))

        threads = [threading.Thread(target=contend, args=(start, winners)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        both += len(winners) == 2
        for lock in winners:
            lock.release()
    assert both == 0 and not errors, f"both runs held the lock in {both} of 20 trials; errors: {errors[:3]}"


def test_an_empty_lock_file_blocks_until_its_ttl_then_is_broken_with_a_clear_message(root, capsys):
    root, s3 = root
    uri = storage.join(root, "retrain", "lock.json")
    storage.write_bytes(uri, b"", s3)  # a run crashed between creating the lock file and writing it
    with pytest.raises(LockHeld, match="is empty, as a run that crashed while taking it leaves it"):
        BucketLock(uri, ttl_s=60, s3=s3).acquire()
    time.sleep(1.5)
    with BucketLock(uri, ttl_s=1.0, s3=s3) as lock:
        assert lock.holder().token == lock.info.token
    assert "breaking an expired lock" in capsys.readouterr().out
    storage.write_bytes(uri, b"{not json", s3)
    with pytest.raises(LockHeld, match="unreadable"):
        BucketLock(uri, ttl_s=60, s3=s3).acquire()


def test_a_run_whose_lease_was_taken_over_is_fenced_off(root):
    root, s3 = root
    uri = storage.join(root, "retrain", "lock.json")
    watermark_uri = storage.join(root, "retrain", "watermark.json")
    stalled = BucketLock(uri, ttl_s=0.5, s3=s3, heartbeat=False)  # e.g. a run paused past its lease
    stalled.acquire()
    mark = Watermark.load(watermark_uri, s3)
    time.sleep(1.0)
    with BucketLock(uri, ttl_s=60, s3=s3) as successor:
        with pytest.raises(LockLost, match="no longer holds this run's lease"):
            stalled.check()
        with pytest.raises(LockLost):
            mark.save(watermark_uri, s3, lock=stalled)  # fenced: nothing written
        assert not storage.exists(watermark_uri, s3)
        with pytest.raises(LockLost):
            stalled.renew()
        stalled.release()
        assert successor.holder().token == successor.info.token  # the successor's lock is left alone
        successor.check()
        Watermark.load(watermark_uri, s3).save(watermark_uri, s3, lock=successor)


def test_the_watermark_is_saved_only_over_the_version_that_was_read(root):
    root, s3 = root
    uri = storage.join(root, "retrain", "watermark.json")
    first, second = Watermark.load(uri, s3), Watermark.load(uri, s3)
    first.advance([IncomingManifest("a.csv", 1.0)])
    first.save(uri, s3)
    second.advance([IncomingManifest("b.csv", 2.0)])
    with pytest.raises(WatermarkConflict, match="changed since this run read it"):
        second.save(uri, s3)
    assert Watermark.load(uri, s3).ingested == ["a.csv"]
    first.advance([IncomingManifest("c.csv", 3.0)])
    first.save(uri, s3)  # its own later save replaces its own version
    assert Watermark.load(uri, s3).ingested == ["a.csv", "c.csv"]
