"""The ingest stage on a real local Ray, on a local folder and on a real S3 server (SeaweedFS): bad records are
quarantined with their reason, counts reconcile from what was written, reruns resume instead of duplicating."""

import io
import json
import os
import posixpath
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geosurge import storage
from geosurge.config import GeoWorldConfig, IngestConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.images import ImageSpec, decode_image, encode_jpeg
from geosurge.data.ingest import ingest, read_quarantine, source_tag
from geosurge.geo.geocells import GeocellHierarchy

BAD_IDS = {"missing", "text", "empty", "truncated", "huge", "nan", "lat91", "lon181"}


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels (a decompression bomb's calling card), with no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bad_files() -> dict[str, bytes]:
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 120, 200, 10)).save(cmyk, format="JPEG")
    return {
        "text.jpg": b"not a picture",
        "empty.jpg": b"",
        "truncated.jpg": encode_jpeg(np.full((64, 64, 3), 90, np.uint8))[:250],
        "huge.png": png_header(30_000, 30_000),
        "cmyk.jpg": cmyk.getvalue(),
    }


def _read_table(uri: str, s3=None) -> pa.Table:
    fs, path = storage.resolve(uri, s3)
    return pq.read_table(path, filesystem=fs)


def _ls(uri: str, s3=None) -> list[str]:
    fs, path = storage.resolve(uri, s3)
    import pyarrow.fs as pafs

    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def make_bad_manifest(root: str, s3=None) -> tuple[str, int, int]:
    """GeoWorld images plus every kind of bad input, as one Parquet manifest under `root` (a folder or s3://)."""
    gw = storage.join(root, "gw")
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=24, image_size=48, seed=3), gw, s3, progress=False)
    good = _read_table(manifest_uri, s3).select(["image_id", "uri", "lat", "lon", "split"]).to_pylist()
    bad = {}
    for name, data in _bad_files().items():
        bad[name] = storage.join(root, "bad", name)
        storage.write_bytes(bad[name], data, s3)
    row = {"lat": 1.0, "lon": 2.0, "split": "train"}
    rows = good[:12] + [
        {**row, "image_id": "missing", "uri": storage.join(root, "bad", "nope.jpg")},
        {**row, "image_id": "text", "uri": bad["text.jpg"]},
        {**row, "image_id": "empty", "uri": bad["empty.jpg"]},
        {**row, "image_id": "truncated", "uri": bad["truncated.jpg"]},
        {**row, "image_id": "huge", "uri": bad["huge.png"]},
        {**row, "image_id": "cmyk", "uri": bad["cmyk.jpg"], "lat": 10.0, "lon": 20.0},
        {**row, "image_id": "nan", "uri": good[0]["uri"], "lat": float("nan")},
        {**row, "image_id": "lat91", "uri": good[0]["uri"], "lat": 91.0},
        {**row, "image_id": "lon181", "uri": good[0]["uri"], "lon": 181.0},
    ] + good[12:] + [
        {**good[1], "lat": 5.0},  # duplicate id, chunks away from the first copy: the first occurrence wins
    ]
    uri = storage.join(root, "manifest.parquet")
    fs, path = storage.resolve(uri, s3)
    pq.write_table(pa.Table.from_pylist(rows), path, filesystem=fs)
    return uri, len(rows), len(good)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_bad_records_are_quarantined_with_reasons_and_counts_reconcile(ray_local, where, tmp_path, request):
    s3 = request.getfixturevalue("s3") if where == "s3" else None
    root = f"s3://corpus/{tmp_path.name}" if s3 else str(tmp_path)
    manifest_uri, rows_in, good = make_bad_manifest(root, s3)
    out = storage.join(root, "out")
    config = IngestConfig(image_size=32, label_grid=4, segment_batch_size=8, shard_rows=8)
    result = ingest(manifest_uri, out, config, s3)

    assert result.rows_in == rows_in and result.reconciles
    assert result.quarantined_by_reason == {
        "not_found": 1, "not_an_image": 1, "empty": 1, "truncated": 1, "too_large": 1, "bad_coordinates": 3,
        "duplicate_id": 1,
    }
    assert result.shard_rows == good + 1  # the CMYK JPEG is a good image
    assert result.chunks == -(-rows_in // 8) and result.chunks_resumed == 0 and result.fetch_retries == 0

    quarantine = read_quarantine(result.quarantine_uri, s3).to_pylist()
    by_id = {(r["image_id"], r["reason"]): r for r in quarantine}
    assert by_id[("missing", "not_found")]["stage"] == "fetch"
    assert by_id[("truncated", "truncated")]["stage"] == "decode"
    assert by_id[("huge", "too_large")]["stage"] == "decode"
    assert by_id[("lat91", "bad_coordinates")]["stage"] == "manifest"
    dup = by_id[("gw_000001", "duplicate_id")]
    assert dup["stage"] == "manifest" and dup["lat"] == 5.0 and "already kept at row 1" in dup["detail"]

    shards = _read_table(result.shards_uri, s3)
    ids = shards.column("image_id").to_pylist()
    assert len(ids) == len(set(ids))
    manifest_ids = set(_read_table(manifest_uri, s3).column("image_id").to_pylist())
    assert set(ids) == manifest_ids - BAD_IDS
    assert shards.filter(pa.compute.equal(shards.column("image_id"), "gw_000001")).column("lat")[0].as_py() != 5.0
    for row in shards.to_pylist():
        assert row["label_grid"] == 4 and len(row["label_map"]) == 16
        assert max(row["label_map"]) < 150
        assert Image.open(io.BytesIO(row["image"])).size == (32, 32)
    # every output file is named after its chunk: <manifest stem>-<hash>-<chunk>_<first row>.parquet
    tag = source_tag(manifest_uri)
    assert all(name.startswith(f"{tag}-0000") for name in _ls(result.shards_uri, s3))
    report = json.loads(storage.read_bytes(storage.join(out, "ingest_report.json"), s3))
    assert report["reconciles"] and report["rows_in"] == rows_in and report["fetch_retries"] == 0

    # A rerun finds every chunk complete and rewrites nothing: same rows, no duplicates.
    files_before = _ls(result.shards_uri, s3)
    again = ingest(manifest_uri, out, config, s3)
    assert again.chunks_resumed == again.chunks and again.rows_processed == 0
    assert again.shard_rows == result.shard_rows and again.quarantined_by_reason == result.quarantined_by_reason
    assert _ls(result.shards_uri, s3) == files_before
    assert _read_table(result.shards_uri, s3).num_rows == result.shard_rows


def test_partial_chunk_is_redone_and_overwrite_clears(ray_local, tmp_path):
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=12, image_size=32, seed=4), str(tmp_path / "gw"),
                                     progress=False)
    rows = pq.read_table(manifest_uri).to_pylist()
    rows[5]["lat"] = 95.0  # one quarantined row in chunk 1, so that chunk has a shard file and a quarantine file
    manifest_uri = str(tmp_path / "m.parquet")
    pq.write_table(pa.Table.from_pylist(rows), manifest_uri)
    out = str(tmp_path / "out")
    config = IngestConfig(image_size=32, label_grid=4, segmenter="ground_truth", shard_rows=4)
    first = ingest(manifest_uri, out, config)
    assert first.reconciles and first.shard_rows == 11 and first.chunks == 3

    # As if the run had been killed between writing chunk 1's shard file and its quarantine file.
    chunk1 = f"{source_tag(manifest_uri)}-00001"
    (quarantined,) = [f for f in os.listdir(tmp_path / "out" / "quarantine") if f.startswith(chunk1)]
    os.remove(tmp_path / "out" / "quarantine" / quarantined)
    resumed = ingest(manifest_uri, out, config)
    assert resumed.chunks_resumed == 2 and resumed.rows_processed == 4
    assert resumed.reconciles and resumed.shard_rows == 11 and resumed.quarantined_by_reason == {"bad_coordinates": 1}
    ids = pq.read_table(str(tmp_path / "out" / "shards")).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 11

    cleared = ingest(manifest_uri, out, config, overwrite=True)
    assert cleared.chunks_resumed == 0 and cleared.rows_processed == 12 and cleared.reconciles


