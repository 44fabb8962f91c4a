"""The Ray Train + DeepSpeed trainer end to end on a small GeoWorld: real Ray workers, real DeepSpeed (ZeRO-2,
gloo), MLflow on sqlite. Validation every epoch, early stopping, the best checkpoint, per-step metrics."""

from collections import Counter

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from geosurge.models import create_model
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.trainer import TrainState, consolidated_state_dict, train
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
