"""A registered version served over HTTP by MLflow's own scoring server (`mlflow models serve`), as a consumer
that speaks JSON calls it: images as base64 text in MLflow's `inputs` format, `params` for k."""

import base64
import contextlib
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
    with served(f"models:/{REGISTERED}/{version}", mlflow_server, tmp_path / "serve.log") as url:
        ready_s = time.time() - started
        photos = [photo_bytes(21), photo_bytes(22)]
        status, answer = post_json(f"{url}/invocations", {
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
        for answered, expected in zip(predictions, local):
            assert [(c["lat"], c["lon"], c["cell"], c["place"]["name"]) for c in answered["top_k"]] == \
                [(c.lat, c.lon, c.cell, c.place.name) for c in expected.top_k]

        # a request that is not an image is the client's fault, and says which one
        status, answer = post_json(f"{url}/invocations", {
            "inputs": [{"image": base64.b64encode(photos[0]).decode()}, {"image": base64.b64encode(b"nope").decode()}],
        })
        assert status == 400 and "image 1" in answer.get("message", ""), answer
    print(f"\nmlflow models serve: ready {ready_s:.1f} s after start; whole test {time.time() - started:.1f} s "
          f"after registration")


@contextlib.contextmanager
def served(model_uri: str, tracking: str, log_path: Path, env: dict[str, str] | None = None):
    """`mlflow models serve` on a free loopback port, up and answering /ping; yields its base URL."""
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {}), "MLFLOW_TRACKING_URI": tracking,
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
                    pytest.fail(f"mlflow models serve did not come up: {log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            end_process_group(proc)


@pytest.mark.slow
def test_a_served_model_reads_only_what_its_serving_config_allows(mlflow_server, s3, http_folder, tmp_path):
    """The server reads no local file, no loopback address (even under an allowed prefix), no other bucket with its
    own credentials; every refusal says the same thing; oversize and bomb inputs are a 400 too_large."""
    from geosurge import storage
    from tests.data.test_images import palette_png

    secret = tmp_path / "private" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(photo_bytes(31))  # a real image: reading it would answer 200
    internal = http_folder(secret.parent)  # an internal web service on loopback
    storage.write_bytes("s3://allowed-imgs/photo.jpg", photo_bytes(32), s3)
    storage.write_bytes("s3://private-bucket/photo.jpg", photo_bytes(33), s3)
    storage.write_bytes("s3://allowed-imgs/big.jpg", photo_bytes(34, (400, 400)) + b"\0" * 300_000, s3)
    config = tiny_config(tmp_path / "run", mlflow_server, [
        f"tracking.registered_model={REGISTERED}_uris", f"s3.endpoint_url={s3.endpoint_url}", f"s3.region={s3.region}",
        "serving.allow_uri_input=true", f"serving.allowed_uri_prefixes=[s3://allowed-imgs/, {internal}/]",
        "ingest.max_image_bytes=200000"])
    _, version = register_tiny(config)
    credentials = {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}

    with served(f"models:/{REGISTERED}_uris/{version}", mlflow_server, tmp_path / "serve.log", credentials) as url:
        def ask(item: dict) -> tuple[int, str]:
            status, answer = post_json(f"{url}/invocations", {"inputs": [item], "params": {"k": 1}})
            return status, answer.get("message", "") if status != 200 else answer

        status, answer = ask({"uri": "s3://allowed-imgs/photo.jpg"})
        assert status == 200 and len(answer["predictions"][0]["top_k"]) == 1, answer

        refused = [str(secret), f"file://{secret.parent}/../private/secret.jpg", f"{internal}/secret.jpg",
                   "s3://private-bucket/photo.jpg", "s3://allowed-imgs/../private-bucket/photo.jpg", "/dev/zero",
                   "http://169.254.169.254/latest/meta-data/"]
        messages = {}
        for uri in refused:
            status, message = ask({"uri": uri})
            assert status == 400, (uri, status, message)
            messages[uri] = message.rpartition("Error: ")[2]  # MLflow's own prefix echoes the request back
        assert len(set(messages.values())) == 1, messages  # nothing to tell a file from a port from a bucket
        assert storage.UriRefused.MESSAGE in next(iter(messages.values()))
        assert not any(str(tmp_path) in m or "private-bucket" in m for m in messages.values())

        status, message = ask({"uri": "s3://allowed-imgs/big.jpg"})  # over ingest.max_image_bytes, by its size
        assert status == 400 and "too_large" in message, message
        status, message = ask({"image": base64.b64encode(b"\xff\xd8" + b"\0" * 250_000).decode()})
        assert status == 400 and "too_large" in message, message
        status, message = ask({"image": base64.b64encode(palette_png(9_400, 9_400)).decode()})  # 88 M pixels
        assert status == 400 and "too_large" in message, message
    log = (tmp_path / "serve.log").read_text()
    assert "testsecret" not in log
