"""The Ray Train + DeepSpeed trainer on a small GeoWorld: real Ray workers, real DeepSpeed (ZeRO-2 and ZeRO-3 over
two workers; gloo), MLflow on a real server. Training learns, the registered version serves the trained weights and
no S3 key leaves the driver; ZeRO-3 consolidates to the engine's model; the split, the lr schedule and the patience
rule. Early stopping on the best checkpoint, checkpoints on S3 and fine-tuning from given weights are checked on runs
that also meet faults: test_fault_tolerance.py."""

import json
import uuid
from pathlib import Path

import mlflow
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.train.torch import TorchTrainer

from geosurge.config import TrainConfig, load_config
from geosurge.data.shards import split_batches, to_model_batch
from geosurge.eval.evaluate import evaluate_split
from geosurge.models import create_model
from geosurge.segmentation.segmenter import Segmenter
from geosurge.tracking.registry import load_locator, log_and_register
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import (
    TrainState,
    build_trainer,
    checkpoint_root,
    consolidated_state_dict,
    data_config,
    train,
    unshared_checkpoints_warning,
)
from tests.tracking import registry_helpers
from tests.train.train_helpers import small_run_config


def test_patience_counts_epochs_without_a_gain_beyond_min_delta():
    state = TrainState()
    # epoch 1 is a new best by less than min_delta: the best moves, the patience count does not restart
    for epoch, loss in enumerate([5.0, 4.995, 4.99, 4.0, 4.5, 4.2]):
        state.update(loss, epoch, patience=3, min_delta=0.05)
        if state.stopped_early:
            break
    assert (state.best_epoch, state.best_val_loss) == (3, 4.0)
    assert state.epoch == -1 and state.epochs_without_improvement == 2 and not state.stopped_early
    state.update(4.1, 6, patience=3, min_delta=0.05)
    assert state.stopped_early and state.best_epoch == 3
    never = TrainState()
    for epoch in range(10):
        never.update(1.0, epoch, patience=None, min_delta=0.0)
    assert not never.stopped_early


def test_the_lr_warms_up_linearly_then_decays_by_epoch():
    from geosurge.train.worker import scheduled_lr

    tc = TrainConfig(lr=1e-3, lr_decay=0.5, warmup_steps=3)
    assert [scheduled_lr(tc, 0, step) for step in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert scheduled_lr(tc, 2, 40) == pytest.approx(2.5e-4)
    assert scheduled_lr(TrainConfig(lr=1e-3, warmup_steps=0), 0, 0) == 1e-3
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)


def assert_no_key(where: str, data: bytes | str, *keys: str) -> None:
    data = data if isinstance(data, bytes) else data.encode()
    assert not any(key.encode() in data for key in keys), f"an S3 key in {where}"


