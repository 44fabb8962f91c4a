"""Manifest schema, public-format readers, validation with quarantine, and the swapped LAT/LON header."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from geosurge.data.manifest import (
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    check_latlon_swap,
    detect_format,
    iter_manifest_batches,
    plan_manifest_reading,
    read_im2gps3k,
    read_manifest,
    read_mp16,
    read_yfcc4k,
    resolve_manifest_format,
    validate_manifest,
    write_manifest,
    write_quarantine,
)
from geosurge.storage import S3Config

IM2GPS3K_HEADER = "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban"
SWAPPED_HEADER = "IMG_ID,AUTHOR,LON,LAT,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban"

# (lat, lon) of cities in the Americas and Asia: many longitudes lie beyond +-90.
AMERICAS_ASIA = [
    (40.71, -74.01), (34.05, -118.24), (41.88, -87.63), (49.28, -123.12), (19.43, -99.13), (-12.05, -77.04),
    (-22.91, -43.17), (-34.60, -58.38), (35.68, 139.69), (39.90, 116.40), (37.57, 126.98), (31.23, 121.47),
    (13.76, 100.50), (14.60, 120.98), (-33.87, 151.21), (22.32, 114.17), (47.61, -122.33), (29.76, -95.37),
    (45.50, -73.57), (4.71, -74.07), (1.35, 103.82), (28.61, 77.21), (25.03, 121.57), (43.06, 141.35),
]
# (lat, lon) of inland European, African and Middle-East cities: every |value| <= 90, so ranges cannot decide.
EUROPE_AFRICA = [
    (48.86, 2.35), (51.51, -0.13), (40.42, -3.70), (41.90, 12.50), (52.52, 13.40), (30.04, 31.24),
    (-1.29, 36.82), (50.08, 14.44), (47.50, 19.04), (50.45, 30.52), (15.50, 32.56), (0.35, 32.58),
    (-15.39, 28.32), (-17.83, 31.05), (12.64, -8.00), (13.51, 2.11), (12.37, -1.52), (48.14, 11.58),
    (45.46, 9.19), (47.38, 8.54), (50.85, 4.35), (53.90, 27.57), (55.76, 37.62), (39.93, 32.86),
    (35.69, 51.39), (24.71, 46.68), (33.31, 44.36), (12.00, 8.52), (12.13, 15.06), (45.76, 4.84),
    (50.06, 19.94), (44.43, 26.10), (42.70, 23.32), (44.79, 20.45),
]


def _write(path: Path, header: str, rows: list[str]) -> str:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def _im2gps_rows(coords: list[tuple[float, float]]) -> list[str]:
    """Real-looking Im2GPS3k rows; values always in lat,lon order (whatever the header says)."""
    return [
        f"{1000 + i}_{3029866094 + i}_0d8a7d3b{i:02d}_o.jpg,{12345678 + i}@N00,{lat},{lon},{i % 3},{i % 16},"
        f"{i % 365},0.1,0.3,0.6"
        for i, (lat, lon) in enumerate(coords)
    ]


def _swap_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "swapped" in str(w.message)]


# --------------------------------------------------------------------------------------------- readers


def test_im2gps3k_reader_keeps_labels_and_extra_columns(tmp_path: Path) -> None:
    csv = _write(tmp_path / "im2gps3k_places365.csv", IM2GPS3K_HEADER, _im2gps_rows(AMERICAS_ASIA[:4]))
    table = read_im2gps3k(csv, images_root="s3://bench/im2gps3k")
    assert table.column_names[:8] == ["image_id", "uri", "lat", "lon", "split", "scene3", "scene16", "scene365"]
    assert table.column_names[8:] == ["author", "prob_indoor", "prob_natural", "prob_urban"]
    assert table["image_id"][0].as_py() == "1000_3029866094_0d8a7d3b00_o.jpg"
    assert table["uri"][0].as_py() == "s3://bench/im2gps3k/1000_3029866094_0d8a7d3b00_o.jpg"
    assert table["lat"].to_pylist() == [40.71, 34.05, 41.88, 49.28]
    assert table["lon"].to_pylist() == [-74.01, -118.24, -87.63, -123.12]
    assert table["scene365"].to_pylist() == [0, 1, 2, 3]
    assert table["author"][1].as_py() == "12345679@N00"
    for f in MANIFEST_SCHEMA:
        assert table.schema.field(f.name).type == f.type

    clean, quarantine, report = read_manifest(csv, images_root="s3://bench/im2gps3k")
    assert (clean.num_rows, quarantine.num_rows, report.reconciles, report.warnings) == (4, 0, True, [])
    assert clean.schema.field("lat").nullable is False


def test_benchmark_uri_defaults_to_the_csv_folder(tmp_path: Path) -> None:
    csv = _write(tmp_path / "im2gps3k_places365.csv", IM2GPS3K_HEADER, _im2gps_rows(AMERICAS_ASIA[:1]))
    table = read_im2gps3k(csv)
    assert table["uri"][0].as_py() == str(tmp_path / "1000_3029866094_0d8a7d3b00_o.jpg")


def test_yfcc4k_reader_tolerates_missing_optional_columns(tmp_path: Path) -> None:
    # Numeric-looking ids must stay text, and absent label/probability columns are simply absent.
    csv = _write(tmp_path / "yfcc4k_places365.csv", "IMG_ID,LAT,LON,S3_Label",
                 ["10000281214.jpg,51.5,-0.12,2", "007,35.0,139.0,"])
    table = read_yfcc4k(csv, images_root="/data/yfcc4k")
    assert table.column_names == ["image_id", "uri", "lat", "lon", "split", "scene3"]
    assert table["image_id"].to_pylist() == ["10000281214.jpg", "007"]
    assert table["uri"].to_pylist() == ["/data/yfcc4k/10000281214.jpg", "/data/yfcc4k/007"]
    assert table["scene3"].to_pylist() == [2, None]
    assert detect_format(csv) == "yfcc4k"


def test_mp16_joins_relative_paths_under_images_root(tmp_path: Path) -> None:
    header = "IMG_ID,LAT,LON,S3_Label,S16_Label,S365_Label"
    csv = _write(tmp_path / "mp16_places365.csv", header,
                 ["34/8d/9055806529.jpg,48.8584,2.2945,2,12,90", "/e1/0a/1234567890.jpg,-33.86,151.21,1,5,200"])
    table = read_mp16(csv, images_root="s3://geo/mp16/images")
    assert table["uri"].to_pylist() == [
        "s3://geo/mp16/images/34/8d/9055806529.jpg",
        "s3://geo/mp16/images/e1/0a/1234567890.jpg",  # a leading slash must not escape the root
    ]
    assert table["image_id"][0].as_py() == "34/8d/9055806529.jpg"
    local = read_mp16(csv, images_root=str(tmp_path / "img"))
    assert local["uri"][0].as_py() == os.path.join(str(tmp_path / "img"), "34/8d/9055806529.jpg")
    with pytest.raises(ValueError, match="images_root"):
        read_mp16(csv, images_root=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="images_root"):
        read_manifest(csv)

    # 'auto' knows MP-16 by its relative-path ids even when the file name does not say so.
    renamed = _write(tmp_path / "train.csv", header, ["34/8d/9055806529.jpg,48.8584,2.2945,2,12,90"])
    assert detect_format(renamed) == "mp16"
    clean, _, report = read_manifest(renamed, images_root="/imgs")
    assert clean["uri"].to_pylist() == ["/imgs/34/8d/9055806529.jpg"] and report.reconciles


def test_public_columns_match_in_any_case_and_auto_detects_im2gps(tmp_path: Path) -> None:
    csv = _write(tmp_path / "bench.csv", IM2GPS3K_HEADER.lower(), _im2gps_rows(AMERICAS_ASIA[:3]))
    assert detect_format(csv) == "im2gps3k"  # AUTHOR column, no path-like ids
    clean, _, _ = read_manifest(csv, images_root="/b")
    assert clean["scene3"].to_pylist() == [0, 1, 2] and "author" in clean.column_names


# --------------------------------------------------------------------------------------------- validation


def test_bad_corpus_is_quarantined_with_reasons_and_counts_reconcile(tmp_path: Path) -> None:
    rows = [
        "ok1,s3://b/ok1.jpg,10.0,20.0,train",
        "nanlat,s3://b/x.jpg,nan,20.0,train",
        "lat91,s3://b/x.jpg,91.0,20.0,train",
        "lon181,s3://b/x.jpg,10.0,181,train",
        "inflon,s3://b/x.jpg,10.0,-inf,train",
        "both,s3://b/x.jpg,-95,200,train",
        "emptylat,s3://b/x.jpg,,20.0,train",
        "textlat,s3://b/x.jpg,north,20.0,train",
        "ok1,s3://b/ok1-again.jpg,11.0,21.0,val",
        ",s3://b/noid.jpg,10.0,20.0,train",
        "nouri,,10.0,20.0,train",
        "ok2,s3://b/ok2.jpg,-90,180,",
    ]
    csv = _write(tmp_path / "manifest.csv", "image_id,uri,lat,lon,split", rows)
    clean, quarantine, report = read_manifest(csv)

    assert clean["image_id"].to_pylist() == ["ok1", "ok2"]
    assert clean["uri"].to_pylist() == ["s3://b/ok1.jpg", "s3://b/ok2.jpg"]  # the FIRST ok1 is kept
    assert clean["split"].to_pylist() == ["train", None]
    assert quarantine.schema == QUARANTINE_SCHEMA
    got = dict(zip(quarantine["image_id"].to_pylist(), zip(quarantine["reason"].to_pylist(),
                                                           quarantine["detail"].to_pylist())))
    assert got["nanlat"] == ("bad_coordinates", "lat=nan is not a number")
    assert got["lat91"] == ("bad_coordinates", "lat=91.0 out of [-90, 90]")
    assert got["lon181"] == ("bad_coordinates", "lon=181.0 out of [-180, 180]")
    assert got["inflon"] == ("bad_coordinates", "lon=-inf is not finite")
    assert got["both"] == ("bad_coordinates", "lat=-95.0 out of [-90, 90]; lon=200.0 out of [-180, 180]")
    assert got["emptylat"] == ("bad_coordinates", "lat is missing")
    assert got["textlat"] == ("bad_coordinates", "lat='north' is not a number")
    assert got["ok1"] == ("duplicate_id", "image_id 'ok1' already kept at row 0")
    assert got[""] == ("missing_id", "image_id is empty")
    assert got["nouri"] == ("missing_uri", "uri is empty")
    assert set(quarantine["stage"].to_pylist()) == {"manifest"}

    assert report.rows_in == len(rows) and report.rows_out == 2
    assert report.quarantined_by_reason == {
        "missing_id": 1, "missing_uri": 1, "bad_uri": 0, "bad_coordinates": 7, "duplicate_id": 1}
    assert report.reconciles
    assert "12 rows in, 2 kept, 10 quarantined" in report.summary()


def test_nulls_and_first_valid_duplicate_in_memory() -> None:
    table = pa.table({
        "image_id": ["a", "a", "a", None, "b"],
        "uri": ["u1", "u2", "u3", "u4", None],
        "lat": [None, 1.0, 2.0, 3.0, 4.0],
        "lon": [0.0, 1.0, 2.0, 3.0, 4.0],
        "extra": [1, 2, 3, 4, 5],
    })
    clean, quarantine, report = validate_manifest(table)
    # The first 'a' has no latitude, so the first VALID 'a' (row 1) is kept and row 2 is its duplicate.
    assert clean.to_pydict() == {"image_id": ["a"], "uri": ["u2"], "lat": [1.0], "lon": [1.0], "split": [None],
                                 "extra": [2]}
    assert quarantine["reason"].to_pylist() == ["bad_coordinates", "duplicate_id", "missing_id", "missing_uri"]
    assert quarantine["detail"].to_pylist() == [
        "lat is missing", "image_id 'a' already kept at row 1", "image_id is null", "uri is null"]
    assert quarantine["lat"].to_pylist() == [None, 2.0, 3.0, 4.0]
    assert report.reconciles and report.rows_out + len(quarantine) == 5


def test_missing_required_columns_raise_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['uri'\].*found columns: \['image_id', 'lat', 'lon'\]"):
        validate_manifest(pa.table({"image_id": ["a"], "lat": [1.0], "lon": [2.0]}))
    csv = _write(tmp_path / "im2gps3k_places365.csv", "IMG_ID,AUTHOR,LAT", ["a.jpg,x,1.0"])
    with pytest.raises(ValueError, match="'lon'"):
        read_manifest(csv, images_root="/b")
    own = _write(tmp_path / "m.csv", "image_id,uri,lon", ["a,u,1.0"])
    with pytest.raises(ValueError, match=r"\['lat'\]"):
        read_manifest(own)


# --------------------------------------------------------------------------------------------- swapped header


def test_swapped_header_is_detected_fixed_and_warned(tmp_path: Path) -> None:
    coords = AMERICAS_ASIA + EUROPE_AFRICA[:6]
    csv = _write(tmp_path / "im2gps3k_places365.csv", SWAPPED_HEADER, _im2gps_rows(coords))
    with pytest.warns(UserWarning, match="LAT and LON header names are swapped"):
        clean, quarantine, report = read_manifest(csv, images_root="/b")
    assert clean["lat"].to_pylist() == [c[0] for c in coords]
    assert clean["lon"].to_pylist() == [c[1] for c in coords]
    assert quarantine.num_rows == 0 and report.reconciles
    assert len(report.warnings) == 1 and "swapped" in report.warnings[0] and "ranges" in report.warnings[0]
    assert "swapped" in report.summary()


def test_correct_header_is_not_swapped(tmp_path: Path) -> None:
    coords = AMERICAS_ASIA + EUROPE_AFRICA[:6]
    csv = _write(tmp_path / "im2gps3k_places365.csv", IM2GPS3K_HEADER, _im2gps_rows(coords))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clean, _, report = read_manifest(csv, images_root="/b")
    assert _swap_warnings(record) == [] and report.warnings == []
    assert clean["lat"].to_pylist() == [c[0] for c in coords]


@pytest.mark.parametrize("swapped", [False, True])
def test_ambiguous_ranges_are_decided_by_land_share(tmp_path: Path, swapped: bool) -> None:
    csv = _write(tmp_path / "im2gps3k_places365.csv", SWAPPED_HEADER if swapped else IM2GPS3K_HEADER,
                 _im2gps_rows(EUROPE_AFRICA))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clean, _, report = read_manifest(csv, images_root="/b")
    assert len(_swap_warnings(record)) == int(swapped) and len(report.warnings) == int(swapped)
    if swapped:
        assert "land" in report.warnings[0]
    assert clean["lat"].to_pylist() == [c[0] for c in EUROPE_AFRICA]  # right either way
    assert clean["lon"].to_pylist() == [c[1] for c in EUROPE_AFRICA]


def test_a_handful_of_bad_rows_never_swaps_the_header(tmp_path: Path) -> None:
    # 5 rows with |LAT| > 90 are 2.4% of this correct, Europe-only file: ranges alone would call it swapped,
    # the land share vetoes, and the bad rows are quarantined instead.
    coords = [(lat + 0.01 * k, lon) for k in range(6) for lat, lon in EUROPE_AFRICA]
    coords += [(120.0, 10.0)] * 5
    csv = _write(tmp_path / "im2gps3k_places365.csv", IM2GPS3K_HEADER, _im2gps_rows(coords))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clean, quarantine, report = read_manifest(csv, images_root="/b")
    assert _swap_warnings(record) == [] and report.warnings == []
    assert clean.num_rows == len(coords) - 5
    assert quarantine["reason"].to_pylist() == ["bad_coordinates"] * 5
    assert report.reconciles

    # Too few rows to judge: nothing is swapped.
    check = check_latlon_swap(np.array([95.0, 10.0, 20.0]), np.array([10.0, 20.0, 30.0]))
    assert not check.swapped


# --------------------------------------------------------------------------------------------- writing


def test_parquet_round_trip_of_our_format(tmp_path: Path) -> None:
    table = pa.table({
        "image_id": ["a", "b"], "uri": ["s3://x/a.jpg", "s3://x/b.jpg"], "lat": [1.5, -2.5], "lon": [3.0, 4.0],
        "split": ["train", "val"], "scene3": pa.array([0, 2], pa.int64()), "photographer": ["p", "q"],
    })
    clean, _, _ = validate_manifest(table)
    uri = str(tmp_path / "out" / "manifest.parquet")
    write_manifest(clean, uri)
    back, quarantine, report = read_manifest(uri)
    assert back.equals(clean) and back.schema.equals(clean.schema)
    assert back.column_names == ["image_id", "uri", "lat", "lon", "split", "scene3", "photographer"]
    assert quarantine.num_rows == 0 and report.rows_out == 2

    raw, _, report = read_manifest(uri, validate=False)
    assert raw.num_rows == 2 and report.reconciles

    _, bad, _ = validate_manifest(pa.table({"image_id": ["a", "a"], "uri": ["u", "u"], "lat": [0.0, 0.0],
                                            "lon": [0.0, 0.0]}))
    qpath = str(tmp_path / "out" / "quarantine.parquet")
    write_quarantine(bad, qpath)
    import pyarrow.parquet as pq

    assert pq.read_table(qpath).equals(bad)


def test_million_rows_validate_and_reconcile() -> None:
    n = 1_000_000
    rng = np.random.default_rng(0)
    ids = pa.array(np.char.add("img", rng.integers(0, 2 * n, n).astype(str)))
    lat = rng.uniform(-92, 92, n)
    lat[rng.integers(0, n, 1000)] = np.nan
    table = pa.table({"image_id": ids, "uri": ids, "lat": lat, "lon": rng.uniform(-180, 180, n)})
    clean, quarantine, report = validate_manifest(table)
    assert report.reconciles and clean.num_rows + quarantine.num_rows == n
    assert report.quarantined_by_reason["bad_coordinates"] > 0 and report.quarantined_by_reason["duplicate_id"] > 0
    assert len(set(clean["image_id"].to_pylist())) == clean.num_rows


# --------------------------------------------------------------------------------------------- s3


def test_readers_and_writers_work_on_s3(s3: S3Config) -> None:
    from geosurge.storage import write_bytes

    body = IM2GPS3K_HEADER + "\n" + "\n".join(_im2gps_rows(AMERICAS_ASIA[:5])) + "\n"
    write_bytes("s3://bench/meta/im2gps3k_places365.csv", body.encode(), s3)
    clean, _, report = read_manifest("s3://bench/meta/im2gps3k_places365.csv", s3=s3)
    assert clean.num_rows == 5 and report.reconciles
    assert clean["uri"][0].as_py() == "s3://bench/meta/1000_3029866094_0d8a7d3b00_o.jpg"
    write_manifest(clean, "s3://bench/out/manifest.parquet", s3=s3)
    back, _, _ = read_manifest("s3://bench/out/manifest.parquet", s3=s3)
    assert back.equals(clean)


# --------------------------------------------------------------------------------------------- streaming


def test_streamed_public_batches_match_the_whole_file_reader(tmp_path: Path) -> None:
    # Swapped header; the Europe/Africa tail is in batches that could not decide the swap on their own.
    coords = AMERICAS_ASIA + EUROPE_AFRICA
    csv = _write(tmp_path / "im2gps3k_places365.csv", SWAPPED_HEADER, _im2gps_rows(coords))
    reading = plan_manifest_reading(csv, images_root="/b")
    assert (reading.format, reading.images_root, reading.latlon_swapped) == ("im2gps3k", "/b", True)
    (warning,) = reading.warnings
    assert "swapped" in warning and f"on the first {len(coords)} rows" in warning
    tail = EUROPE_AFRICA[-7:]
    assert not check_latlon_swap(np.array([c[1] for c in tail]), np.array([c[0] for c in tail])).swapped

    batches = list(iter_manifest_batches(csv, 7, reading=reading))
    assert [b.num_rows for b in batches] == [7] * 8 + [2]
    streamed, _, report = validate_manifest(pa.concat_tables(batches))
    with pytest.warns(UserWarning, match="swapped"):
        whole, _, _ = read_manifest(csv, images_root="/b")
    assert streamed.equals(whole) and report.reconciles
    assert streamed["lat"].to_pylist() == [c[0] for c in coords]

    # Decided on the head only: the first 30 rows (Americas/Asia) settle it for the whole file.
    assert plan_manifest_reading(csv, images_root="/b", sample_rows=30).latlon_swapped


def test_streaming_mp16_defaults_to_the_csv_folder_and_reads_blank_labels_as_null(tmp_path: Path) -> None:
    header = "IMG_ID,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor"
    csv = _write(tmp_path / "train.csv", header,
                 ["34/8d/9055806529.jpg,48.8584,2.2945,2,12,90,0.5", "e1/0a/1234567890.jpg,-33.86,151.21,,,,"])
    assert resolve_manifest_format(csv) == "mp16"
    reading = plan_manifest_reading(csv)
    assert reading.format == "mp16" and reading.images_root == str(tmp_path) and reading.warnings == ()
    (batch,) = iter_manifest_batches(csv, 100, reading=reading)
    assert batch["uri"].to_pylist() == [os.path.join(str(tmp_path), "34/8d/9055806529.jpg"),
                                        os.path.join(str(tmp_path), "e1/0a/1234567890.jpg")]
    assert batch["scene3"].to_pylist() == [2, None] and batch["scene365"].type == pa.int64()
    assert batch["prob_indoor"].to_pylist() == [0.5, None]
    assert batch["lat"].to_pylist() == [48.8584, -33.86]

    with pytest.raises(ValueError, match="unknown manifest format"):
        resolve_manifest_format(csv, "mp-16")
    no_lon = _write(tmp_path / "mp16_places365.csv", "IMG_ID,LAT", ["a/b.jpg,1.0"])
    with pytest.raises(ValueError, match="'lon'"):
        resolve_manifest_format(no_lon)


# --------------------------------------------------------------------------------------------- benchmarks, roots

HTTP_ROOT = "http://127.0.0.1:8765/imgs"  # an image server: uris must stay URLs, never become local paths
IM2GPS_ROWS = [  # the first rows of TIBHannover/GeoEstimation meta/im2gps_places365.csv (probabilities cut short)
    "104123223_7410c654ba_19_19355699@N00.jpg,19355699@N00,-16.663606,145.563537,1,8,150,0.003,0.778,0.219",
    "1095548455_f636d22cbb_1277_8576809@N08.jpg,8576809@N08,31.893581,-85.141124,2,15,231,0.004,0.016,0.980"]
YFCC26K_ROWS = [  # the first rows of yfcc25600_places365.csv (GeoEstimation release "pytorch")
    "45/77/3228511372.jpg,43008843@N00,46.778991,23.611207,0,5,21,0.979,0.001,0.020",
    "2e/b5/4325164013.jpg,22489773@N02,40.445379,116.66399,2,14,201,0.017,0.367,0.616"]


@pytest.mark.parametrize("fmt, name, rows", [("im2gps", "im2gps_places365.csv", IM2GPS_ROWS),
                                             ("yfcc26k", "yfcc25600_places365.csv", YFCC26K_ROWS)])
def test_published_benchmark_csvs_read_when_named(tmp_path: Path, fmt: str, name: str, rows: list[str]) -> None:
    csv = _write(tmp_path / name, IM2GPS3K_HEADER, rows)
    ids = [r.split(",")[0] for r in rows]
    clean, _, report = read_manifest(csv, fmt, images_root=HTTP_ROOT)
    assert clean["image_id"].to_pylist() == ids and clean["uri"].to_pylist() == [f"{HTTP_ROOT}/{i}" for i in ids]
    assert clean["lat"].to_pylist() == [float(r.split(",")[2]) for r in rows] and report.reconciles
    assert clean["split"].to_pylist() == ["test", "test"]
    assert clean["scene365"].to_pylist() == [int(r.split(",")[6]) for r in rows]
    reading = plan_manifest_reading(csv, fmt, images_root=HTTP_ROOT)
    assert validate_manifest(next(iter_manifest_batches(csv, 10, reading=reading)))[0].equals(clean)
    assert detect_format(csv) == {"im2gps": "im2gps3k", "yfcc26k": "yfcc4k"}[fmt]  # 'auto' reads as it always did


def test_gws15k_in_our_columns_or_with_img_id(tmp_path: Path) -> None:
    csv = _write(tmp_path / "gws15k.csv", "image_id,uri,lat,lon,city,country",
                 ["image_0,street/0.jpg,-11.0264039,-68.7511483,Cobija,Bolivia",
                  "image_1,s3://gws/1.jpg,-7.5648521,108.8731069,Rawasari,Indonesia"])
    clean, _, _ = read_manifest(csv, "gws15k", images_root=HTTP_ROOT)
    assert clean["uri"].to_pylist() == [f"{HTTP_ROOT}/street/0.jpg", "s3://gws/1.jpg"]  # URLs are kept as written
    assert clean["split"].to_pylist() == ["test", "test"] and clean["country"].to_pylist()[0] == "Bolivia"
    assert detect_format(csv) == "geosurge"  # our header: never guessed as GWS15k
    ids = _write(tmp_path / "gws_img.csv", "IMG_ID,LAT,LON", ["a/0.jpg,10.0,20.0"])
    (batch,) = iter_manifest_batches(ids, 10, reading=plan_manifest_reading(ids, "gws15k"))
    assert batch["uri"].to_pylist() == [os.path.join(str(tmp_path), "a/0.jpg")] and batch["lon"].to_pylist() == [20.0]
    with pytest.raises(ValueError, match="never published"):
        resolve_manifest_format(_write(tmp_path / "bad.csv", "image_id,lat,lon", ["x,1,2"]), "gws15k")


def test_img2dataset_tables_csv_and_parquet(tmp_path: Path) -> None:
    import hashlib

    import pyarrow.parquet as pq

    csv = _write(tmp_path / "shard.csv", "url,caption,LATITUDE,Longitude",
                 [f"{HTTP_ROOT}/a.jpg,Eiffel tower,48.8584,2.2945", "b/c.jpg,Opera house,-33.8568,151.2153"])
    assert detect_format(csv) == "img2dataset"
    clean, _, report = read_manifest(csv, images_root="http://127.0.0.1:8765/other")
    assert clean["image_id"].to_pylist() == [hashlib.sha1(u.encode()).hexdigest()[:16]
                                             for u in (f"{HTTP_ROOT}/a.jpg", "b/c.jpg")]
    assert clean["uri"].to_pylist() == [f"{HTTP_ROOT}/a.jpg", "http://127.0.0.1:8765/other/b/c.jpg"]
    assert clean["lat"].to_pylist() == [48.8584, -33.8568] and clean["split"].to_pylist() == ["train", "train"]
    assert clean["caption"].to_pylist()[1] == "Opera house" and report.reconciles
    table = pa.table({"key": ["000000001", "000000002"], "URL": ["s3://b/1.jpg", ""], "lat": [1.0, 2.0],
                      "lon": [3.0, 4.0]})
    pq.write_table(table, tmp_path / "shard.parquet")
    parquet = str(tmp_path / "shard.parquet")
    (batch,) = iter_manifest_batches(parquet, 10, reading=plan_manifest_reading(parquet))
    streamed, quarantine, _ = validate_manifest(batch)
    assert streamed["image_id"].to_pylist() == ["000000001"] and streamed["uri"].to_pylist() == ["s3://b/1.jpg"]
    assert quarantine["reason"].to_pylist() == ["missing_uri"]  # an empty url is quarantined, never joined


def test_an_http_images_root_stays_a_url(tmp_path: Path) -> None:
    from geosurge.data.ingest.plan import _canonical
    from geosurge.data.manifest import resolve_images_root

    csv = _write(tmp_path / "mp16_places365.csv", "IMG_ID,LAT,LON", ["34/8d/9055806529.jpg,48.8584,2.2945"])
    reading = plan_manifest_reading(csv, images_root="http://127.0.0.1:9/x")
    (batch,) = iter_manifest_batches(csv, 10, reading=reading)
    assert batch["uri"].to_pylist() == ["http://127.0.0.1:9/x/34/8d/9055806529.jpg"]
    assert read_manifest(csv, images_root="http://127.0.0.1:9/x")[0]["uri"][0].as_py().startswith("http://127.0.0.1:9/x/")
    assert _canonical("http://127.0.0.1:9/x") == resolve_images_root("http://127.0.0.1:9/x") == "http://127.0.0.1:9/x"
    assert resolve_images_root("s3://b/p") == "s3://b/p" and resolve_images_root("file:///d") == "file:///d"
    assert resolve_images_root("rel/dir") == os.path.abspath("rel/dir") and _canonical("file:///d/m.csv") == "/d/m.csv"


# --------------------------------------------------------------------------------------------- paths stay under root


def test_ids_and_paths_that_leave_the_images_root_are_quarantined_as_bad_uri(tmp_path: Path) -> None:
    root = tmp_path / "images"
    mp16 = _write(tmp_path / "mp16_places365.csv", "IMG_ID,LAT,LON",
                  ["34/8d/1.jpg,48.8,2.2", "../outside/private.jpg,1,2", "a/../../outside/private.jpg,1,2",
                   "/../outside/private.jpg,1,2", "a/./../b/2.jpg,1,2", "%2e%2e/outside/p.jpg,1,2"])
    for clean, quarantine, report in (read_manifest(mp16, "mp16", images_root=str(root)),
                                      validate_manifest(next(iter_manifest_batches(
                                          mp16, 10, reading=plan_manifest_reading(mp16, "mp16", str(root)))))):
        assert clean["uri"].to_pylist() == [f"{root}/34/8d/1.jpg", f"{root}/b/2.jpg"]  # normalised, under the root
        assert "_uri_problem" not in clean.column_names
        assert quarantine["reason"].to_pylist() == ["bad_uri"] * 4
        assert all("leaves the images root" in d for d in quarantine["detail"].to_pylist())
        assert report.quarantined_by_reason["bad_uri"] == 4 and report.reconciles

    # img2dataset and GWS15k: URLs as written; an absolute local path only under a local root
    (root / "ok").mkdir(parents=True)
    table = _write(tmp_path / "shard.csv", "url,lat,lon",
                   [f"{root}/ok/1.jpg,1,2", "/etc/passwd,1,2", f"file://{tmp_path}/private.jpg,1,2",
                    f"file://{root}/../private.jpg,1,2", "../private.jpg,1,2", f"{HTTP_ROOT}/x.jpg,1,2"])
    clean, quarantine, _ = read_manifest(table, "img2dataset", images_root=str(root))
    assert clean["uri"].to_pylist() == [f"{root}/ok/1.jpg", f"{HTTP_ROOT}/x.jpg"]
    assert quarantine["reason"].to_pylist() == ["bad_uri"] * 4
    gws = _write(tmp_path / "gws15k.csv", "image_id,uri,lat,lon", ["a,/etc/hosts,1,2", "b,ok/2.jpg,1,2"])
    clean, quarantine, _ = read_manifest(gws, "gws15k", images_root=str(root))
    assert clean["uri"].to_pylist() == [f"{root}/ok/2.jpg"] and quarantine["reason"].to_pylist() == ["bad_uri"]
    clean, quarantine, _ = read_manifest(gws, "gws15k", images_root=HTTP_ROOT)  # a URL root holds no local path
    assert quarantine["image_id"].to_pylist() == ["a"] and quarantine["reason"].to_pylist() == ["bad_uri"]


def test_our_format_takes_optional_allowed_uri_prefixes() -> None:
    from geosurge.data.manifest import validate_rows

    table = pa.table({"image_id": ["a", "b", "c", "d"], "lat": [1.0] * 4, "lon": [2.0] * 4,
                      "uri": ["s3://photos/in/a.jpg", "s3://photos/other/b.jpg", "/data/in/../../etc/c.jpg",
                              "s3://photos/in/../secret/d.jpg"]})
    assert validate_rows(table)["reason"].null_count == 4  # no prefixes: no restriction
    rows = validate_rows(table, allowed_prefixes=("s3://photos/in/", "/data/in/"))
    assert rows["reason"].to_pylist() == [None, "bad_uri", "bad_uri", "bad_uri"]
    assert "allowed_uri_prefixes" in rows["detail"][1].as_py()
    # a prefix without its trailing slash still ends on a boundary: a sibling bucket or host is not under it
    lookalikes = pa.table({"image_id": ["e", "f", "g"], "lat": [1.0] * 3, "lon": [2.0] * 3,
                           "uri": ["s3://photos-x/e.jpg", "https://img.example.com.evil.net/f.jpg", "/data/inbox/g.jpg"]})
    rows = validate_rows(lookalikes, allowed_prefixes=("s3://photos", "https://img.example.com", "/data/in"))
    assert rows["reason"].to_pylist() == ["bad_uri"] * 3