def test_csv_and_parquet_files_of_one_manifest_folder_dedupe_across_files(ray_local, tmp_path):
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=10, image_size=32, seed=8), str(tmp_path / "gw"),
                                     progress=False)
    table = pq.read_table(manifest_uri).select(["image_id", "uri", "label_uri", "lat", "lon", "split"])
    folder = tmp_path / "manifest"
    folder.mkdir()
    pq.write_table(table.slice(0, 6), folder / "a.parquet")
    # the CSV repeats gw_000002 (kept in a.parquet) and has an unparseable coordinate
    csv_rows = table.slice(6).to_pylist() + [table.slice(2, 1).to_pylist()[0]]
    csv_rows.append({**csv_rows[0], "image_id": "bad_lat", "lat": None})
    csv = pa.Table.from_pylist(csv_rows).set_column(3, "lat", pa.array(
        [str(r["lat"]) for r in csv_rows[:-1]] + ["north"], pa.string()))
    pacsv.write_csv(csv, folder / "b.csv")

    config = IngestConfig(image_size=32, label_grid=4, segmenter="ground_truth", shard_rows=3)
    result = ingest(str(folder), str(tmp_path / "out"), config)
    assert result.rows_in == 12 and result.reconciles and result.shard_rows == 10
    assert result.quarantined_by_reason == {"duplicate_id": 1, "bad_coordinates": 1}
    quarantine = {r["image_id"]: r for r in read_quarantine(result.quarantine_uri).to_pylist()}
    assert quarantine["gw_000002"]["detail"] == "image_id 'gw_000002' already kept at row 2 of a.parquet"
    assert "lat='north' is not a number" in quarantine["bad_lat"]["detail"]
    shards = pq.read_table(str(tmp_path / "out" / "shards"))
    assert sorted(shards.column("image_id").to_pylist()) == [f"gw_{i:06d}" for i in range(10)]
    assert shards.schema.field("lat").type == pa.float64()
    names = os.listdir(tmp_path / "out" / "shards")
    assert {n.split("-")[0] for n in names} == {"a", "b"}  # chunks are named after their manifest file


