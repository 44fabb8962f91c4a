"""The `geosurge` console script, run as a user runs it."""

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq


def test_synth_writes_images_label_maps_and_a_manifest(tmp_path):
    exe = Path(sys.executable).with_name("geosurge")
    out = subprocess.run([str(exe), "synth", str(tmp_path / "gw"), "--num-images", "12", "--image-size", "32", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    manifest = pq.read_table(tmp_path / "gw" / "manifest.parquet")
    assert manifest.num_rows == 12
    assert all(Path(uri).is_file() for uri in manifest.column("uri").to_pylist())
    assert all(Path(uri).is_file() for uri in manifest.column("label_uri").to_pylist())


def test_unknown_command_is_an_error():
    exe = Path(sys.executable).with_name("geosurge")
    out = subprocess.run([str(exe), "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "invalid choice" in out.stderr
