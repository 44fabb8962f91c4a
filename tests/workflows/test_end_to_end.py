"""End to end on this machine, every service real and on loopback: SeaweedFS S3 holds the data, an MLflow
server holds runs and the registry, a Ray head runs the jobs.

full_pipeline (first champion) → new imagery lands under incoming/ → retrain ingests only it, fine-tunes,
evaluates and promotes by the rule → a second retrain with nothing new does nothing → a retrain while another
holds the lock does nothing either.
"""

import json
import time

import pytest

from geosurge import storage
from geosurge.config import GeoWorldConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.orchestration.retraining import BucketLock
from tests.workflows.workflow_helpers import SMALL_RUN

E2E_RUN = [
    *SMALL_RUN,
    "retrain.epochs=1",
    "segmenter.epochs=2",  # ingest.segmenter=geoworld (the default): a SegFormer trained in the pipeline
]
NEW_IMAGES = 60
MODEL = "geosurge_e2e"


@pytest.mark.slow
def test_pipeline_then_scheduled_retraining_on_new_imagery(s3, mlflow_server, ray_head, submit_job, tmp_path):
    address, env = ray_head
    # S3 credentials reach the jobs through the standard AWS environment, never through the config
    bucket_root = f"s3://e2e-{time.time_ns()}/store"
    settings = [*E2E_RUN, "run_name=e2e", f"output_dir={tmp_path / 'run'}", f"data_root={bucket_root}",
                f"s3.endpoint_url={s3.endpoint_url}", f"s3.region={s3.region}",
                # the MLflow server is shared by the session: a model and experiment of this test's own
                f"tracking.tracking_uri={mlflow_server}", f"tracking.registered_model={MODEL}",
                f"tracking.experiment={MODEL}"]
    args = [arg for kv in settings for arg in ("--set", kv)]
    started = time.time()

    code, log = submit_job(address, env, "workflows/full_pipeline.py", args)
    assert code == 0, log[-6000:]
    assert "ingest: 240 in = 240 in shards + 0 quarantined" in log
    assert "no champion yet: version 1 becomes champion" in log
    pipeline_s = time.time() - started

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"

    # New imagery lands in the bucket: its own ids, its own place in incoming/.
    generate_geoworld(GeoWorldConfig(num_images=NEW_IMAGES, image_size=48, seed=7, id_prefix="new1"),
                      f"{bucket_root}/incoming/batch1", s3)

    t = time.time()
    code, log = submit_job(address, env, "workflows/retrain.py", args)
    assert code == 0, log[-6000:]
    retrain_s = time.time() - t
    assert "1 new manifest(s)" in log
    assert f"ingest: {NEW_IMAGES} in = {NEW_IMAGES} in shards + 0 quarantined" in log  # only the new imagery
    summary = json.loads(log[log.rindex("{\n  \"new_manifests\""):log.rindex("}") + 1])
    assert summary["parent_version"] == "1" and summary["new_version"] == "2"
    assert summary["new_rows_in"] == NEW_IMAGES

    v2 = client.get_model_version(MODEL, "2")
    assert v2.tags["retrain.parent_version"] == "1"
    assert v2.tags["geosurge.registered_by"] == "geosurge pipeline" and v2.tags["geosurge.source_run_id"] == v2.run_id
    assert v2.tags["geosurge.checkpoint_uri"].startswith(str(tmp_path))  # the run links to its checkpoint
    aliases = client.get_registered_model(MODEL).aliases
    assert aliases["challenger"] == "2"
    # the champion moved exactly when the metrics the eval run logged say it should (the rule, not the job's word)
    eval_runs = client.search_runs([client.get_experiment_by_name(MODEL).experiment_id],
                                   filter_string="tags.`eval.challenger_version` = '2'")
    assert len(eval_runs) == 1
    metrics = eval_runs[0].data.metrics
    challenger, champion = metrics["challenger.geoworld_test.geoscore"], metrics["champion.geoworld_test.geoscore"]
    assert metrics["decision.compared_images"] == metrics["decision.benchmark_images"] > 0  # every image read
    assert metrics["decision.challenger_value"] == pytest.approx(challenger, rel=1e-9)
    assert metrics["decision.champion_value"] == pytest.approx(champion, rel=1e-9)
    should_promote = challenger > champion + 0.0  # eval.min_improvement's default
    assert aliases["champion"] == ("2" if should_promote else "1")
    assert summary["promoted"] == should_promote
    assert eval_runs[0].data.tags["eval.decision"] == ("promote" if should_promote else "keep")
    assert eval_runs[0].data.tags["eval.previous_champion"] == "1"
    # shards now hold both batches side by side, each once
    shards = storage.resolve(f"{bucket_root}/ingest/shards", s3)
    import pyarrow.dataset as pads

    ids = pads.dataset(shards[1], filesystem=shards[0], format="parquet").to_table(columns=["image_id"]).column(0)
    assert len(ids) == 240 + NEW_IMAGES and len(set(ids.to_pylist())) == 240 + NEW_IMAGES

    # A run killed after registering (before the watermark moved) and submitted again: the watermark as it was
    # then, the version registered. The rerun reuses that version: no second one, the parent stays version 1.
    storage.resolve(f"{bucket_root}/retrain/watermark.json", s3)[0].delete_file(
        storage.resolve(f"{bucket_root}/retrain/watermark.json", s3)[1])
    code, log = submit_job(address, env, "workflows/retrain.py", args)
    assert code == 0, log[-4000:]
    assert "was registered for these manifests by an earlier attempt" in log, log[-4000:]
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 2
    assert client.get_model_version(MODEL, "2").tags["retrain.parent_version"] == "1"

    code, log = submit_job(address, env, "workflows/retrain.py", args)
    assert code == 0, log[-4000:]
    assert "nothing to do" in log
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 2

    # Another run holds the lock: this one must not proceed.
    generate_geoworld(GeoWorldConfig(num_images=20, image_size=48, seed=8, id_prefix="new2"),
                      f"{bucket_root}/incoming/batch2", s3)
    with BucketLock(f"{bucket_root}/retrain/lock.json", ttl_s=600, s3=s3):
        code, log = submit_job(address, env, "workflows/retrain.py", args)
    assert code != 0 and "another retraining run is in progress" in log, log[-3000:]
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 2

    print(f"\nend to end: full pipeline job {pipeline_s:.0f} s, retrain job {retrain_s:.0f} s, "
          f"whole test {time.time() - started:.0f} s; aliases {dict(aliases)}")