@pytest.mark.slow
def test_training_learns_the_registered_version_serves_the_trained_weights_and_no_key_leaves_the_driver(
        small_shards, mlflow_server, tmp_path, monkeypatch):
    """lr > 0 on the small fixed GeoWorld: the train loss falls, the val GeoScore beats the untrained model's, and
    the version registered (real MLflow server) from the best checkpoint serves exactly its consolidated weights.

    The config holds S3 keys (this data needs none), and they never leave the driver: not in what Ray ships to its
    controller and workers (the trainer, its loop config and datasets), not in the train-run state behind the Ray
    dashboard's train-run API, not in Ray Train's storage, not in the MLflow params, the logged `config.yaml` or the
    registered model's files."""
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the state the dashboard's train-run API serves
    keys = (f"KEYID{uuid.uuid4().hex}", f"SECRET{uuid.uuid4().hex}")
    # a 2-step warm-up: the default's 25 would cover most of this run's ~30 steps
    config = small_run_config(tmp_path, "run_name=learns", "train.epochs=3", "train.lr=1e-3", "train.warmup_steps=2",
                              "train.early_stopping_patience=null", "ingest.image_size=32", "ingest.label_grid=4",
                              f"tracking.tracking_uri={mlflow_server}", f"tracking.experiment=learns-{tmp_path.name}",
                              f"tracking.registered_model=learns-{tmp_path.name}", f"s3.access_key_id={keys[0]}",
                              f"s3.secret_access_key={keys[1]}")
    trainer, _ = build_trainer(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    assert_no_key("the trainer Ray ships (loop config, datasets)", ray.cloudpickle.dumps(trainer), *keys)
    torch.manual_seed(config.train.seed)  # what every worker builds before its first step
    untrained = create_model(config.model, small_shards.hierarchy)
    initial = {k: v.detach().clone() for k, v in untrained.state_dict().items()}
    with registry_helpers.tracking_uri(mlflow_server):
        run = start_mlflow_run(config)
        try:
            result = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri,
                           run.info.run_id)
            trained_state = consolidated_state_dict(result.checkpoint_path)
            model_uri, _ = log_and_register(trained_state, config, small_shards.hierarchy,
                                            Segmenter("random", config.ingest.label_grid),
                                            registry_helpers.photo_bytes(0))
        finally:
            mlflow.end_run()

    client = MlflowClient(mlflow_server)
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.95, losses
    trained = create_model(config.model, small_shards.hierarchy)
    trained.load_state_dict(trained_state)  # strict: every key of the model, nothing else
    changed = [k for k in initial if not torch.equal(initial[k], trained_state[k])]
    assert len(changed) > len(initial) // 2, f"only {changed} moved"
    before, _ = evaluate_split(untrained, small_shards.uri, "val", k=1)
    after, _ = evaluate_split(trained, small_shards.uri, "val", k=1)
    assert after["geoscore"] > before["geoscore"] + 100, (before, after)

    served = load_locator(model_uri, mlflow_server).model.state_dict()
    assert served.keys() == trained_state.keys()
    assert all(torch.equal(served[k], trained_state[k]) for k in served)

    params = client.get_run(run.info.run_id).data.params
    assert params["s3.secret_access_key"] == "<hidden>"
    assert_no_key("MLflow params", json.dumps(params), *keys)
    run_files = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "run_artifacts")))
    assert (run_files / "config.yaml").is_file()
    model_files = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "registered"),
                                                           tracking_uri=mlflow_server))
    storage = tmp_path / "ray_results" / config.run_name  # checkpoints and Ray Train's own state
    files = [p for folder in (run_files, model_files, storage) for p in folder.rglob("*") if p.is_file()]
    assert any(p.is_relative_to(model_files) for p in files) and any(p.is_relative_to(storage) for p in files)
    for path in files:
        assert_no_key(str(path), path.read_bytes(), *keys)

    from ray.train.v2._internal.state.state_actor import get_state_actor

    train_runs = ray.get(get_state_actor().get_train_runs.remote()).values()
    ours = [r.model_dump_json() for r in train_runs if r.name == config.run_name]
    assert ours and small_shards.hierarchy_uri in ours[0]  # the loop config is shown, without the keys
    assert_no_key("the dashboard's train-run state", "".join(ours), *keys)


