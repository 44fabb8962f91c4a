"""The MLflow Model Registry: a registered version is the contract with consumers (geosurge/tracking/registry.py).
It carries the whole `geosurge` package it was trained with (`code_paths`): a consumer in a fresh process where
geosurge is NOT installed loads it from the registry and gets predictions."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from geosurge.errors import UserError
from geosurge.models import create_model
from tests.models.model_helpers import small_hierarchy
from tests.tracking.registry_helpers import photo_bytes, register_tiny, tiny_config

# A fresh interpreter in which the geosurge installed in this venv (an editable install's import hook) and the
# checkout are invisible: every geosurge module it then imports must come from the registered model itself.
CONSUMER = textwrap.dedent("""
    import json, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path[:] = [p for p in sys.path if p not in ("", sys.argv[3])]
    try:
        import geosurge
        raise SystemExit(f"geosurge is importable before the model is loaded: {geosurge.__file__}")
    except ModuleNotFoundError:
        pass
    import mlflow
    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pyfunc.load_model(sys.argv[2])
    (prediction,) = model.predict([open(sys.argv[4], "rb").read()], params={"k": 2})
    import geosurge.serving.locator, geosurge.orchestration.pipeline
    print(json.dumps({"geosurge": geosurge.__file__, "top": prediction.top_k[0].model_dump(),
                      "k": len(prediction.top_k)}))