def test_shards_carry_geocells_and_a_second_manifest_lands_beside_the_first(ray_local, tmp_path):
    first_uri = generate_geoworld(GeoWorldConfig(num_images=12, image_size=32, seed=1), str(tmp_path / "gw1"),
                                  progress=False)
    second_uri = generate_geoworld(GeoWorldConfig(num_images=6, image_size=32, seed=2), str(tmp_path / "gw2"),
                                   progress=False)
    manifest = pq.read_table(first_uri)
    hierarchy = GeocellHierarchy.build(manifest.column("lat").to_numpy(), manifest.column("lon").to_numpy(), (6, 3), 1)
    out = str(tmp_path / "out")
    config = IngestConfig(image_size=32, label_grid=4, segmenter="ground_truth", shard_rows=5)
    first = ingest(first_uri, out, config, hierarchy=hierarchy)
    shards_dir = Path(first.shards_uri)
    before = {f: (shards_dir / f).stat().st_mtime_ns for f in os.listdir(shards_dir)}

    # New imagery: GeoWorld's ids restart at gw_000000, so prefix them to make them new images.
    second = pq.read_table(second_uri)
    second = second.set_column(0, "image_id", pa.array([f"new_{i}" for i in second.column("image_id").to_pylist()]))
    second_uri = str(tmp_path / "gw2" / "manifest.parquet")
    pq.write_table(second, second_uri)
    result = ingest(second_uri, out, config, hierarchy=hierarchy)
    assert result.rows_in == 6 and result.shard_rows == 6 and result.reconciles and result.manifest_uri == second_uri
    assert {f: (shards_dir / f).stat().st_mtime_ns for f in before} == before  # the first run's files untouched
    report = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert report["manifest_uri"] == second_uri and report["rows_in"] == 6

    shards = pq.read_table(str(shards_dir))
    assert shards.num_rows == 18 and shards.schema.field("cells").type == pa.list_(pa.int64())
    cells = np.stack(shards.column("cells").to_numpy(zero_copy_only=False))
    expected = hierarchy.assign(shards.column("lat").to_numpy(), shards.column("lon").to_numpy())
    np.testing.assert_array_equal(cells, expected)
    for column in ("image", "label_map", "label_grid", "lat", "lon", "split"):
        assert column in shards.column_names


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


