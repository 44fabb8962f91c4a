"""The `geosurge` console script, run as a user runs it."""

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def test_synth_writes_images_label_maps_and_a_manifest(tmp_path):
    exe = Path(sys.executable).with_name("geosurge")
    out = subprocess.run([str(exe), "synth", str(tmp_path / "gw"), "--num-images", "12", "--image-size", "32", "--quiet"],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    manifest = pq.read_table(tmp_path / "gw" / "manifest.parquet")
    assert manifest.num_rows == 12
    assert all(Path(uri).is_file() for uri in manifest.column("uri").to_pylist())
    assert all(Path(uri).is_file() for uri in manifest.column("label_uri").to_pylist())


def test_unknown_command_is_an_error():
    exe = Path(sys.executable).with_name("geosurge")
    out = subprocess.run([str(exe), "nope"], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "invalid choice" in out.stderr


GEOSURGE = str(Path(sys.executable).with_name("geosurge"))
REPO = Path(__file__).resolve().parents[1]


def test_the_command_line_and_an_ingest_that_segments_nothing_start_without_pytorch():
    # PyTorch is about 2.6 s of a command's start here: `geosurge --help`, `plan`, `synth` and `geosurge ingest`
    # with segmenter=none (what its command imports, below) need none of it, nor DeepSpeed, transformers or MLflow
    code = ("import sys, geosurge.cli; from geosurge.orchestration.preflight import check_ingest; "
            "from geosurge.data.ingest import ingest, NO_SEGMENTER; "
            "from geosurge.geo.geocells import GeocellHierarchy; "
            "from geosurge.data.manifest import manifest_coordinates; from geosurge.runtime import init_ray; "
            "print(sorted(m for m in ('torch', 'deepspeed', 'transformers', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_synth_id_prefix_names_new_imagery_apart_from_the_demos(tmp_path):
    out = subprocess.run([GEOSURGE, "synth", str(tmp_path / "new"), "--num-images", "4", "--image-size", "32",
                          "--id-prefix", "batch2", "--quiet"], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ids = pq.read_table(tmp_path / "new" / "manifest.parquet").column("image_id").to_pylist()
    assert len(ids) == 4 and all(i.startswith("batch2_") for i in ids)


def test_a_users_mistake_is_one_line_and_exit_code_2_from_the_cli_and_the_workflow(tmp_path):
    args = ["--set", f"output_dir={tmp_path}/run", "--set", f"data.manifest={tmp_path}/photos.csv",
            "--set", "ingest.segmenter=none"]
    for command in ([GEOSURGE, "run"], [sys.executable, "workflows/full_pipeline.py"]):
        out = subprocess.run([*command, *args], check=False, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert out.returncode == 2, out.stderr
        assert out.stderr.splitlines() == [(
            f"geosurge run: error: data.manifest: manifest not found: {tmp_path}/photos.csv: give an existing "
            "Parquet or CSV file or folder (local path or s3://…), or leave data.manifest unset to generate the "
            "GeoWorld demo")]
        assert out.stdout == ""

    verbose = subprocess.run([GEOSURGE, "run", "--verbose", *args], check=False, capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr and "UserError" in verbose.stderr


def test_config_mistakes_are_user_errors(tmp_path):
    out = subprocess.run([GEOSURGE, "eval", "--config", str(tmp_path / "eval.yaml")], check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"geosurge eval: error: config file {tmp_path / 'eval.yaml'} does not exist: give "
                                  "the path of a YAML config file (presets are in configs/)")
    out = subprocess.run([GEOSURGE, "retrain", "--set", "train.nope=1"], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "unknown key 'nope'" in out.stderr


def test_eval_against_a_database_that_does_not_exist_says_so_and_creates_none(tmp_path):
    out = subprocess.run([GEOSURGE, "eval", "--set", f"output_dir={tmp_path}/run", "--set",
                          f"tracking.tracking_uri=sqlite:///{tmp_path}/runs/demo/mlflow.db"],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.startswith(f"geosurge eval: error: no MLflow database at {tmp_path}/runs/demo/mlflow.db")
    assert len(out.stderr.splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_plan_and_locate_text_are_wired_to_their_modules():
    out = subprocess.run([GEOSURGE, "plan", "--gpus", "4", "--set", "train.epochs=1"], check=False,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^total\s+\d", out.stdout, flags=re.MULTILINE)
    out = subprocess.run([GEOSURGE, "locate-text", "--help"], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "--clip-model" in out.stdout and "TEXT" in out.stdout


@pytest.mark.slow
def test_ingest_puts_a_manifest_into_shards_with_geocells_built_from_it(tmp_path):
    from tests.workflows.workflow_helpers import ray_internal_lines

    synth = subprocess.run([GEOSURGE, "synth", str(tmp_path / "gw"), "--num-images", "12", "--image-size", "32",
                            "--quiet"], check=False, capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    settings = [f"data_root={tmp_path}/store", f"output_dir={tmp_path}/run", "ingest.segmenter=none",
                "ingest.image_size=32", "geocells.tau_max=[8, 4]", "geocells.tau_min=1"]
    out = subprocess.run([GEOSURGE, "ingest", str(tmp_path / "gw" / "manifest.parquet"),
                          *(a for kv in settings for a in ("--set", kv))],
                         check=False, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ingest: 12 in = 12 in shards + 0 quarantined" in out.stdout
    assert (tmp_path / "store" / "geocells.parquet").is_file() and (tmp_path / "store" / "ingest" / "shards").is_dir()
    assert not ray_internal_lines(out.stdout + out.stderr), out.stdout + out.stderr
