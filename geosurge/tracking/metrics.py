"""Metrics from inside training workers straight into the run's MLflow run."""

from __future__ import annotations


class MlflowMetricWriter:
    """Rank 0's MLflow writer. It writes each (metric, step) at most once: steps at or below the last one already
    in the run's history are skipped, so replaying an epoch after a failure never duplicates history."""

    def __init__(self, tracking_uri: str, run_id: str, keys: tuple[str, ...]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.last_step = {k: max((m.step for m in self.client.get_metric_history(run_id, k)), default=-1) for k in keys}

    def write(self, metrics: list[tuple[str, float, int, int]]) -> int:
        """Log (key, value, step, timestamp_ms) rows not yet in the run; returns how many were written."""
        from mlflow.entities import Metric

        fresh = []
        for key, value, step, timestamp in sorted(metrics, key=lambda m: m[2]):
            if step > self.last_step.get(key, -1):
                fresh.append(Metric(key, float(value), int(timestamp), int(step)))
                self.last_step[key] = step
        for start in range(0, len(fresh), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=fresh[start:start + 1000])
        return len(fresh)

    def record_resume(self, after_epoch: int) -> None:
        """Tags that say this run continued from a checkpoint (and how often), e.g. after a lost worker."""
        count = int(self.client.get_run(self.run_id).data.tags.get("train.resume_count", "0")) + 1
        self.set_tags({"train.resume_count": str(count), "train.resumed_after_epoch": str(after_epoch)})

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