# --------------------------------------------------------------------------------------------- public formats

PLACES365_HEADER = "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban"
SWAPPED_HEADER = "IMG_ID,AUTHOR,LON,LAT,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban"
SCENE3 = {"indoor": 0, "natural": 1, "urban": 2}  # Places365 S3_Label


def make_public_csvs(root: str, s3=None) -> tuple[str, str, str, dict[str, dict]]:
    """GeoWorld images described by public-format CSVs as published: an MP-16 `mp16_places365.csv` beside the
    GeoWorld folder (IMG_ID = images/<file>, relative to the CSV's folder) with a few bad rows, and an Im2GPS3k
    CSV elsewhere with the swapped LAT/LON header (IMG_ID = <file>, under an images root given in the config).
    Returns (mp16 uri, im2gps3k uri, images root of the Im2GPS3k CSV, truth by image file name)."""
    gw = storage.join(root, "gw")
    manifest_uri = generate_geoworld(GeoWorldConfig(num_images=30, image_size=32, seed=5), gw, s3, progress=False)
    rows = _read_table(manifest_uri, s3).to_pylist()
    # |lon| > 90 first: the file's head decides the swap, while the later chunks (8 rows, |values| <= 90) could
    # not decide alone; so a per-batch decision would leave them unswapped.
    rows.sort(key=lambda r: abs(r["lon"]) <= 90)
    assert sum(abs(r["lon"]) > 90 for r in rows) >= 8 and all(abs(r["lon"]) <= 90 for r in rows[16:])
    truth = {}
    for i, r in enumerate(rows):
        name = posixpath.basename(r["uri"])
        truth[name] = {"lat": r["lat"], "lon": r["lon"], "scene3": SCENE3[r["scene"]], "scene16": i % 16,
                       "scene365": i % 365}
    truth[posixpath.basename(rows[3]["uri"])]["scene3"] = None  # an empty label cell

    def line(img_id: str, lat: float, lon: float, t: dict) -> str:
        s3_label = "" if t["scene3"] is None else t["scene3"]
        return f"{img_id},{img_id[-10:-4]}@N00,{lat!r},{lon!r},{s3_label},{t['scene16']},{t['scene365']},0.1,0.2,0.7"

    mp16_lines = [line(f"images/{n}", t["lat"], t["lon"], t) for n, t in truth.items()]
    first = next(iter(truth))
    mp16_lines += [
        line("images/missing.jpg", 10.0, 20.0, truth[first]),  # not on storage
        line(f"images/{first}", 95.0, 20.0, truth[first]),  # bad coordinates (an id kept elsewhere, not a dup)
        line(f"images/{first}", 1.0, 2.0, truth[first]),  # duplicate id: the first occurrence wins
    ]
    mp16 = storage.join(gw, "mp16_places365.csv")
    storage.write_bytes(mp16, ("\n".join([PLACES365_HEADER, *mp16_lines]) + "\n").encode(), s3)
    # values stay lat,lon while the header names them LON,LAT
    im2gps_lines = [line(n, t["lat"], t["lon"], t) for n, t in truth.items()]
    im2gps = storage.join(root, "meta", "im2gps3k_places365.csv")
    storage.write_bytes(im2gps, ("\n".join([SWAPPED_HEADER, *im2gps_lines]) + "\n").encode(), s3)
    return mp16, im2gps, storage.join(gw, "images"), truth


