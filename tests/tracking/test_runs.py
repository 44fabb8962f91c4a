"""MLflow side of restarts, against sqlite and a real `mlflow server`: a rerun of the same run name continues its
unfinished run, a finished one is never reopened, a crashed driver leaves its run FAILED, and the trainer's
metric writer never logs a (metric, step) twice."""

import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from geosurge.config import load_config
from geosurge.tracking.metrics import MlflowMetricWriter
from geosurge.tracking.runs import RUN_NAME_TAG, start_mlflow_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return request.getfixturevalue("mlflow_server")


def _config(tmp_path, tracking_uri, run_name, *overrides):
    # a distinct experiment per test: the server fixture is shared by the whole session
    return load_config(overrides=[f"output_dir={tmp_path}", f"run_name={run_name}",
                                  f"tracking.tracking_uri={tracking_uri}",
                                  f"tracking.experiment=restart-{tmp_path.name}", *overrides])


def test_a_rerun_continues_the_unfinished_run_of_its_name_and_never_a_finished_one(tmp_path, tracking_uri, capsys):
    config = _config(tmp_path, tracking_uri, "nightly", "train.epochs=8")
    first = start_mlflow_run(config).info.run_id
    mlflow.end_run("FAILED")
    other = start_mlflow_run(_config(tmp_path, tracking_uri, "other")).info.run_id  # another name: its own run
    mlflow.end_run("KILLED")

    again = start_mlflow_run(_config(tmp_path, tracking_uri, "nightly", "train.epochs=5")).info.run_id
    assert again == first and other != first
    assert f"continuing run {first}" in capsys.readouterr().out
    client = MlflowClient(tracking_uri)
    run = client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags[RUN_NAME_TAG] == "nightly" and run.data.tags["geosurge.resume_count"] == "1"
    # params are immutable in MLflow: the first value stays, the change is named
    assert run.data.params["train.epochs"] == "8" and run.data.tags["geosurge.changed_params"] == "train.epochs"
    mlflow.end_run()  # FINISHED: the next run of this name is a new one

    fresh = start_mlflow_run(config).info.run_id
    mlflow.end_run()
    assert fresh not in (first, other)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    assert len(client.search_runs([experiment.experiment_id])) == 3


def test_a_driver_that_crashes_leaves_its_run_failed_so_the_rerun_continues_it(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    crash = textwrap.dedent(f"""
        from geosurge.config import load_config
        from geosurge.tracking.runs import start_mlflow_run
        config = load_config(overrides=["output_dir={tmp_path}", "run_name=crashy",
                                        "tracking.tracking_uri={tracking_uri}"])
        print("RUN", start_mlflow_run(config).info.run_id, flush=True)
        raise RuntimeError("the driver fails")
    """)
    out = subprocess.run([sys.executable, "-c", crash], check=False, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 1 and "the driver fails" in out.stderr
    run_id = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("RUN"))
    # without the hook MLflow's atexit handler would have marked it FINISHED
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FAILED"
    config = load_config(overrides=[f"output_dir={tmp_path}", "run_name=crashy", f"tracking.tracking_uri={tracking_uri}"])
    assert start_mlflow_run(config).info.run_id == run_id
    mlflow.end_run()


def test_the_metric_writer_logs_each_step_once_across_restarts(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(f"writer-{tmp_path.name}")
    run_id = client.create_run(experiment_id).info.run_id
    first = MlflowMetricWriter(tracking_uri, run_id, ("loss",))
    assert first.write([("loss", 1.0 / s, s, 1000 + s) for s in (1, 2, 3, 4)]) == 4
    # a restarted worker replays steps 3-4 (its checkpoint was older than what reached MLflow) and goes on
    again = MlflowMetricWriter(tracking_uri, run_id, ("loss",))
    assert again.write([("loss", 9.0, s, 2000 + s) for s in (3, 4, 5, 6)]) == 2
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    assert {m.step: m.value for m in history}[3] == pytest.approx(1 / 3)  # the first write stands


def test_the_default_tracking_keeps_runs_and_artifacts_with_the_run_not_in_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's own default would put artifacts in ./mlruns here
    config = load_config(overrides=[f"output_dir={tmp_path / 'run'}", "run_name=local"])
    assert config.resolved_tracking_uri == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    run = start_mlflow_run(config)
    mlflow.log_text("x", "note.txt")
    mlflow.end_run()
    assert run.info.artifact_uri.startswith((tmp_path / "run" / "mlartifacts").as_uri())
    assert (tmp_path / "run" / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "run" / "mlartifacts").rglob("note.txt"))
