"""A registered version served over HTTP by MLflow's own scoring server (`mlflow models serve`), as a consumer
that speaks JSON calls it: images as base64 text in MLflow's `inputs` format, `params` for k."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import end_process_group, free_port
from tests.tracking.registry_helpers import (
    photo_bytes,
    register_tiny,
    tiny_config,
    tracking_uri,
)

REGISTERED = "geosurge_serving_test"


def post_json(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.slow
def test_models_serve_answers_a_scoring_request(mlflow_server, tmp_path):
    import mlflow

    config = tiny_config(tmp_path / "run", mlflow_server, [f"tracking.registered_model={REGISTERED}"])
    _, version = register_tiny(config)

    started = time.time()
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{REGISTERED}/{version}",
             "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # the scoring server starts `uvicorn` through the shell: the venv's bin must be on PATH, as when activated
            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        )
        try:
            deadline = time.time() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as ping:
                        if ping.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow models serve did not come up: {(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.5)
            ready_s = time.time() - started

            photos = [photo_bytes(21), photo_bytes(22)]
            status, answer = post_json(f"http://127.0.0.1:{port}/invocations", {
                "inputs": [{"image": base64.b64encode(p).decode("ascii")} for p in photos],
                "params": {"k": 3},
            })
            assert status == 200, answer
            predictions = answer["predictions"]
            assert len(predictions) == 2
            for prediction in predictions:
                assert len(prediction["top_k"]) == 3
                for c in prediction["top_k"]:
                    assert -90 <= c["lat"] <= 90 and -180 <= c["lon"] <= 180 and 0 < c["score"] <= 1
                    assert c["place"]["name"] and len(c["place"]["country_code"]) == 2
            # the same answer as the registered model loaded in-process
            with tracking_uri(mlflow_server):
                local = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/{version}").predict(photos, params={"k": 3})
            for served, expected in zip(predictions, local):
                assert [(c["lat"], c["lon"], c["cell"], c["place"]["name"]) for c in served["top_k"]] == \
                    [(c.lat, c.lon, c.cell, c.place.name) for c in expected.top_k]

            # a request that is not an image is the client's fault, and says which one
            status, answer = post_json(f"http://127.0.0.1:{port}/invocations", {
                "inputs": [{"image": base64.b64encode(photos[0]).decode()}, {"image": base64.b64encode(b"nope").decode()}],
            })
            assert status == 400 and "image 1" in answer.get("message", ""), answer
        finally:
            end_process_group(proc)
    print(f"\nmlflow models serve: ready {ready_s:.1f} s after start; whole test {time.time() - started:.1f} s "
          f"after registration")