def _check_public_shards(shards: pa.Table, truth: dict[str, dict], images_root: str, split: str) -> None:
    """`split`: the role of the public set (MP-16 trains, Im2GPS3k/YFCC4k are benchmarks)."""
    assert shards.num_rows == len(truth)
    assert shards.schema.field("scene3").type == pa.int64() and shards.schema.field("lat").type == pa.float64()
    assert shards.schema.field("prob_urban").type == pa.float64() and "author" in shards.column_names
    for row in shards.to_pylist():
        name = posixpath.basename(row["image_id"])
        assert row["uri"] == storage.join(images_root, name)
        expected = truth[name]
        assert (row["lat"], row["lon"]) == (expected["lat"], expected["lon"])
        assert (row["scene3"], row["scene16"], row["scene365"]) == (
            expected["scene3"], expected["scene16"], expected["scene365"])
        assert row["split"] == split and row["label_grid"] == 4 and len(row["label_map"]) == 16
        assert Image.open(io.BytesIO(row["image"])).size == (32, 32)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_public_format_csvs_are_streamed_as_published(ray_local, where, tmp_path, request, capsys):
    s3 = request.getfixturevalue("s3") if where == "s3" else None
    root = f"s3://corpus/public-{tmp_path.name}" if s3 else str(tmp_path)
    mp16, im2gps, images_root, truth = make_public_csvs(root, s3)
    config = IngestConfig(image_size=32, label_grid=4, segment_batch_size=8, shard_rows=8)

    # MP-16, format and images root from the defaults: 'auto' from the header, the CSV's folder.
    result = ingest(mp16, storage.join(root, "out_mp16"), config, s3)
    assert result.manifest_format == "mp16" and result.warnings == []
    assert result.rows_in == len(truth) + 3 and result.reconciles and result.chunks == 5
    assert result.quarantined_by_reason == {"not_found": 1, "bad_coordinates": 1, "duplicate_id": 1}
    shards = _read_table(result.shards_uri, s3)
    _check_public_shards(shards, truth, storage.join(storage.parent(mp16), "images"), "train")
    assert shards.column("image_id")[0].as_py().startswith("images/")  # IMG_ID kept as published
    quarantine = {r["reason"]: r for r in read_quarantine(result.quarantine_uri, s3).to_pylist()}
    assert quarantine["not_found"]["uri"] == storage.join(storage.parent(mp16), "images", "missing.jpg")
    assert quarantine["bad_coordinates"]["detail"] == "lat=95.0 out of [-90, 90]"

    # Im2GPS3k with the swapped header, images under a configured root: decided once, applied to every chunk.
    swapped = IngestConfig(**{**vars(config), "manifest_format": "im2gps3k", "images_root": images_root})
    out = storage.join(root, "out_im2gps")
    result = ingest(im2gps, out, swapped, s3)
    assert result.manifest_format == "im2gps3k" and result.reconciles and result.quarantined == 0
    assert result.rows_in == result.shard_rows == len(truth) and result.chunks == 4
    (warning,) = result.warnings
    assert "LAT and LON header names are swapped" in warning and f"first {len(truth)} rows" in warning
    _check_public_shards(_read_table(result.shards_uri, s3), truth, images_root, "test")
    report = json.loads(storage.read_bytes(storage.join(out, "ingest_report.json"), s3))
    assert report["warnings"] == [warning] and report["manifest_format"] == "im2gps3k"
    assert f"ingest: warning: {warning}" in capsys.readouterr().out

    # A rerun resumes from the saved plan and still reports the warning.
    again = ingest(im2gps, out, swapped, s3)
    assert again.chunks_resumed == again.chunks and again.warnings == [warning]


def test_public_format_errors_come_from_the_driver_before_any_task(ray_local, tmp_path):
    csv = tmp_path / "im2gps3k_places365.csv"
    csv.write_text("IMG_ID,AUTHOR,LAT\na.jpg,x,1.0\n")
    with pytest.raises(ValueError, match="'lon'"):
        ingest(str(csv), str(tmp_path / "out"), IngestConfig())
    with pytest.raises(ValueError, match="unknown manifest format 'mp-16'"):
        ingest(str(csv), str(tmp_path / "out"), IngestConfig(manifest_format="mp-16"))
    with pytest.raises(ValueError, match="label_uri"):  # public CSVs carry no ground-truth label maps
        ingest(str(csv), str(tmp_path / "out"), IngestConfig(segmenter="ground_truth"))


