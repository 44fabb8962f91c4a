"""The retraining job in-process: its config for fine-tuning (what stays the champion's, what comes from `retrain`,
the run name that lets a resubmitted run for the same new imagery resume), and the runs that must do nothing: the
lock held by another run, no new imagery. (tests/workflows/test_end_to_end.py runs it whole, as a Ray job.)"""

from types import SimpleNamespace

from geosurge import storage
from geosurge.config import load_config
from geosurge.layout import DataRoot
from geosurge.orchestration.retrain import EXIT_LOCKED, fine_tune_config, run_retrain
from geosurge.orchestration.retraining import BucketLock, IncomingManifest, Watermark, find_new_manifests


def test_fine_tuning_keeps_the_champions_model_and_geocells_and_takes_epochs_and_lr_from_retrain():
    champion = SimpleNamespace(config=load_config(overrides=[
        "model.embed_dim=96", "geocells.tau_max=[90, 30]", "geocells.tau_min=3", "ingest.image_size=48",
        "ingest.label_grid=6", "ingest.segmenter=/models/seg"]))
    config = load_config(overrides=["retrain.epochs=3", "retrain.lr=1e-5", "train.epochs=20", "ingest.image_size=64",
                                    "ingest.fetch_concurrency=4", "run_name=nightly"])
    new = [IncomingManifest("s3://b/incoming/a.csv", 1.0), IncomingManifest("s3://b/incoming/b.csv", 2.0)]
    tuned = fine_tune_config(config, champion, new, "s3://b/retrain/init-v3.pt")
    assert tuned.model == champion.config.model and tuned.geocells == champion.config.geocells
    assert (tuned.ingest.image_size, tuned.ingest.label_grid, tuned.ingest.segmenter) == (48, 6, "/models/seg")
    assert tuned.ingest.fetch_concurrency == 4  # how to fetch stays this run's
    assert (tuned.train.epochs, tuned.train.lr, tuned.train.init_weights) == (3, 1e-5, "s3://b/retrain/init-v3.pt")
    assert config.train.init_weights is None  # the caller's config is not changed
    # the same new imagery always gives the same run name (resume); other imagery another one
    assert tuned.run_name.startswith("nightly-retrain-")
    assert fine_tune_config(config, champion, new, "x").run_name == tuned.run_name
    assert fine_tune_config(config, champion, new[:1], "x").run_name != tuned.run_name


def test_a_run_that_finds_the_lock_held_exits_75_and_does_nothing(tmp_path, capsys):
    config = load_config(overrides=[f"data_root={tmp_path / 'store'}", f"output_dir={tmp_path / 'run'}"])
    root = DataRoot(config.resolved_data_root)
    storage.write_bytes(storage.join(root.incoming, "batch1.csv"), b"image_id,uri,lat,lon\na,/a.jpg,1.0,2.0\n")
    with BucketLock(root.retrain_lock, ttl_s=60):
        assert run_retrain(config) == EXIT_LOCKED == 75
    assert "another retraining run is in progress" in capsys.readouterr().out
    assert Watermark.load(root.retrain_watermark).ingested == []  # nothing was done
    assert not (tmp_path / "run").exists()


def test_a_run_with_no_new_imagery_since_the_watermark_says_so_and_does_nothing(tmp_path, capsys):
    """The scheduled run on a quiet night: every manifest under incoming/ is in the watermark. It exits 0 before
    starting Ray or opening an MLflow run, and leaves the watermark and the lock as a later run needs them."""
    config = load_config(overrides=[f"data_root={tmp_path / 'store'}", f"output_dir={tmp_path / 'run'}",
                                    f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    root = DataRoot(config.resolved_data_root)
    storage.write_bytes(storage.join(root.incoming, "batch1.csv"), b"image_id,uri,lat,lon\na,/a.jpg,1.0,2.0\n")
    watermark = Watermark()
    watermark.advance(find_new_manifests(root.incoming, watermark))
    watermark.save(root.retrain_watermark)
    saved = storage.read_bytes(root.retrain_watermark)

    assert run_retrain(config) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "1 manifest(s) ingested before" in out
    assert storage.read_bytes(root.retrain_watermark) == saved
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()  # no Ray run, no MLflow run
    with BucketLock(root.retrain_lock, ttl_s=60):  # released: the next run can take it
        pass
