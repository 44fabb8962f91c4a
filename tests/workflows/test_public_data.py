"""Real imagery end to end, as a lab would run it: photos on a web host, an MP-16-format CSV (IMG_ID, LAT, LON
only) as the training manifest, an Im2GPS3k-format CSV as the benchmark, the paper's preset shrunk by
configs/smoke.yaml, `ray job submit` on a Ray head, data in SeaweedFS S3, runs and models in an MLflow server;
what the job prints, what its MLflow run holds, and a consumer loading the model from the registry by alias.
Nothing GeoWorld-specific is used on the way: the photos are written as plain JPEGs with no label maps, and the
manifest has no split, scene, country or label column."""

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from geosurge import storage
from geosurge.data.gps_gallery import sample_photo_coordinates
from tests.workflows.workflow_helpers import ray_internal_lines

TRAIN_PHOTOS = 240
BENCHMARK_PHOTOS = 30
FIRST_JOB_EPOCHS = 2


def _photo(rng: np.random.Generator, lat: float, lon: float) -> Image.Image:
    """A 72×96 'photo' whose colours follow its place a little (so there is something to learn), plus noise."""
    base = np.array([128 + lat * 1.2, 128 + lon * 0.6, 128 - lat * 0.8])
    y, x = np.mgrid[0:72, 0:96]
    img = base + np.stack([x * 0.3, y * 0.3, (x - y) * 0.2], -1) + rng.normal(0, 20, (72, 96, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write_photos(root: Path, ids: list[str], lat: np.ndarray, lon: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for image_id, la, lo in zip(ids, lat, lon):
        path = root / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        _photo(rng, la, lo).save(path, quality=90)


@pytest.mark.slow
def test_mp16_csv_to_a_registered_model_evaluated_on_im2gps3k(s3, mlflow_server, ray_head, submit_job,
                                                               http_folder, tmp_path):
    www = tmp_path / "www"
    lat, lon = sample_photo_coordinates(TRAIN_PHOTOS + BENCHMARK_PHOTOS, seed=3)
    # MP-16 as published: IMG_ID is a path relative to the image folder, and there are no other columns we use
    train_ids = [f"{i % 7:02x}/{i % 5:02x}/{9055806529 + i}.jpg" for i in range(TRAIN_PHOTOS)]
    _write_photos(www / "mp16", train_ids, lat[:TRAIN_PHOTOS], lon[:TRAIN_PHOTOS], seed=1)
    with open(www / "mp16_places365.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "LAT", "LON"])
        w.writerows(zip(train_ids, lat[:TRAIN_PHOTOS], lon[:TRAIN_PHOTOS]))
    # Im2GPS3k as published: IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban
    bench_ids = [f"{i}_{1000 + i}_{2000 + i}.jpg" for i in range(BENCHMARK_PHOTOS)]
    _write_photos(www / "im2gps3k", bench_ids, lat[TRAIN_PHOTOS:], lon[TRAIN_PHOTOS:], seed=2)
    benchmark_csv = tmp_path / "im2gps3k_places365.csv"
    with open(benchmark_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label",
                    "Prob_indoor", "Prob_natural", "Prob_urban"])
        w.writerows((i, "someone", la, lo, 2, 5, 100, 0.1, 0.2, 0.7)
                    for i, la, lo in zip(bench_ids, lat[TRAIN_PHOTOS:], lon[TRAIN_PHOTOS:]))
    host = http_folder(www)

    address, env = ray_head
    run_dir = tmp_path / "run"
    bucket_root = f"s3://public-{time.time_ns()}/store"
    benchmark = (f"[{{name: im2gps3k, manifest: {benchmark_csv}, format: im2gps3k, "
                 f"images_root: {host}/im2gps3k}}]")
    common = [
        f"data.manifest={host}/mp16_places365.csv", "ingest.manifest_format=mp16", f"ingest.images_root={host}/mp16",
        "data.val_fraction=0.1", f"eval.benchmarks={benchmark}", f"output_dir={run_dir}",
        f"data_root={bucket_root}", f"s3.endpoint_url={s3.endpoint_url}", f"s3.region={s3.region}",
        f"tracking.tracking_uri={mlflow_server}",
    ]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    seconds = {}
    # The paper's preset first: it ingests. The two baselines' presets, shrunk by the same smoke.yaml, share its
    # data, geocells and shards (same keys) and train, register and evaluate their own models.
    for preset in ("geosurge-mp16", "geoclip-mp16", "geodecoder-mp16"):
        model = f"public_{preset.split('-')[0]}"
        settings = [*common, f"run_name={preset}", f"tracking.registered_model={model}", f"tracking.experiment={model}"]
        if preset == "geosurge-mp16":
            settings.append(f"train.epochs={FIRST_JOB_EPOCHS}")  # per-epoch logging, seen over more than one
        args = ["--config", f"configs/{preset}.yaml", "--config", "configs/smoke.yaml",
                *(arg for kv in settings for arg in ("--set", kv))]
        started = time.time()
        code, log = submit_job(address, env, "workflows/full_pipeline.py", args)
        seconds[preset] = time.time() - started
        assert code == 0, log[-8000:]
        assert f"ingest: {TRAIN_PHOTOS} in = {TRAIN_PHOTOS} in shards + 0 quarantined" in log, log[-6000:]
        if preset != "geosurge-mp16":
            assert "=== 4/7 ingest" in log and "skipped" in log.split("=== 4/7 ingest")[1].split("===")[1]
            # where the time went: the stages this job ran, and those an earlier job made
            assert re.search(r"\nstages: train \d+ s, register \d+ s, evaluate \d+ s "
                             r"\(done before: data, segmenter, geocells, ingest\)\n", log), log[-3000:]
        else:
            assert re.search(r"\nstages: data \d+ s, segmenter \d+ s, geocells \d+ s, ingest \d+ s, train \d+ s, "
                             r"register \d+ s, evaluate \d+ s\n", log), log[-3000:]
        assert client.get_model_version_by_alias(model, "champion").version == "1"
        (eval_run,) = client.search_runs([client.get_experiment_by_name(model).experiment_id],
                                         filter_string="tags.`eval.challenger_version` = '1'")
        metrics = eval_run.data.metrics
        assert metrics["challenger.im2gps3k.n"] == BENCHMARK_PHOTOS  # every benchmark photo, read over HTTP
        assert 0 <= metrics["challenger.im2gps3k.acc_2500km"] <= 100
        assert eval_run.data.tags["eval.ten_crop"] == "True"  # smoke keeps the paper's ten-crop evaluation on
        if preset == "geosurge-mp16":
            check_the_job_console_run_and_a_consumer(log, run_dir, client, model, www / "mp16" / train_ids[0])

    # the shards: every photo, split by the id hash, with only manifest columns we made (no GeoWorld column)
    fs, path = storage.resolve(f"{bucket_root}/ingest/shards", s3)
    shards = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    assert shards.num_rows == TRAIN_PHOTOS
    splits = shards.column("split").to_pylist()
    assert {"train", "val"} == set(splits) and 0 < splits.count("val") < TRAIN_PHOTOS // 4
    assert not {"country", "climate", "continent", "city", "label_uri", "scene", "landmark_id"} & set(shards.column_names)
    assert all(uri.startswith(f"{host}/mp16/") for uri in shards.column("uri").to_pylist())
    print("\npublic-format end to end (ray job submit, seconds): "
          + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


def check_the_job_console_run_and_a_consumer(log: str, run_dir: Path, client, model: str, photo: Path) -> None:
    """What a user of `ray job submit` sees and gets: a quiet console (stage headers, progress and the summary;
    Ray's internals in the run's logs folder), the whole config and the metrics in the MLflow run, and a model a
    consumer loads from the registry by alias and asks where a photo was taken."""
    assert "RANDOMLY INITIALISED" in log  # the run says its segmenter (smoke's tiny OneFormer) is untrained
    assert not ray_internal_lines(log), "\n".join(ray_internal_lines(log)[:20])
    assert f"train [########################] {FIRST_JOB_EPOCHS}/{FIRST_JOB_EPOCHS} epochs" in log
    assert f"logs: {run_dir / 'logs'}" in log
    assert json.loads((run_dir / "summary.json").read_text())["model"].endswith("(version 1)")
    assert f"[train] epoch {FIRST_JOB_EPOCHS}/{FIRST_JOB_EPOCHS}" in (run_dir / "logs" / "workers.log").read_text()

    version = client.get_model_version_by_alias(model, "challenger")
    run = client.get_run(version.run_id)
    assert run.data.params["train.zero_stage"] == "2" and run.data.params["train.num_workers"] == "2"
    # no test split in an MP-16 manifest: the pipeline checks the model on the held-out val rows
    assert {"train_loss", "val_acc_2500km", "val_median_km", "ingest_shard_rows"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == FIRST_JOB_EPOCHS  # one point per epoch
    assert run.data.tags["segmenter_random_init"] == "True"

    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{model}@champion")
    (prediction,) = loaded.predict([photo.read_bytes()])
    assert len(prediction.lat) == 5 and len(prediction.lon) == 5
    assert all(-90 <= lat <= 90 for lat in prediction.lat) and all(-180 <= lon <= 180 for lon in prediction.lon)
    assert prediction.score == sorted(prediction.score, reverse=True)
