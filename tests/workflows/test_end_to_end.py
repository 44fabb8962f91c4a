"""End to end on this machine, every service real and on loopback, on a Ray cluster of one head and three worker
nodes (each its own `ray start` with its own temp dir: session, logs and copy of the job's code) that share nothing
but SeaweedFS (data, shards, the trained segmenter, checkpoints) and the MLflow server (runs, registry).

full_pipeline, whose training workers are spread over the nodes; after the first checkpoint reaches the bucket, a
node holding a training worker is lost (every one of its processes SIGKILLed) and Ray Train resumes on the others
from the bucket's checkpoint (first champion) → new imagery lands under incoming/ → retrain ingests only it,
fine-tunes from the champion's weights in the bucket, evaluates and promotes by the rule → a rerun after a crash
reuses its version and advances the watermark, so the next scheduled run finds nothing new.
"""

import json
import threading
import time
from collections import Counter

import psutil
import pytest

from geosurge import storage
from geosurge.config import GeoWorldConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.orchestration.retraining import Watermark, find_new_manifests
from tests.train.train_helpers import a_checkpoint_is_registered
from tests.workflows.ray_nodes import RayCluster
from tests.workflows.workflow_helpers import SMALL_RUN

EPOCHS = 4  # room to lose a node after the first checkpoint and still have epochs to resume
E2E_RUN = [
    *SMALL_RUN,
    f"train.epochs={EPOCHS}",
    "train.early_stopping_patience=null",
    "train.placement_strategy=SPREAD",  # one training worker per node
    "train.max_failures=1",
    "train.log_every_n_steps=2",
    "retrain.epochs=1",
    "segmenter.epochs=2",  # ingest.segmenter=geoworld (the default): a SegFormer trained in the pipeline
]
NEW_IMAGES = 60
MODEL = "geosurge_e2e"


def lose_a_training_node(cluster: RayCluster, checkpoints: str, s3, job_over: threading.Event, lost: dict) -> None:
    """Once a checkpoint is registered in the bucket, SIGKILL every process of a node holding a training worker
    (a machine lost, not one shut down); `lost` says where the workers ran and which node went."""
    while not a_checkpoint_is_registered(checkpoints, s3):
        if job_over.wait(0.2):
            return
    workers = cluster.train_workers()
    lost["placement"] = sorted(cluster.nodes.index(n) for n in workers.values())
    lost["cwds"] = [(psutil.Process(pid).cwd(), node.temp_dir) for pid, node in workers.items()]
    victim = next(iter(workers.values()))
    lost["node"] = cluster.nodes.index(victim)
    victim.kill()


@pytest.mark.slow
def test_pipeline_on_a_cluster_that_loses_a_node_then_scheduled_retraining(s3, mlflow_server, ray_cluster,
                                                                          submit_job, tmp_path):
    address, env = ray_cluster.address, ray_cluster.env
    # S3 credentials reach the jobs through the standard AWS environment, never through the config
    bucket_root = f"s3://e2e-{time.time_ns()}/store"
    output_dir = tmp_path / "run"
    settings = [*E2E_RUN, "run_name=e2e", f"output_dir={output_dir}", f"data_root={bucket_root}",
                f"s3.endpoint_url={s3.endpoint_url}", f"s3.region={s3.region}",
                # the MLflow server is shared by the session: a model and experiment of this test's own
                f"tracking.tracking_uri={mlflow_server}", f"tracking.registered_model={MODEL}",
                f"tracking.experiment={MODEL}"]
    args = [arg for kv in settings for arg in ("--set", kv)]
    started = time.time()

    job_over, lost = threading.Event(), {}
    killer = threading.Thread(target=lose_a_training_node, daemon=True,
                              args=(ray_cluster, f"{bucket_root}/checkpoints", s3, job_over, lost))
    killer.start()
    try:
        code, log = submit_job(address, env, "workflows/full_pipeline.py", args)
    finally:
        job_over.set()
        killer.join(timeout=30)
    assert code == 0, log[-6000:]
    assert "ingest: 240 in = 240 in shards + 0 quarantined" in log
    assert "no champion yet: version 1 becomes champion" in log
    pipeline_s = time.time() - started
    assert "node" in lost, f"no node was lost: no checkpoint reached the bucket during the run\n{log[-6000:]}"
    # the two training workers ran on two nodes, each in that node's own copy of the job's code
    assert len(lost["placement"]) == 2 and len(set(lost["placement"])) == 2, lost
    for cwd, node_temp_dir in lost["cwds"]:
        assert cwd.startswith(node_temp_dir), (cwd, node_temp_dir)
    # the driver's machine kept only its own logs and the summary: nothing a node needs lives there
    assert {p.name for p in output_dir.iterdir()} <= {"logs", "summary.json"}, sorted(output_dir.iterdir())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    v1 = client.get_model_version_by_alias(MODEL, "champion")
    assert v1.version == "1"
    # registered from the bucket: the checkpoints and the trained segmenter live beside the data
    assert v1.tags["geosurge.checkpoint_uri"].startswith(f"{bucket_root}/checkpoints/e2e-")
    run = client.get_run(v1.run_id)
    assert run.data.tags["segmenter"].startswith(f"{bucket_root}/segmenter/")
    # resumed from the bucket's checkpoint after the loss, not restarted: every epoch and step logged once
    assert run.data.tags["train.resume_count"] == "1" and int(run.data.tags["train.resumed_after_epoch"]) < EPOCHS - 1
    for key in ("train_loss", "val_loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(EPOCHS))
    steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train_loss_step"))
    assert steps and max(steps.values()) == 1, steps

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
    # the run links to its checkpoint, beside the data in the bucket (train.storage_path unset)
    assert v2.tags["geosurge.checkpoint_uri"].startswith(f"{bucket_root}/checkpoints/")
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

    # ... and saved the watermark over the new manifest: the next scheduled run finds nothing new (that run, and one
    # that finds the lock held, are tests/orchestration/test_retrain.py's, in-process)
    watermark = Watermark.load(f"{bucket_root}/retrain/watermark.json", s3)
    assert find_new_manifests(f"{bucket_root}/incoming", watermark, s3) == [], watermark

    print(f"\nend to end: full pipeline job {pipeline_s:.0f} s (training workers on nodes {lost['placement']}, "
          f"node {lost['node']} lost), retrain job {retrain_s:.0f} s, whole test {time.time() - started:.0f} s; "
          f"aliases {dict(aliases)}")
