"""Evaluate a model on a split of the shards: top-k predictions per image and the geo-localization metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from geosurge import storage
from geosurge.data.shards import split_batches, to_model_batch
from geosurge.geo.metrics import geolocation_metrics


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    shards_uri: str,
    split: str,
    s3: storage.S3Config | None = None,
    k: int = 5,
    batch_size: int = 64,
    ten_crop: bool = False,
) -> tuple[dict[str, float], pd.DataFrame]:
    """(metrics, predictions) for every image of `split`; label maps come from the shards (ingest's segmenter).
    `ten_crop` (eval.ten_crop): each prediction averaged over the 10 test-time views, as the paper evaluates."""
    model.eval()
    rows = []
    for batch in split_batches(shards_uri, split, s3, batch_size):
        arrays = to_model_batch(batch)
        out = model.predict(
            {"image": torch.from_numpy(arrays["image"]), "label_map": torch.from_numpy(arrays["label_map"])}, k,
            ten_crop=ten_crop,
        )
        rows.append(pd.DataFrame({
            "image_id": batch.column("image_id").to_pylist(),
            "lat": arrays["lat"],
            "lon": arrays["lon"],
            "pred_lat": out["lat"][:, 0].numpy(),
            "pred_lon": out["lon"][:, 0].numpy(),
            "score": out["score"][:, 0].numpy(),
            # models that retrieve coordinates (GeoCLIP's gallery) predict no cell
            "pred_cell": out["cell"][:, 0].numpy() if "cell" in out else np.full(len(arrays["lat"]), -1),
        }))
    if not rows:
        raise ValueError(f"split {split!r} of {shards_uri} has no rows to evaluate")
    predictions = pd.concat(rows, ignore_index=True)
    metrics = geolocation_metrics(
        predictions.pred_lat.to_numpy(), predictions.pred_lon.to_numpy(), predictions.lat.to_numpy(), predictions.lon.to_numpy()
    )
    return metrics, predictions


def baseline_metrics(train_lat: np.ndarray, train_lon: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> dict[str, float]:
    """A model-free reference: always predict the training set's densest point (its coordinate-wise median).
    A trained model must beat this to have learned anything about the images."""
    guess_lat = np.full_like(lat, np.median(train_lat))
    guess_lon = np.full_like(lon, np.median(train_lon))
    return geolocation_metrics(guess_lat, guess_lon, lat, lon)
