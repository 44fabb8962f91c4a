"""The ingest stage as a whole: `ingest()` runs the steps in order, each a function here; `IngestResult` is what
it reports."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy

from geosurge import storage
from geosurge.config import IngestConfig
from geosurge.data.images import ImageSpec
from geosurge.data.ingest.fetch import (
    SegmentLabelMaps,
    fetch_decode_chunks,
    write_chunk_parts,
)
from geosurge.data.ingest.plan import (
    Plan,
    file_stamps,
    load_plan,
    make_plan,
    output_fingerprint,
    source_tag,
)
from geosurge.data.ingest.resume import (
    clear,
    count_written,
    delete_chunks,
    pending_chunks,
)
from geosurge.data.manifest import list_manifest_files, manifest_columns
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.layout import IngestLayout
from geosurge.segmentation.specs import (
    GEOWORLD_SEGMENTER,
    GROUND_TRUTH_SEGMENTER,
    NO_SEGMENTER,
    is_random_spec,
)

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    shards_uri: str
    quarantine_uri: str
    rows_in: int
    shard_rows: int
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    segmenter: str = ""
    segmenter_is_random: bool = False
    seconds: float = 0.0
    manifest_uri: str = ""
    chunks: int = 0  # chunks of this manifest
    chunks_resumed: int = 0  # chunks found complete from an earlier run and skipped
    fetch_retries: int = 0  # retries this run took (reads and writes), over all rows
    rows_processed: int = 0  # rows this run fetched/validated (the rest were already written)
    manifest_format: str = ""  # geosurge, mp16, im2gps3k or yfcc4k (comma-separated when files differ)
    warnings: list[str] = field(default_factory=list)  # from reading the manifest, e.g. a swapped LAT/LON header

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.shard_rows + self.quarantined

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined_by_reason.items())) or "none"
        status = "reconciles" if self.reconciles else "DOES NOT RECONCILE"
        resumed = f", {self.chunks_resumed}/{self.chunks} chunks already done" if self.chunks_resumed else ""
        line = (
            f"ingest: {self.rows_in} in = {self.shard_rows} in shards + {self.quarantined} quarantined "
            f"({reasons}) — {status}; {self.fetch_retries} retries{resumed}; {self.seconds:.1f} s"
        )
        return "\n".join([line, *(f"ingest: warning: {w}" for w in self.warnings)])

    def to_dict(self) -> dict:
        return {**asdict(self), "quarantined": self.quarantined, "reconciles": self.reconciles}


# --------------------------------------------------------------------------------------------- the stage


def ingest(
    manifest_uri: str,
    output_uri: str,
    config: IngestConfig,
    s3: storage.S3Config | None = None,
    hierarchy: GeocellHierarchy | None = None,
    overwrite: bool = False,
    val_fraction: float = 0.0,
) -> IngestResult:
    """Run the ingest stage on a manifest (a Parquet/CSV file or a folder of them, local or s3://); writes
    `<output_uri>/shards/` and `<output_uri>/quarantine/` (Parquet) and `<output_uri>/ingest_report.json`.

    The manifest may be in our columns or a public format as published (`config.manifest_format`, default
    'auto' from the header; public image uris = `config.images_root` (default: the CSV's folder) / IMG_ID;
    Places365 labels land in `scene3/16/365`). Reading warnings (a swapped LAT/LON header) are logged and kept in
    the result and the report.

    Resumes by default (see the package docstring); `overwrite=True` clears the output first. With `hierarchy`,
    shard rows get `cells` (list<int64>, the cell id at every level). `val_fraction`: rows with no split of their
    own (MP-16, img2dataset tables) go to `val` by a hash of their image id, the rest to `train`."""
    start = time.time()
    job = _Job(manifest_uri, IngestLayout(output_uri), config, s3, hierarchy, val_fraction)
    _prepare_output(job, overwrite)
    _check_segmenter(job)
    plan, planned_now = _open_plan(job)
    plan, pending = _find_pending(job, plan, planned_now)
    _announce(job, plan, pending)
    done_rows, retries = 0, 0
    if pending:
        done_rows, retries = _stream_progress(job, _build_pipeline(job, plan, pending), plan, pending)
    result = _reconcile_and_report(job, plan, pending, done_rows, retries, start)
    _remove_staging(job)
    return result


@dataclass
class _Job:
    """One ingest: what it reads, where it writes, how; and the storage retries the driver's own calls took."""

    manifest_uri: str
    layout: IngestLayout
    config: IngestConfig
    s3: storage.S3Config | None
    hierarchy: GeocellHierarchy | None
    val_fraction: float = 0.0
    driver_retries: int = 0

    def __post_init__(self) -> None:
        config = self.config
        self.policy = storage.RetryPolicy(retries=config.fetch_retries, backoff_s=config.fetch_backoff_s,
                                          max_backoff_s=config.fetch_max_backoff_s, timeout_s=config.fetch_timeout_s,
                                          deadline_s=config.fetch_deadline_s)
        self.threads = max(1, config.fetch_concurrency)
        self.tag = source_tag(self.manifest_uri)
        self.fingerprint = output_fingerprint(config, self.hierarchy, self.val_fraction)
        self.ground_truth = config.segmenter == GROUND_TRUTH_SEGMENTER

    def retrying(self, action):
        # Driver-side storage calls retry like the tasks' do: an outage may begin at any moment.
        result, retries = storage.with_retries(action, self.policy, self.layout.root)
        self.driver_retries += retries
        return result

    def make_plan(self) -> Plan:
        return make_plan(self.manifest_uri, self.layout, self.tag, self.fingerprint, self.config, self.s3,
                         self.policy, self.val_fraction)

    def pending(self, plan: Plan) -> list[str]:
        return self.retrying(lambda: pending_chunks(plan.chunks, self.layout, self.s3, self.threads))


def _prepare_output(job: _Job, overwrite: bool) -> None:
    if overwrite and storage.exists(job.layout.root, job.s3):
        clear(job.layout.root, job.s3)
    for uri in (job.layout.shards, job.layout.quarantine):
        storage.ensure_dir(uri, job.s3)


def _check_segmenter(job: _Job) -> None:
    if job.config.segmenter == GEOWORLD_SEGMENTER:
        raise ValueError("ingest.segmenter=geoworld names no model: workflows/full_pipeline.py trains the GeoWorld "
                         "segmenter first and ingests with its checkpoint folder; pass a folder or hub id here")
    if job.ground_truth:
        for uri in list_manifest_files(job.manifest_uri, job.s3):
            if "label_uri" not in manifest_columns(uri, job.s3):
                raise ValueError(f"ingest.segmenter=ground_truth reads each row's label_uri; {uri} has none")


def _open_plan(job: _Job) -> tuple[Plan, bool]:
    """The manifest's plan: the saved one while it fits the settings and the files, else a new one (staging the
    manifest again). Also says whether it was planned just now."""
    plan = job.retrying(lambda: load_plan(job.layout, job.tag, job.s3))
    if plan is not None and plan.fingerprint != job.fingerprint:
        log.warning("ingest: settings changed since %s was ingested into %s: redoing its chunks", job.manifest_uri,
                    job.layout.root)
        delete_chunks(plan.chunks, job.layout, job.s3)
        plan = None
    if plan is not None and job.retrying(lambda: _stamps(job)) != plan.stamps:
        # Same chunk names: a chunk whose rows (and duplicate list) are unchanged stays; an edited, grown or new
        # one is done again, and one the manifest no longer has is removed from the output.
        log.warning("ingest: %s changed since it was planned: planning it again", job.manifest_uri)
        old, plan = plan, job.make_plan()
        stale = {c: n for c, n in old.chunks.items() if c not in plan.chunks or old.digests.get(c) != plan.digests[c]}
        if stale:
            log.warning("ingest: %d chunk(s) of %s changed: redoing them", len(stale), job.manifest_uri)
            job.retrying(lambda: delete_chunks(stale, job.layout, job.s3))
        return plan, True
    if plan is None:
        return job.make_plan(), True
    return plan, False


def _stamps(job: _Job) -> list[list]:
    return file_stamps(list_manifest_files(job.manifest_uri, job.s3), job.s3)


def _find_pending(job: _Job, plan: Plan, planned_now: bool) -> tuple[Plan, list[str]]:
    """The chunks still to do (partial ones are cleared); stages the manifest again when they need staged
    chunks that an earlier run already cleaned up."""
    pending = job.pending(plan)
    staged = job.retrying(lambda: storage.exists(job.layout.duplicates(job.tag), job.s3))
    if pending and not planned_now and not staged:
        plan = job.make_plan()  # staged chunks were cleaned up
        pending = job.pending(plan)
    return plan, pending


def _manifest_format(plan: Plan) -> str:
    return ",".join(dict.fromkeys(plan.formats))


def _announce(job: _Job, plan: Plan, pending: list[str]) -> None:
    total_pending = sum(plan.chunks[c] for c in pending)
    print(f"ingest: {storage.redact_uri(job.manifest_uri)}: {_manifest_format(plan) or 'geosurge'} manifest, {plan.rows} rows in "
          f"{len(plan.chunks)} chunks, {plan.duplicates} duplicate ids; {len(plan.chunks) - len(pending)} chunks "
          f"already done, {len(pending)} to do ({total_pending} rows)", flush=True)
    for message in plan.warnings:
        log.warning("ingest: %s", message)
        print(f"ingest: warning: {message}", flush=True)


_TASK_RETRIES = 3  # a fetch or write task whose worker died is run again at most this often


def _build_pipeline(job: _Job, plan: Plan, pending: list[str]) -> ray.data.Dataset:
    """One input row per pending chunk → fetch + decode → segment (unless the labels come from the manifest or
    none are wanted) → write; one summary row per chunk comes out."""
    config = job.config
    spec = ImageSpec(size=config.image_size, max_pixels=config.max_image_pixels,
                     large_decode_pixels=config.large_decode_pixels)
    ds = ray.data.from_items([{"chunk": c} for c in pending], override_num_blocks=len(pending)).map_batches(
        fetch_decode_chunks,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"layout": job.layout, "tag": job.tag, "has_duplicates": plan.duplicates > 0, "spec": spec,
                   "s3": job.s3, "policy": job.policy, "concurrency": config.fetch_concurrency,
                   "label_grid": config.label_grid if job.ground_truth else None,
                   "max_bytes": config.max_image_bytes, "allowed_prefixes": tuple(config.allowed_uri_prefixes),
                   "chunk_timeout_s": config.chunk_timeout_s},
        max_retries=_TASK_RETRIES,  # also keeps this I/O stage out of the segmentation actors (other remote args)
    )
    segmenting = not job.ground_truth and config.segmenter != NO_SEGMENTER
    if segmenting:
        from geosurge.device import actor_num_gpus  # PyTorch: a driver that segments nothing never imports it

        ds = ds.map_batches(
            SegmentLabelMaps,
            fn_constructor_args=(config.segmenter, config.label_grid, config.segment_batch_size, job.s3),
            batch_size=None,  # a whole chunk per call, so each chunk is written as one shard file
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=config.segment_actors),
            num_gpus=actor_num_gpus(config.gpus_per_segment_actor, ray.cluster_resources().get("GPU", 0)),
        )
    ds = ds.map_batches(
        write_chunk_parts,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={"shards_uri": job.layout.shards, "quarantine_uri": job.layout.quarantine, "s3": job.s3,
                   "policy": job.policy, "hierarchy": job.hierarchy},
        # the fetch stage's remote args: with no segmentation between them the two fuse into one task per chunk.
        # Unfused, Ray Data splits the CPUs between the two operators and ran one fetch task at a time on 2 CPUs.
        max_retries=_TASK_RETRIES,
    )
    if not segmenting:
        # One fused operator: Ray Data's per-operator reservation, there to keep a fetch stage from starving the
        # segmentation actors, only held this one back: it ran a single task until the first finished, leaving a
        # core idle for the first chunk (this Dataset's own context; the driver's other Datasets keep it)
        ds.context.op_resource_reservation_enabled = False
    return ds