""")


# ------------------------------------------------------------------------------------------------------------
# The MLflow Model Registry: a registered version is the contract with consumers (geosurge/tracking/registry.py).

REGISTERED = "geosurge_registry_test"


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):
    """A tiny random-init GeoSURGE registered on the real MLflow server: (tracking URI, version, loaded pyfunc)."""
    import mlflow

    from tests.tracking.registry_helpers import register_tiny, tiny_config, tracking_uri

    config = tiny_config(tmp_path_factory.mktemp("registry"), mlflow_server,
                         [f"tracking.registered_model={REGISTERED}", "eval.top_k=4"])
    model_uri, version = register_tiny(config)
    assert model_uri == f"models:/{REGISTERED}@challenger"
    with tracking_uri(mlflow_server):
        model = mlflow.pyfunc.load_model(model_uri)
    return mlflow_server, version, model


def test_new_version_gets_the_alias_and_a_typed_signature(registered, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.types.schema import Object

    from tests.tracking.registry_helpers import tracking_uri

    uri, version, model = registered
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias(REGISTERED, "challenger").version == version
    signature = model.metadata.signature
    (image_input,) = signature.inputs.inputs
    assert isinstance(image_input.type, Object)
    fields = {p.name: (p.dtype.name, p.required) for p in image_input.type.properties}
    assert fields == {"image": ("binary", False), "uri": ("string", False)}
    (output,) = signature.outputs.inputs
    (top_k,) = output.type.properties
    candidate = {p.name for p in top_k.dtype.dtype.properties}
    assert top_k.name == "top_k" and candidate == {"lat", "lon", "score", "cell", "place"}
    assert {p.name: p.default for p in signature.params.params} == {"k": 4}  # eval.top_k of the run's config
    # what a consumer needs travels with the version: weights, hierarchy, config, segmenter, the geosurge code
    bundle = Path(model._model_impl.context.artifacts["bundle"])
    assert {"model.pt", "geocells.parquet", "config.yaml", "segmenter"} <= {f.name for f in bundle.iterdir()}
    with tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED}/{version}", dst_path=str(tmp_path)))
    assert (local / "code" / "geosurge" / "tracking" / "registry.py").is_file() and (local / "MLmodel").is_file()


def test_every_input_form_gives_the_same_top_k_with_places(registered, tmp_path):
    import h3
    import pandas as pd

    from geosurge.serving import ImageInput
    from tests.tracking.registry_helpers import photo_bytes

    _, _, model = registered
    photos = [photo_bytes(1), photo_bytes(2)]
    (tmp_path / "b.jpg").write_bytes(photos[1])

    from_bytes = model.predict(photos)  # the shorthand: a list of encoded images
    assert len(from_bytes) == 2
    for prediction in from_bytes:
        assert len(prediction.top_k) == 4  # no k given: the signature's default, eval.top_k of the run
        assert prediction.score == sorted(prediction.score, reverse=True)
        for c in prediction.top_k:
            assert -90 <= c.lat <= 90 and -180 <= c.lon <= 180 and 0 < c.score <= 1
            assert h3.is_valid_cell(c.cell)
            assert c.place.name and len(c.place.country_code) == 2 and c.place.distance_km >= 0
    assert from_bytes[0].top_k != from_bytes[1].top_k  # different photos, different answers

    assert_same(model.predict(pd.DataFrame({"image": photos, "image_id": ["a", "b"]})), from_bytes)  # extras ignored
    # a uri row: the registered model reads none unless its serving config allows it (the owner's API reads local)
    table = pd.DataFrame({"image_id": ["a", "b"], "image": [photos[0], None], "uri": [None, str(tmp_path / "b.jpg")]})
    with pytest.raises(Exception, match="uri refused"):
        model.predict(table)
    with pytest.raises(Exception, match="uri refused"):
        model.predict([{"uri": str(tmp_path / "b.jpg")}])  # records, as JSON sends them
    locator = model.unwrap_python_model().locator
    assert_same(locator.predict_inputs([ImageInput(image=photos[0]), ImageInput(uri=str(tmp_path / "b.jpg"))],
                                       4, trusted=True), from_bytes)
    top2 = model.predict(photos, params={"k": 2})
    assert [len(p.top_k) for p in top2] == [2, 2]
    assert_same(top2, [p.model_copy(update={"top_k": p.top_k[:2]}) for p in from_bytes])


def assert_same(predictions, expected):
    """Same places in the same order; scores equal up to float noise (batches of other sizes round differently)."""
    assert len(predictions) == len(expected)
    for got, want in zip(predictions, expected):
        assert [(c.cell, c.lat, c.lon, c.place) for c in got.top_k] == [(c.cell, c.lat, c.lon, c.place) for c in want.top_k]
        assert got.score == pytest.approx(want.score, rel=1e-4)


def test_the_eval_job_reaches_the_locator(registered):
    import mlflow

    from tests.tracking.registry_helpers import photo_bytes, tracking_uri

    uri, version, model = registered
    with tracking_uri(uri):
        locator = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/{version}").unwrap_python_model().locator
    (prediction,) = locator.predict_bytes([photo_bytes(1)], 3)
    assert prediction.lat == model.predict([photo_bytes(1)])[0].lat[:3]  # the column views the eval job reads
    assert len(prediction.lon) == len(prediction.score) == len(prediction.cell) == 3
    images = np.zeros((2, locator.spec.size, locator.spec.size, 3), np.uint8)
    out = locator.predict_arrays(images, k=3)
    assert out["lat"].shape == out["lon"].shape == out["score"].shape == (2, 3)


def test_bad_inputs_are_refused_with_the_reason(registered, tmp_path):
    from mlflow.exceptions import MlflowException

    from tests.tracking.registry_helpers import photo_bytes

    _, _, model = registered
    cases = [
        ([photo_bytes(1), b"GIF89a but not really"], "image 1"),  # names the offending image
        ([str(tmp_path / "missing.jpg")], "uri refused: not an allowed image source"),  # serving reads no paths
        ([b""], "empty"),
        ([{"image": photo_bytes(1), "uri": "x.jpg"}], "exactly one"),
        ([{"image": "not base64!"}], "base64"),
        ([42], "ImageInput"),
    ]
    for model_input, expected in cases:
        with pytest.raises(MlflowException, match=expected):
            model.predict(model_input)
    with pytest.raises(MlflowException, match="at least 1"):
        model.predict([photo_bytes(1)], params={"k": 0})


def test_uri_inputs_from_s3_and_http(s3, tmp_path, monkeypatch):
    """URIs are read with the model's own S3 settings (its logged config, credentials redacted there and taken
    from the AWS chain) and over HTTP, and give the same answer as the bytes."""
    import dataclasses
    import functools
    import http.server
    import threading

    from geosurge.segmentation.segmenter import Segmenter
    from geosurge.serving import GeoLocator, ImageInput, write_bundle
    from geosurge.storage import S3Config, write_bytes
    from tests.tracking.registry_helpers import photo_bytes, tiny_config

    config = tiny_config(tmp_path, "sqlite:///unused.db")
    config.s3 = S3Config(endpoint_url=s3.endpoint_url, region=s3.region, access_key_id=s3.access_key_id,
                         secret_access_key=s3.secret_access_key)
    hierarchy = small_hierarchy()
    torch.manual_seed(0)
    state = create_model(config.model, hierarchy).state_dict()
    bundle = write_bundle(tmp_path / "bundle", state, config, hierarchy, Segmenter("random", config.ingest.label_grid))
    assert "testsecret" not in (bundle / "config.yaml").read_text()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    locator = GeoLocator.from_artifacts(bundle)
    assert dataclasses.asdict(locator.config.s3)["access_key_id"] is None

    photo = photo_bytes(7)
    write_bytes("s3://registry-test/photos/p.jpg", photo, s3)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "p.jpg").write_bytes(photo)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/p.jpg"
        from_uris = locator.predict_inputs([ImageInput(uri="s3://registry-test/photos/p.jpg"), ImageInput(uri=url)],
                                           trusted=True)  # the owner's own reads
        with pytest.raises(Exception, match="not_found"):
            locator.predict_inputs([ImageInput(uri=url.replace("p.jpg", "gone.jpg"))], trusted=True)
    finally:
        server.shutdown()
    expected = locator.predict_bytes([photo])[0]
    assert_same(from_uris, [expected, expected])



def test_a_registered_model_loads_and_predicts_in_a_fresh_process_without_geosurge_installed(tmp_path):
    config = tiny_config(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, version = register_tiny(config, run_name="fresh-process")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes(3))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    result = subprocess.run(
        [sys.executable, str(script), config.resolved_tracking_uri, f"models:/{config.tracking.registered_model}/{version}",
         repo, str(photo)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert not out["geosurge"].startswith(repo), out["geosurge"]  # the model's own copy, not the checkout
    assert out["k"] == 2
    assert -90 <= out["top"]["lat"] <= 90 and -180 <= out["top"]["lon"] <= 180
    assert out["top"]["place"]["country_code"]


def test_registering_again_with_the_same_key_reuses_the_version_and_lineage_is_checked(mlflow_server, tmp_path):
    """A job killed after registering and rerun in the same run registers nothing new (14.9); eval and retraining
    refuse a version this pipeline did not register (14.14)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from geosurge.segmentation.segmenter import Segmenter
    from geosurge.tracking.registry import check_lineage, log_and_register
    from geosurge.tracking.runs import start_mlflow_run
    from tests.tracking.registry_helpers import tracking_uri

    name = "geosurge_idempotent_test"
    config = tiny_config(tmp_path, mlflow_server, [f"tracking.registered_model={name}", f"data_root={tmp_path}/s"])
    hierarchy = small_hierarchy()
    state_dict = create_model(config.model, hierarchy).state_dict()
    segmenter = Segmenter("random", config.ingest.label_grid)

    def register(key: str) -> str:
        return log_and_register(state_dict, config, hierarchy, segmenter, photo_bytes(0), idempotency_key=key,
                                tags={"retrain.parent_version": "7"})[1]

    with tracking_uri(mlflow_server):
        run = start_mlflow_run(config)
        try:
            first = register("manifests-abc:run-1")
            rerun = register("manifests-abc:run-1")  # the same work again (a rerun after a crash)
            other = register("manifests-def:run-1")
        finally:
            mlflow.end_run()
        client = MlflowClient()
        assert rerun == first and other != first
        assert sorted(v.version for v in client.search_model_versions(f"name='{name}'")) == sorted([first, other])
        v = client.get_model_version(name, first)
        assert v.tags["geosurge.source_run_id"] == run.info.run_id == v.run_id
        assert v.tags["retrain.parent_version"] == "7"  # set with the version, not after it
        check_lineage(name, first)
        check_lineage(name, other)
        # a version registered by hand from the same run's model: no lineage tags
        foreign = mlflow.register_model(v.source, name)
        with pytest.raises(UserError, match="not registered by this pipeline: it has no geosurge.registered_by"):
            check_lineage(name, foreign.version)
        # one that copies the tags but not the run's record of it
        client.set_model_version_tag(name, foreign.version, "geosurge.registered_by", "geosurge pipeline")
        client.set_model_version_tag(name, foreign.version, "geosurge.source_run_id", v.run_id)
        with pytest.raises(UserError, match="does not name it"):
            check_lineage(name, foreign.version)
