"""The Ray Train + DeepSpeed trainer end to end on a small GeoWorld: real Ray workers, real DeepSpeed (ZeRO-2 and
ZeRO-3 over two workers, ZeRO-0 on one; gloo), MLflow on sqlite or a real server, SeaweedFS for checkpoints on S3.
Training learns and the registered version serves the trained weights; validation every epoch, early stopping, the
best checkpoint, per-step metrics."""

from collections import Counter

import mlflow
import pytest
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
from tests.train.train_helpers import small_run_config, steps_per_epoch


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_training_logs_every_step_once_and_early_stops_on_the_best_checkpoint(small_shards, tmp_path):
    # lr 0: the weights never move, so the val loss never gains on epoch 0 by more than min_delta (it only moves
    # by float rounding) and the run must stop after `patience` more epochs.
    config = small_run_config(tmp_path, "run_name=early", "train.epochs=5", "train.lr=0.0",
                              "train.early_stopping_patience=1", "train.early_stopping_min_delta=0.001")
    run = start_mlflow_run(config)
    result = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri, run.info.run_id)
    mlflow.end_run()

    per_epoch = steps_per_epoch(small_shards.rows["train"], config)
    assert result.metrics["final_epoch"] == 1 and result.metrics["final_stopped_early"]  # 1 epoch without gain
    assert result.metrics["final_global_step"] == 2 * per_epoch
    model = create_model(config.model, small_shards.hierarchy)
    model.load_state_dict(consolidated_state_dict(result.checkpoint_path))  # loadable, every key matches

    client = MlflowClient(config.resolved_tracking_uri)
    run_id = run.info.run_id
    val_history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in val_history] == [0, 1]
    best = min(val_history, key=lambda m: (m.value, -m.step))
    assert result.metrics["epoch"] == best.step  # the returned checkpoint is the lowest val loss's (later on a tie)
    assert result.metrics["val_loss"] == pytest.approx(best.value)
    assert (result.checkpoint_path == result.latest_checkpoint_path) == (best.step == 1)
    assert metric_steps(client, run_id, "train_loss") == [0, 1]
    step_log = metric_steps(client, run_id, "train_loss_step")
    assert step_log == list(range(2, 2 * per_epoch + 1, 2))  # every 2nd optimizer step, each once
    tags = client.get_run(run_id).data.tags
    assert tags["train.best_epoch"] == str(best.step) and tags["train.stopped_early"] == "True"

    # The same run name again: the stopped run stays stopped (no further epochs), same best checkpoint.
    again = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    assert again.metrics["final_global_step"] == 2 * per_epoch
    assert again.checkpoint_path == result.checkpoint_path
    assert Counter(metric_steps(client, run_id, "val_loss")) == Counter([0, 1])


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


@pytest.mark.slow
def test_training_learns_and_the_registered_version_serves_the_trained_weights(small_shards, mlflow_server, tmp_path):
    """lr > 0 on the small fixed GeoWorld: the train loss falls, the val GeoScore beats the untrained model's, and
    the version registered (real MLflow server) from the best checkpoint serves exactly its consolidated weights."""
    # a 2-step warm-up: the default's 25 would cover most of this run's ~30 steps
    config = small_run_config(tmp_path, "run_name=learns", "train.epochs=3", "train.lr=1e-3", "train.warmup_steps=2",
                              "train.early_stopping_patience=null", "ingest.image_size=32", "ingest.label_grid=4",
                              f"tracking.tracking_uri={mlflow_server}", f"tracking.experiment=learns-{tmp_path.name}",
                              f"tracking.registered_model=learns-{tmp_path.name}")
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

    losses = [m.value for m in sorted(MlflowClient(mlflow_server).get_metric_history(run.info.run_id, "train_loss"),
                                      key=lambda m: m.step)]
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


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_weights(small_shards, tmp_path):
    """Retraining's `train.init_weights` (the champion's weights): with lr 0 nothing moves, so the checkpoint holds
    exactly the weights the first step started from; they are the champion's, not the seed's fresh model. Under
    ZeRO-0, the fastest stage on CPU, whose checkpoint keeps the weights outside any optimizer partition."""
    config = small_run_config(tmp_path, "run_name=fine_tune", "train.epochs=1", "train.lr=0.0", "train.zero_stage=0",
                              "train.num_workers=1", "ingest.image_size=32", "ingest.label_grid=4")
    torch.manual_seed(config.train.seed + 1)  # not the seed the worker builds its model with
    champion = create_model(config.model, small_shards.hierarchy).state_dict()
    champion_uri = str(tmp_path / "champion.pt")
    torch.save(champion, champion_uri)
    torch.manual_seed(config.train.seed)
    fresh = create_model(config.model, small_shards.hierarchy).state_dict()
    config.train.init_weights = champion_uri

    result = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri)
    started_from = consolidated_state_dict(result.checkpoint_path)
    assert started_from.keys() == champion.keys()
    assert all(torch.equal(started_from[k], champion[k]) for k in champion)
    assert not all(torch.equal(started_from[k], fresh[k]) for k in fresh)


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


@pytest.mark.slow
def test_checkpoints_on_s3_resume_and_consolidate_from_the_bucket(small_shards, s3, tmp_path):
    """train.storage_path=s3://… (SeaweedFS): Ray Train writes its checkpoints through our S3 filesystem (custom
    endpoint), a rerun of the run name resumes from the bucket, and the best checkpoint consolidates from it."""
    settings = [f"s3.endpoint_url={s3.endpoint_url}", f"s3.region={s3.region}", "train.storage_path=s3://ckpt/runs",
                "run_name=on-s3", "train.early_stopping_patience=null"]
    first = train(small_run_config(tmp_path, *settings, "train.epochs=1"), small_shards.uri, small_shards.hierarchy,
                  small_shards.hierarchy_uri)
    assert first.checkpoint_path.startswith("s3://ckpt/runs/on-s3/checkpoint_")
    assert not (tmp_path / "ray_results").exists()  # nothing on the driver's disk

    config = small_run_config(tmp_path, *settings, "train.epochs=2")
    run = start_mlflow_run(config)
    try:
        again = train(config, small_shards.uri, small_shards.hierarchy, small_shards.hierarchy_uri, run.info.run_id)
    finally:
        mlflow.end_run()
    per_epoch = steps_per_epoch(small_shards.rows["train"], config)
    assert again.metrics["final_global_step"] == 2 * per_epoch
    tags = MlflowClient(config.resolved_tracking_uri).get_run(run.info.run_id).data.tags
    assert tags["train.resumed_after_epoch"] == "0"  # epoch 0 came from the bucket, not from a fresh start
    model = create_model(config.model, small_shards.hierarchy)
    model.load_state_dict(consolidated_state_dict(again.checkpoint_path, config.s3))  # read from the bucket
