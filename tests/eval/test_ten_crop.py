"""Fast checks of the eval job's wiring, without Ray or MLflow: the batch-inference actor passes `eval.ten_crop` to
the model, the job's table says which evaluation it was, and a benchmark's images root keeps a URL a URL."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from geosurge.config import BenchmarkConfig, PipelineConfig
from geosurge.data.images import ImageSpec
from geosurge.eval import benchmark
from geosurge.eval.benchmark import BenchmarkResult, Predictor, read_benchmark
from geosurge.eval.job import EvalOutcome


class _Locator:
    """Stands in for a GeoLocator: records what it was asked, predicts (10 + i, 20 + i) for image i."""

    def __init__(self):
        self.spec = ImageSpec(size=16)
        self.calls: list[dict] = []

    def predict_arrays(self, images: np.ndarray, k: int = 5, ten_crop: bool = False) -> dict[str, np.ndarray]:
        self.calls.append({"n": len(images), "k": k, "ten_crop": ten_crop})
        i = np.arange(len(images), dtype=np.float64)[:, None]
        return {"lat": 10 + i, "lon": 20 + i, "score": np.full((len(images), 1), 0.5)}


def _jpeg(path: Path) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 120, np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())
    return str(path)


def test_predictor_passes_ten_crop_to_the_locator(tmp_path, monkeypatch):
    import geosurge.tracking.registry as registry

    made: list[_Locator] = []

    def load_locator(uri: str, tracking_uri: str) -> _Locator:
        made.append(_Locator())
        return made[-1]

    monkeypatch.setattr(registry, "load_locator", load_locator)
    batch = pa.table({"image_id": ["a", "gone"], "uri": [_jpeg(tmp_path / "a.jpg"), str(tmp_path / "gone.jpg")]})
    for ten_crop in (False, True):
        out = Predictor("models:/geosurge/1", "sqlite:///unused.db", None, ten_crop)(batch)
        assert made[-1].calls == [{"n": 1, "k": 1, "ten_crop": ten_crop}]  # the missing image is not predicted
        assert out.column("pred_lat").to_pylist() == [10.0, None]
        assert out.column("reason").to_pylist() == [None, "not_found"]
    # the default stays a single view, as before
    Predictor("models:/geosurge/1", "sqlite:///unused.db")(batch)
    assert made[-1].calls[0]["ten_crop"] is False


def _result(name: str, ten_crop: bool) -> BenchmarkResult:
    metrics = {f"acc_{t}km": 0.5 for t in (1, 25, 200, 750, 2500)} | {"median_km": 100.0, "geoscore": 2500.0}
    predictions = pd.DataFrame({c: [0.0] for c in benchmark.PREDICTION_COLUMNS})
    return BenchmarkResult(name, "models:/geosurge/2", "2", metrics, predictions,
                           pd.DataFrame(columns=benchmark.FAILURE_COLUMNS), 1, ten_crop=ten_crop)


def test_the_job_table_has_one_row_per_benchmark_and_names_the_evaluation():
    names = ["im2gps", "im2gps3k", "yfcc4k", "yfcc26k", "gws15k"]
    for ten_crop, words in ((False, "single view"), (True, "ten-crop")):
        outcome = EvalOutcome("models:/geosurge@challenger", "geosurge", "2", None,
                              {n: _result(n, ten_crop) for n in names}, ten_crop=ten_crop)
        title, header, _, *rows = outcome.table().splitlines()
        assert words in title and header.split()[:2] == ["run", "@1km"]
        assert [r.split()[2] for r in rows] == names
        assert outcome.report()["ten_crop"] is ten_crop


def test_a_benchmark_images_root_that_is_a_url_stays_a_url(tmp_path, monkeypatch):
    csv = tmp_path / "im2gps_places365.csv"
    csv.write_text("IMG_ID,AUTHOR,LAT,LON\n104123223_7410c654ba_19_19355699@N00.jpg,19355699@N00,-16.66,145.56\n")
    config = PipelineConfig()
    url = BenchmarkConfig(name="im2gps", manifest=str(csv), format="im2gps", images_root="http://127.0.0.1:9/x")
    clean, _, rows_in, _ = read_benchmark(url, config)
    assert rows_in == 1 and clean["uri"].to_pylist() == ["http://127.0.0.1:9/x/104123223_7410c654ba_19_19355699@N00.jpg"]
    assert clean["split"].to_pylist() == ["test"]
    monkeypatch.chdir(tmp_path)  # a relative local root is made absolute, from where the job runs
    relative = BenchmarkConfig(name="im2gps", manifest=str(csv), format="im2gps", images_root="imgs")
    clean, _, _, _ = read_benchmark(relative, config)
    assert clean["uri"].to_pylist() == [str(tmp_path / "imgs" / "104123223_7410c654ba_19_19355699@N00.jpg")]