@pytest.mark.slow
def test_zero3_partitions_over_two_workers_and_consolidates_to_the_engines_model(small_shards, tmp_path):
    """The production row (ZeRO-3, several workers): each rank holds a part of every parameter; the merged
    checkpoint consolidates to a full state dict that loads strictly and computes what the engine computed."""
    # threshold 0: every parameter partitioned (DeepSpeed's default keeps each of this tiny model's whole)
    config = small_run_config(tmp_path, "run_name=zero3", "train.zero_stage=3", "train.num_workers=2",
                              "train.zero3_param_persistence_threshold=0", "train.epochs=1", "train.lr=1e-3",
                              "train.early_stopping_patience=null")
    torch.manual_seed(config.train.seed)
    initial = create_model(config.model, small_shards.hierarchy).state_dict()
    probe = next(split_batches(small_shards.uri, "test", batch_size=8))
    probe_in, probe_out = tmp_path / "probe_in.pt", tmp_path / "probe_out.pt"
    batch = {k: torch.from_numpy(v) for k, v in to_model_batch(probe, small_shards.hierarchy).items()}
    torch.save(batch, probe_in)

    def train_then_probe(loop_config):
        # the production worker, then the engine's own forward on fixed images (every rank: ZeRO-3 gathers)
        import ray.train
        import torch

        from geosurge.train.worker import TrainWorker

        worker = TrainWorker(loop_config)
        worker.fit()
        # the elements this rank holds: its ZeRO-3 slice of each parameter (a parameter kept whole: all of it)
        partitioned = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                          for p in worker.engine.module.parameters())
        worker.engine.eval()
        with torch.no_grad():
            out = worker.engine(torch.load(loop_config["probe_in"]))
        if ray.train.get_context().get_world_rank() == 0:
            torch.save({"embedding": out["embedding"], "loss": out["loss"], "local_numel": partitioned,
                        "world_size": ray.train.get_context().get_world_size()}, loop_config["probe_out"])

    built, _ = build_trainer(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    result = TorchTrainer(train_then_probe, scaling_config=built.scaling_config, run_config=built.run_config,
                          datasets=built.datasets,
                          train_loop_config={**built.train_loop_config, "probe_in": str(probe_in),
                                             "probe_out": str(probe_out)}).fit()
    engine = torch.load(probe_out)
    full_numel = sum(v.numel() for v in initial.values())
    assert engine["world_size"] == 2 and engine["local_numel"] < 0.6 * full_numel  # really partitioned

    consolidated = consolidated_state_dict(result.checkpoint.path)
    model = create_model(config.model, small_shards.hierarchy)
    model.load_state_dict(consolidated)  # strict: every key, every shape
    assert all(consolidated[k].shape == initial[k].shape for k in initial)
    changed = [k for k in initial if not torch.equal(initial[k], consolidated[k])]
    assert len(changed) > len(initial) // 2, f"only {changed} moved"
    model.eval()
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(out["embedding"], engine["embedding"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"], engine["loss"], rtol=1e-4, atol=1e-5)


def _rows_per_worker(dataset, config) -> list[list[int]]:
    """Each of two workers' rows of `dataset`, split as Ray Train splits it under `config`: both parts consumed at once,
    each by its own Ray task, as the workers do."""
    import ray

    @ray.remote(num_cpus=0)
    def consume(part) -> list[int]:
        return [int(i) for batch in part.iter_batches(batch_size=None) for i in batch["id"]]

    parts = config.configure({"train": dataset}, world_size=2, worker_handles=None, worker_node_ids=None)
    return ray.get([consume.remote(part["train"]) for part in parts])


def test_each_worker_gets_the_same_rows_on_every_run(small_shards, tmp_path):
    """train.deterministic_split (the default): the blocks of a split reach the workers in the shards' order, so every
    run deals the same rows to the same worker, however the read tasks race (here: each sleeps a random while)."""
    import random
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    for f in range(6):
        pq.write_table(pa.table({"id": list(range(f * 10, f * 10 + 10))}), tmp_path / f"part-{f}.parquet")

    def late(batch):
        time.sleep(random.uniform(0, 0.4))
        return batch

    def split_rows():
        dataset = ray.data.read_parquet(str(tmp_path), override_num_blocks=6).map_batches(late, batch_size=None)
        return _rows_per_worker(dataset, data_config(deterministic=True))

    first = split_rows()
    assert sorted(first[0] + first[1]) == list(range(60)) and len(first[0]) == len(first[1]) == 30
    assert all(split_rows() == first for _ in range(3))
    built, _ = build_trainer(small_run_config(tmp_path), small_shards.uri, small_shards.hierarchy,
                             small_shards.hierarchy_uri)
    assert built.data_config._resolve_execution_options("train").preserve_order  # what Ray Train applies to the split


def test_a_local_checkpoint_folder_on_a_cluster_of_several_nodes_is_warned_about(tmp_path):
    on_s3 = load_config(overrides=[f"output_dir={tmp_path}", "data_root=s3://bucket/store"])
    local = load_config(overrides=[f"output_dir={tmp_path}"])
    assert checkpoint_root(on_s3) == "s3://bucket/store/checkpoints"  # beside the data: every node sees it
    assert checkpoint_root(local) == str(tmp_path / "ray_results")
    assert unshared_checkpoints_warning(checkpoint_root(on_s3), nodes=4) is None
    assert unshared_checkpoints_warning(checkpoint_root(local), nodes=1) is None  # one machine: its own disk is fine
    warning = unshared_checkpoints_warning(checkpoint_root(local), nodes=4)
    assert warning and "4 nodes" in warning and "train.storage_path=s3://" in warning