def test_untrusted_rows_never_reach_the_shards(ray_local, tmp_path):
    """An MP-16 CSV whose IMG_ID climbs out of images_root, and an id naming a 1.5 GiB (sparse) file."""
    gw = generate_geoworld(GeoWorldConfig(num_images=3, image_size=32, seed=21), str(tmp_path / "gw"), progress=False)
    rows = pq.read_table(gw).to_pylist()
    root = tmp_path / "gw" / "images"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "private.jpg").write_bytes(encode_jpeg(np.full((40, 40, 3), 7, np.uint8)))  # decodes
    with open(root / "huge.jpg", "wb") as f:
        f.truncate(3 << 29)
    lines = [f"{posixpath.basename(r['uri'])},{r['lat']},{r['lon']}" for r in rows]
    lines += ["../../outside/private.jpg,1,2", "sub/../../../outside/private.jpg,1,2", "huge.jpg,1,2"]
    mp16 = tmp_path / "mp16_places365.csv"
    mp16.write_text("IMG_ID,LAT,LON\n" + "\n".join(lines) + "\n")
    config = IngestConfig(image_size=32, label_grid=4, segmenter="none", images_root=str(root), shard_rows=4)
    result = ingest(str(mp16), str(tmp_path / "out"), config)
    assert result.reconciles and result.shard_rows == 3
    assert result.quarantined_by_reason == {"bad_uri": 2, "too_large": 1}
    shards = pq.read_table(str(tmp_path / "out" / "shards"))
    assert not any("outside" in u for u in shards.column("uri").to_pylist())
    quarantine = {r["image_id"]: r for r in read_quarantine(result.quarantine_uri).to_pylist()}
    assert quarantine["huge.jpg"]["stage"] == "fetch" and "exceeds" in quarantine["huge.jpg"]["detail"]

    # our own format, with ingest.allowed_uri_prefixes: a row outside them is refused before any read
    ours = pa.table({"image_id": ["in", "out"], "uri": [rows[0]["uri"], str(tmp_path / "outside" / "private.jpg")],
                     "lat": [1.0, 2.0], "lon": [3.0, 4.0]})
    pq.write_table(ours, tmp_path / "ours.parquet")
    config = IngestConfig(image_size=32, label_grid=4, segmenter="none", allowed_uri_prefixes=(f"{root}/",))
    result = ingest(str(tmp_path / "ours.parquet"), str(tmp_path / "out2"), config)
    assert result.shard_rows == 1 and result.quarantined_by_reason == {"bad_uri": 1} and result.reconciles


def test_an_id_already_in_the_shards_is_not_ingested_again(ray_local, tmp_path):
    first = generate_geoworld(GeoWorldConfig(num_images=9, image_size=32, seed=22), str(tmp_path / "gw"),
                              progress=False)
    table = pq.read_table(first)
    again = str(tmp_path / "again.parquet")  # the same rows under another name, plus one new id
    extra = table.slice(0, 1).set_column(0, table.schema.field("image_id"), pa.array(["new_0"]))
    pq.write_table(pa.concat_tables([table, extra]), again)
    out = str(tmp_path / "out")
    config = IngestConfig(image_size=32, label_grid=4, segmenter="none", shard_rows=4)
    assert ingest(first, out, config).shard_rows == 9
    second = ingest(again, out, config)
    assert second.rows_in == 10 and second.shard_rows == 1 and second.reconciles
    assert second.quarantined_by_reason == {"duplicate_id": 9}
    ids = pq.read_table(str(tmp_path / "out" / "shards")).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 10
    dup = read_quarantine(second.quarantine_uri).to_pylist()[0]
    assert "already in the output's shards" in dup["detail"]
    rerun = ingest(first, out, config)  # a rerun of the first resumes: its own rows are no duplicates
    assert rerun.chunks_resumed == rerun.chunks and rerun.shard_rows == 9 and rerun.reconciles


