"""Benchmark evaluation of any MLflow model URI with Ray Data batch inference.

A benchmark is a manifest in any reader format (our own columns, GeoWorld's, the public Im2GPS / Im2GPS3k /
YFCC4k / YFCC26k CSVs as published, GWS15k in our columns; see `geosurge.data.manifest`) and optionally one split
of it. Rows go through Ray Data `map_batches` into an actor pool (`ActorPoolStrategy`); each actor loads the model
once from its URI and predicts from the image bytes it fetches with `storage.read_bytes` (averaged over ten crops
when `eval.ten_crop`). A benchmark of at most `eval.in_driver_max_images` images evaluated on the CPUs of a one-node
Ray skips the pool: the same predictor runs in the calling process, where an actor's start-up would cost more
than the work (on a cluster the pool is kept: the driver's head node may keep no work).

Nothing is dropped silently: a row the manifest reader quarantines (bad coordinates, duplicate id, ...) or an
image that cannot be fetched or decoded lands in `BenchmarkResult.failures` with its stage and reason, and
`BenchmarkResult.reconciles` checks rows in = evaluated + failed. Metrics are over the evaluated images.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from geosurge import storage
from geosurge.config import BenchmarkConfig, PipelineConfig
from geosurge.data.images import ImageRejected, decode_image
from geosurge.data.manifest import (
    DECODE_STAGE,
    FETCH_STAGE,
    FORMATS,
    QUARANTINE_SCHEMA,
    read_manifest,
    validate_manifest,
)
from geosurge.device import actor_num_gpus
from geosurge.geo.distance import haversine_km
from geosurge.geo.metrics import geolocation_metrics
from geosurge.layout import DataRoot

PREDICTION_COLUMNS = ["benchmark", "image_id", "uri", "lat", "lon", "pred_lat", "pred_lon", "score", "pred_cell",
                      "error_km"]
FAILURE_COLUMNS = ["benchmark", *QUARANTINE_SCHEMA.names]  # image_id, uri, lat, lon, stage, reason, detail


@dataclass
class BenchmarkResult:
    """One model on one benchmark: metrics over the images it could read, and every image it could not."""

    name: str
    model_uri: str  # the URI that was loaded (an alias already resolved to its version)
    model_version: str | None  # registered version, when the URI names one
    metrics: dict[str, float]  # geolocation_metrics over the evaluated images
    predictions: pd.DataFrame  # PREDICTION_COLUMNS, one row per evaluated image
    failures: pd.DataFrame  # FAILURE_COLUMNS, one row per manifest row or image that could not be evaluated
    rows_in: int  # manifest rows of the benchmark (its split), before validation
    warnings: list[str] = field(default_factory=list)  # from the manifest reader (e.g. a swapped LAT/LON header)
    seconds: float = 0.0
    ten_crop: bool = False  # predictions averaged over the 10 test-time views (eval.ten_crop)

    @property
    def evaluated(self) -> int:
        return len(self.predictions)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def failed_by_reason(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.failures.reason.value_counts().sort_index().items()}

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.evaluated + self.failed

    @property
    def errors_km(self) -> np.ndarray:
        return self.predictions.error_km.to_numpy(np.float64)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in self.failed_by_reason.items()) or "none"
        return (f"{self.name} [{self.model_uri}]: {self.rows_in} rows = {self.evaluated} evaluated + "
                f"{self.failed} failed ({reasons}){'' if self.reconciles else ' — DOES NOT RECONCILE'}; "
                f"{self.seconds:.1f} s")


# ----------------------------------------------------------------------------------------------- model URIs

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


def default_model_uri(config: PipelineConfig) -> str:
    return config.eval.model_uri or f"models:/{config.tracking.registered_model}@{config.tracking.alias}"


def resolve_model_uri(model_uri: str, tracking_uri: str) -> tuple[str, str | None, str | None]:
    """(URI to load, registered model name, version). An alias is resolved once, here, so every inference actor
    loads the same version even if the alias moves meanwhile. Other URIs (runs:/, paths) have no version."""
    from mlflow.tracking import MlflowClient

    if m := _ALIAS_URI.match(model_uri):
        version = MlflowClient(tracking_uri).get_model_version_by_alias(m["name"], m["alias"]).version
        return f"models:/{m['name']}/{version}", m["name"], str(version)
    if m := _VERSION_URI.match(model_uri):
        return model_uri, m["name"], m["version"]
    return model_uri, None, None


# ----------------------------------------------------------------------------------------------- manifests


def benchmark_manifest_uri(benchmark: BenchmarkConfig, config: PipelineConfig) -> str:
    """The benchmark's manifest; by default the GeoWorld manifest full_pipeline writes under the data root."""
    return benchmark.manifest or DataRoot(config.resolved_data_root).geoworld_manifest


