"""A validation split for data that has none: by a hash of the image id, the same everywhere, only where a row
has no split of its own; ingest's reading and the geocell coordinates agree on every row."""

import csv

import numpy as np
import pyarrow as pa

from geosurge.data.manifest import iter_manifest_batches, manifest_coordinates, plan_manifest_reading
from geosurge.data.manifest.holdout import assign_holdout, holdout_unit


def test_the_hash_is_stable_and_uniform():
    ids = pa.array([f"{i:02x}/{i:02x}/{9000000 + i}.jpg" for i in range(20000)])
    unit = holdout_unit(ids)
    assert np.array_equal(unit, holdout_unit(ids))  # the same on every call (and machine: BLAKE2b, no seed)
    assert holdout_unit(pa.array(["a"]))[0] == 0.25379361057584854  # pinned: a changed hash would move rows between splits
    assert 0.09 < (unit < 0.1).mean() < 0.11 and 0.0 <= unit.min() and unit.max() < 1.0


def test_only_rows_without_a_split_are_assigned_unless_the_source_has_none():
    table = pa.table({"image_id": [f"id{i}" for i in range(1000)],
                      "split": pa.array(["test", None] * 500, pa.string())})
    some = assign_holdout(table, 0.2, every_row=False).column("split").to_pylist()
    assert some[::2] == ["test"] * 500  # a row's own split is kept
    assert set(some[1::2]) == {"train", "val"} and 60 < some[1::2].count("val") < 140
    every = assign_holdout(table, 0.2, every_row=True).column("split").to_pylist()
    assert set(every) == {"train", "val"}
    assert assign_holdout(table, 0.0, every_row=True).equals(table)  # no hold-out asked: untouched


def test_an_mp16_csv_gets_a_val_split_that_geocells_and_ingest_reading_agree_on(tmp_path):
    path = tmp_path / "mp16_places365.csv"
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 70, 500), rng.uniform(-180, 180, 500)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "LAT", "LON"])
        w.writerows((f"{i:02x}/{i:02x}/{1000 + i}.jpg", a, o) for i, (a, o) in enumerate(zip(lat, lon)))
    reading = plan_manifest_reading(str(path), "mp16", "http://127.0.0.1:9/images", val_fraction=0.1)
    (batch,) = list(iter_manifest_batches(str(path), 1000, reading=reading))
    splits = np.array(batch.column("split").to_pylist())
    assert set(splits) == {"train", "val"} and 25 < (splits == "val").sum() < 80
    assert batch.column("uri")[0].as_py() == "http://127.0.0.1:9/images/00/00/1000.jpg"
    train_lat, _ = manifest_coordinates(str(path), "train", format="mp16", val_fraction=0.1)
    assert np.allclose(np.sort(train_lat), np.sort(lat[splits == "train"]))  # val rows never shape geocells