def test_an_edited_manifest_row_is_ingested_again(ray_local, tmp_path):
    gw = generate_geoworld(GeoWorldConfig(num_images=8, image_size=32, seed=23), str(tmp_path / "gw"),
                           progress=False)
    rows = pq.read_table(gw).drop_columns(["label_uri"]).to_pylist()
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    out = tmp_path / "out"
    config = IngestConfig(image_size=32, label_grid=4, segmenter="none", shard_rows=4)
    assert ingest(str(manifest), str(out), config).shard_rows == 8
    untouched = {f: os.stat(out / "shards" / f).st_mtime_ns for f in os.listdir(out / "shards") if "-00000_" in f}

    rows[6]["lat"] = -12.5  # a corrected latitude in the second chunk
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    again = ingest(str(manifest), str(out), config)
    assert again.reconciles and again.shard_rows == 8 and again.chunks_resumed == 1  # the edited chunk is redone
    shards = pq.read_table(str(out / "shards")).to_pylist()
    assert {r["image_id"]: r["lat"] for r in shards}[rows[6]["image_id"]] == -12.5 and len(shards) == 8
    assert {f: os.stat(out / "shards" / f).st_mtime_ns for f in untouched} == untouched


def test_fetch_and_staging_workers_import_neither_torch_nor_scipy():
    # every Ray worker that runs a fetch, write or staging task imports these modules to unpickle its function:
    # torch (the segmenters) and scipy (geocells) cost seconds of CPU per worker process and none of them uses them
    code = ("import sys, geosurge.data.ingest.fetch, geosurge.data.ingest.plan, geosurge.data.ingest.resume; "
            "print(sorted(m for m in ('torch', 'scipy', 'h3', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    from geosurge.data.ingest import NO_SEGMENTER, IngestResult  # the driver's names still import from the package

    assert NO_SEGMENTER == "none" and IngestResult.__name__ == "IngestResult"


def test_fetch_threads_only_read_and_the_task_thread_decodes_within_a_bounded_window(tmp_path, monkeypatch):
    from geosurge.data.ingest import fetch
    from geosurge.data.manifest import validate_rows

    manifest = generate_geoworld(GeoWorldConfig(num_images=40, image_size=32, seed=5), str(tmp_path / "gw"),
                                 progress=False)
    rows = validate_rows(pq.read_table(manifest))
    threads, lock = 3, threading.Lock()
    seen = {"read_threads": set(), "decode_threads": set(), "read": 0, "decoded": 0, "most_waiting": 0}

    class CountingFetcher(storage.Fetcher):
        def read(self, uri):
            out = super().read(uri)
            with lock:
                seen["read_threads"].add(threading.get_ident())
                seen["read"] += 1
                seen["most_waiting"] = max(seen["most_waiting"], seen["read"] - seen["decoded"])
            return out

    def counting_decode(data, spec):
        with lock:
            seen["decode_threads"].add(threading.get_ident())
            seen["decoded"] += 1
        return decode_image(data, spec)

    monkeypatch.setattr(fetch, "decode_image", counting_decode)
    fetcher = CountingFetcher(None, storage.RetryPolicy(retries=0))
    out = fetch._fetch_rows(rows, fetcher, ImageSpec(size=16), threads, label_grid=None)
    assert out.num_rows == 40 and out.column("reason").null_count == 40 and out.column("image").null_count == 0
    assert seen["decode_threads"] == {threading.get_ident()}  # decoding runs on the task's own thread only
    assert threading.get_ident() not in seen["read_threads"]
    # fetched bytes waiting for the decoder stay bounded: 2 × threads queued, plus the one being decoded
    assert seen["most_waiting"] <= 2 * threads + 1, seen

    class BuggyFetcher(storage.Fetcher):
        def read(self, uri):
            if uri == rows.column("uri")[7].as_py():
                raise KeyError("a reader bug, not a bad image")
            return super().read(uri)

    # a bug fails the task (Ray retries it, then the ingest fails): never a row with no image and no reason
    with pytest.raises(KeyError, match="a reader bug"):
        fetch._fetch_rows(rows, BuggyFetcher(None, storage.RetryPolicy(retries=0)), ImageSpec(size=16), threads,
                          label_grid=None)