def read_benchmark(benchmark: BenchmarkConfig, config: PipelineConfig) -> tuple[pa.Table, pa.Table, int, list[str]]:
    """(rows to evaluate, quarantined rows, rows in, reader warnings) of the benchmark's split."""
    uri = benchmark_manifest_uri(benchmark, config)
    # GeoWorld writes our own manifest columns; the reader calls that format "geosurge"
    fmt = "geosurge" if benchmark.format == "geoworld" and "geoworld" not in FORMATS else benchmark.format
    # the readers spell every images_root one way (`resolve_images_root`): an http:// root stays a URL
    raw, _, report = read_manifest(uri, fmt, benchmark.images_root, config.s3, validate=False)
    if benchmark.split is not None:
        if "split" not in raw.column_names:
            raise ValueError(f"benchmark {benchmark.name!r}: {uri} has no split column to select {benchmark.split!r}")
        raw = raw.filter(pc.fill_null(pc.equal(raw.column("split"), benchmark.split), False))
    if raw.num_rows == 0:
        raise ValueError(f"benchmark {benchmark.name!r}: no rows in {uri}"
                         + (f" with split {benchmark.split!r}" if benchmark.split else ""))
    clean, quarantine, validated = validate_manifest(raw)
    return clean, quarantine, raw.num_rows, list(dict.fromkeys(report.warnings + validated.warnings))


# ----------------------------------------------------------------------------------------------- inference


def load_image(uri: str, spec, fetcher: storage.Fetcher) -> tuple[np.ndarray | None, tuple[str, str, str] | None]:
    """(image at the model's size, None) or (None, (stage, reason, detail)), in ingest's reason vocabulary. Reads
    retry transient failures (`storage.Fetcher`, ingest's retry settings): a storage hiccup is not a failed image."""
    try:
        data, _ = fetcher.read(uri)
    except storage.FetchFailed as e:
        return None, (FETCH_STAGE, e.reason, e.detail)
    try:
        return decode_image(data, spec), None
    except ImageRejected as e:
        return None, (DECODE_STAGE, e.reason, e.detail)


def retry_policy(config: PipelineConfig) -> storage.RetryPolicy:
    """Eval reads retry as ingest's fetches do (`ingest.fetch_*`)."""
    i = config.ingest
    return storage.RetryPolicy(retries=i.fetch_retries, backoff_s=i.fetch_backoff_s,
                               max_backoff_s=i.fetch_max_backoff_s, timeout_s=i.fetch_timeout_s,
                               deadline_s=i.fetch_deadline_s)  # a trickled body cannot hold an eval actor


class Predictor:
    """Ray Data actor: loads the model once from its URI, then predicts each batch from the images' bytes.

    Output rows keep the input columns and add the top-1 prediction, or `stage`/`reason`/`detail` for an image
    that could not be read (its prediction columns are null). `ten_crop`: average over the 10 test-time views."""

    def __init__(self, model_uri: str, tracking_uri: str, s3: storage.S3Config | None = None,
                 ten_crop: bool = False, policy: storage.RetryPolicy | None = None,
                 max_bytes: int = storage.DEFAULT_MAX_IMAGE_BYTES):
        from geosurge.tracking.registry import load_locator

        self.locator = load_locator(model_uri, tracking_uri)
        self.fetcher = storage.Fetcher(s3, policy or storage.RetryPolicy(), max_bytes=max_bytes)
        self.ten_crop = ten_crop

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        images, ok_rows = [], []
        stage, reason, detail = [None] * n, [None] * n, [None] * n
        for i, uri in enumerate(batch.column("uri").to_pylist()):
            image, failure = load_image(uri, self.locator.spec, self.fetcher)
            if failure is None:
                images.append(image)
                ok_rows.append(i)
            else:
                stage[i], reason[i], detail[i] = failure
        pred = {key: np.full(n, np.nan) for key in ("pred_lat", "pred_lon", "score")}
        pred_cell = np.full(n, -1, np.int64)
        if images:
            out = self.locator.predict_arrays(np.stack(images), k=1, ten_crop=self.ten_crop)
            pred["pred_lat"][ok_rows] = out["lat"][:, 0]
            pred["pred_lon"][ok_rows] = out["lon"][:, 0]
            pred["score"][ok_rows] = out["score"][:, 0]
            if "cell" in out:  # models that retrieve coordinates (GeoCLIP's gallery) predict no cell
                pred_cell[ok_rows] = out["cell"][:, 0]
        failed = np.array([r is not None for r in reason], dtype=bool)  # bool even for 0 rows (pyarrow's mask)
        for key, values in pred.items():
            batch = batch.append_column(key, pa.array(values, pa.float64(), mask=failed))
        return (batch.append_column("pred_cell", pa.array(pred_cell, pa.int64(), mask=failed))
                .append_column("stage", pa.array(stage, pa.string()))
                .append_column("reason", pa.array(reason, pa.string()))
                .append_column("detail", pa.array(detail, pa.string())))