def _stream_progress(job: _Job, ds: ray.data.Dataset, plan: Plan, pending: list[str]) -> tuple[int, int]:
    """Run the pipeline, printing progress every `progress_interval_s`; (rows done, retries the tasks took)."""
    total_pending = sum(plan.chunks[c] for c in pending)
    retries, done_rows = 0, 0
    t0 = last = time.time()
    for row in ds.iter_rows():
        done_rows += row["rows"]
        retries += row["retries"]
        now = time.time()
        if now - last >= job.config.progress_interval_s:
            last = now
            print(f"ingest: {done_rows}/{total_pending} rows ({100 * done_rows / max(1, total_pending):.0f}%), "
                  f"{done_rows / (now - t0):.0f} images/s, {retries} retries", flush=True)
    return done_rows, retries


def _reconcile_and_report(job: _Job, plan: Plan, pending: list[str], done_rows: int, retries: int,
                          start: float) -> IngestResult:
    """Count what was written, write the report, print the summary; raise if rows were lost."""
    # Reconcile from what was written, not from what we think we wrote.
    shard_rows, by_reason = job.retrying(lambda: count_written(plan.chunks, job.layout, job.s3, job.threads))
    result = IngestResult(
        shards_uri=job.layout.shards,
        quarantine_uri=job.layout.quarantine,
        rows_in=plan.rows,
        shard_rows=shard_rows,
        quarantined_by_reason=by_reason,
        segmenter=job.config.segmenter,
        segmenter_is_random=is_random_spec(job.config.segmenter),
        seconds=time.time() - start,
        manifest_uri=job.manifest_uri,
        chunks=len(plan.chunks),
        chunks_resumed=len(plan.chunks) - len(pending),
        fetch_retries=retries + job.driver_retries,
        rows_processed=done_rows,
        manifest_format=_manifest_format(plan),
        warnings=list(plan.warnings),
    )
    report = json.dumps(result.to_dict(), indent=2).encode()
    job.retrying(lambda: storage.write_bytes(job.layout.report, report, job.s3))
    print(result.summary(), flush=True)
    if not result.reconciles:
        raise RuntimeError(f"ingest lost records: {result.summary()}")
    return result


def _remove_staging(job: _Job) -> None:
    fs, duplicates = storage.resolve(job.layout.duplicates(job.tag), job.s3)
    if fs.get_file_info(duplicates).type == pafs.FileType.File:
        fs.delete_file(duplicates)  # first: its absence tells a rerun to stage again
    _, path = storage.resolve(job.layout.staging(job.tag), job.s3)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:  # on S3 a folder with no marker object is gone with its last object
        pass  # the plan keeps the chunk counts; a later rerun that needs rows stages again