def _one_node() -> bool:
    """Ray runs on this one machine (a laptop, a workstation): the driver's CPUs are the cluster's. On a cluster
    the driver may sit on a head that keeps no work (KubeRay's `num-cpus: 0`), so the model goes to an actor."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) == 1


def _num_gpus(config: PipelineConfig) -> float:
    import ray

    return actor_num_gpus(config.eval.gpus_per_actor, ray.cluster_resources().get("GPU", 0))


def evaluate_benchmarks(
    model_uri: str, benchmarks: list[BenchmarkConfig], config: PipelineConfig
) -> dict[str, BenchmarkResult]:
    """Evaluate one model on several benchmarks in one Ray Data pass (one actor pool loads the model once; a small
    CPU evaluation on a one-node Ray runs in this process, see `eval.in_driver_max_images`), with ten-crop
    test-time augmentation when `config.eval.ten_crop`. Needs Ray initialised (`geosurge.runtime.init_ray`).
    Returns {benchmark name: result}."""
    import ray
    from ray.data import ActorPoolStrategy

    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"benchmark names must be given and unique, got {names}")
    started = time.time()
    tracking_uri = config.resolved_tracking_uri
    load_uri, _, version = resolve_model_uri(model_uri, tracking_uri)

    tables, read = [], {}
    for b in benchmarks:
        clean, quarantine, rows_in, warnings = read_benchmark(b, config)
        read[b.name] = (quarantine, rows_in, warnings)
        rows = clean.select(["image_id", "uri", "lat", "lon"])
        tables.append(rows.add_column(0, "benchmark", pa.array([b.name] * rows.num_rows, pa.string())))
    rows = pa.concat_tables(tables)
    rows = rows.append_column("_row", pa.array(np.arange(rows.num_rows), pa.int64()))

    batch_size, num_gpus = config.eval.batch_size, _num_gpus(config)
    predictor_args = (load_uri, tracking_uri, config.s3, config.eval.ten_crop, retry_policy(config),
                      config.ingest.max_image_bytes)
    if num_gpus == 0 and rows.num_rows <= config.eval.in_driver_max_images and _one_node():
        # A small benchmark on one machine's CPUs: an actor's start-up (a process, its imports, the model) costs
        # more than the inference itself, so the same Predictor runs here, batch by batch.
        predictor = Predictor(*predictor_args)
        predicted = pa.concat_tables([predictor(rows.slice(i, batch_size))
                                      for i in range(0, max(rows.num_rows, 1), batch_size)]).to_pandas()
    else:
        predicted = (
            ray.data.from_arrow(rows)
            .repartition(max(1, min(64, -(-rows.num_rows // batch_size))))
            .map_batches(Predictor, fn_constructor_args=predictor_args, batch_size=batch_size, batch_format="pyarrow",
                         compute=ActorPoolStrategy(size=config.eval.actors), num_gpus=num_gpus)
            .to_pandas()
        )
    # actors finish in any order: back to manifest order, so the metrics' float sums are the same every run
    predicted = predicted.sort_values("_row", kind="stable").reset_index(drop=True)
    seconds = time.time() - started

    results = {}
    for b in benchmarks:
        quarantine, rows_in, warnings = read[b.name]
        mine = predicted[predicted.benchmark == b.name]
        failed_images = mine[mine.reason.notna()]
        ok = mine[mine.reason.isna()].reset_index(drop=True)
        manifest_failures = quarantine.to_pandas()
        manifest_failures.insert(0, "benchmark", b.name)
        failures = pd.concat([manifest_failures[FAILURE_COLUMNS], failed_images[FAILURE_COLUMNS]], ignore_index=True)
        if ok.empty:
            raise ValueError(f"benchmark {b.name!r}: none of its {rows_in} rows could be evaluated; reasons: "
                             f"{failures.reason.value_counts().to_dict()}")
        ok["error_km"] = haversine_km(ok.pred_lat.to_numpy(), ok.pred_lon.to_numpy(), ok.lat.to_numpy(), ok.lon.to_numpy())
        ok["pred_cell"] = ok.pred_cell.astype(np.int64)
        metrics = geolocation_metrics(ok.pred_lat, ok.pred_lon, ok.lat, ok.lon)
        result = BenchmarkResult(
            name=b.name, model_uri=load_uri, model_version=version, metrics=metrics,
            predictions=ok[PREDICTION_COLUMNS], failures=failures, rows_in=rows_in, warnings=warnings,
            seconds=seconds, ten_crop=config.eval.ten_crop,
        )
        if not result.reconciles:  # an internal error, not a data problem: fail rather than lose rows
            raise AssertionError(f"evaluation lost rows: {result.summary()}")
        results[b.name] = result
    return results


def evaluate_model(model_uri: str, benchmark: BenchmarkConfig, config: PipelineConfig) -> BenchmarkResult:
    """Evaluate one model URI (any MLflow URI of a GeoSURGE pyfunc) on one benchmark."""
    return evaluate_benchmarks(model_uri, [benchmark], config)[benchmark.name]
