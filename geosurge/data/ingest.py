"""The ingest stage on Ray Data: manifest → fetch bytes → validate/decode/resize → segment → Parquet shards.

Every record that enters is accounted for: it lands in the shards or in the quarantine table with the stage
and a reason, and `IngestResult.reconciles` checks rows_in == shard rows + quarantined rows, counting what
was actually written.

Shard rows: image_id, uri, lat, lon, split (+ any manifest label columns), image (JPEG bytes at
`image_size`), label_map (uint8 bytes, label_grid × label_grid ADE20K ids), label_grid.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy

from geosurge.config import IngestConfig
from geosurge.data import storage
from geosurge.data.images import (
    ImageRejected,
    ImageSpec,
    decode_image,
    decode_jpeg,
    decode_label_map,
    encode_jpeg,
)
from geosurge.data.manifest import QUARANTINE_SCHEMA, read_manifest, write_quarantine
from geosurge.data.segment import RANDOM_SEGMENTER, Segmenter

log = logging.getLogger(__name__)

DECODE_STAGE = "decode"
FETCH_STAGE = "fetch"
# An oracle segmenter for benchmarks and ablations: the manifest's own label maps (`label_uri`, as GeoWorld
# writes them) instead of a model's predictions. A model trained on it has no segmenter to serve with.
GROUND_TRUTH_SEGMENTER = "ground_truth"
STATUS_COLUMNS = ["reason", "detail", "stage"]


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

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.shard_rows + self.quarantined

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined_by_reason.items())) or "none"
        status = "reconciles" if self.reconciles else "DOES NOT RECONCILE"
        return (
            f"ingest: {self.rows_in} in = {self.shard_rows} in shards + {self.quarantined} quarantined "
            f"({reasons}) — {status}; {self.seconds:.1f} s"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "quarantined": self.quarantined, "reconciles": self.reconciles}


def fetch_decode(
    batch: pa.Table, spec: ImageSpec, s3: storage.S3Config | None, label_grid: int | None = None
) -> pa.Table:
    """Ray Data UDF: read each row's bytes from storage, decode, resize, re-encode as compact JPEG. With
    `label_grid`, also read the row's ground-truth label map (`label_uri`) and pool it to that grid.

    Failures become `reason`/`detail`/`stage` on the row instead of exceptions."""
    images, label_maps, reasons, details, stages = [], [], [], [], []
    label_uris = batch.column("label_uri").to_pylist() if label_grid else [None] * batch.num_rows
    for uri, label_uri in zip(batch.column("uri").to_pylist(), label_uris):
        image, label_map, reason, detail, stage = None, None, None, None, None
        try:
            image = encode_jpeg(decode_image(storage.read_bytes(uri, s3), spec))
            if label_grid:
                label_map = decode_label_map(storage.read_bytes(label_uri, s3), spec, label_grid).tobytes()
        except FileNotFoundError as e:
            reason, detail, stage = "not_found", str(e), FETCH_STAGE
        except ImageRejected as e:
            reason, detail, stage = e.reason, e.detail, DECODE_STAGE
        except OSError as e:  # storage errors other than a missing object
            reason, detail, stage = "fetch_error", str(e), FETCH_STAGE
        images.append(image)
        label_maps.append(label_map)
        reasons.append(reason)
        details.append(detail)
        stages.append(stage)
    batch = batch.append_column("image", pa.array(images, pa.binary()))
    if label_grid:
        batch = batch.append_column("label_map", pa.array(label_maps, pa.binary())).append_column(
            "label_grid", pa.array(np.full(batch.num_rows, label_grid, np.int32))
        )
    return (
        batch.append_column("reason", pa.array(reasons, pa.string()))
        .append_column("detail", pa.array(details, pa.string()))
        .append_column("stage", pa.array(stages, pa.string()))
    )


class SegmentLabelMaps:
    """Ray Data actor: one segmentation model per actor, label maps for a batch of decoded images."""

    def __init__(self, segmenter: str, grid: int):
        self.segmenter = Segmenter(segmenter, grid)
        self.grid = grid

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = np.stack([decode_jpeg(b) for b in batch.column("image").to_pylist()])
        maps = self.segmenter.label_maps(images)
        return (
            batch.drop_columns(STATUS_COLUMNS)
            .append_column("label_map", pa.array([m.tobytes() for m in maps], pa.binary()))
            .append_column("label_grid", pa.array(np.full(len(maps), self.grid, np.int32)))
        )


def _ok_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column("reason")))


def _without_status(batch: pa.Table) -> pa.Table:
    return batch.drop_columns(STATUS_COLUMNS)


def _failed_rows(batch: pa.Table) -> pa.Table:
    failed = batch.filter(pc.is_valid(batch.column("reason")))
    return failed.select([f.name for f in QUARANTINE_SCHEMA]).cast(QUARANTINE_SCHEMA)


def _clear(uri: str, s3: storage.S3Config | None) -> pafs.FileSystem:
    fs, path = storage.resolve(uri, s3)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(path)  # a rerun rewrites the stage's output instead of adding to it
    fs.create_dir(path, recursive=True)
    return fs


def ingest(
    manifest_uri: str,
    output_uri: str,
    config: IngestConfig,
    s3: storage.S3Config | None = None,
) -> IngestResult:
    """Run the ingest stage; writes `<output_uri>/shards/` and `<output_uri>/quarantine/` (Parquet)."""
    start = time.time()
    manifest, manifest_quarantine, report = read_manifest(manifest_uri, s3=s3)
    for warning in report.warnings:
        log.warning("manifest: %s", warning)
    shards_uri = storage.join(output_uri, "shards")
    quarantine_uri = storage.join(output_uri, "quarantine")
    fs = _clear(shards_uri, s3)
    _clear(quarantine_uri, s3)
    _, shards_path = storage.resolve(shards_uri, s3)
    _, quarantine_path = storage.resolve(quarantine_uri, s3)

    ground_truth = config.segmenter == GROUND_TRUTH_SEGMENTER
    if ground_truth and "label_uri" not in manifest.column_names:
        raise ValueError("ingest.segmenter=ground_truth reads each row's label_uri; this manifest has none")
    spec = ImageSpec(size=config.image_size, max_pixels=config.max_image_pixels)
    blocks = max(1, min(64, manifest.num_rows // 100))
    decoded = (
        ray.data.from_arrow(manifest)
        .repartition(blocks)
        .map_batches(
            fetch_decode,
            fn_kwargs={"spec": spec, "s3": s3, "label_grid": config.label_grid if ground_truth else None},
            batch_format="pyarrow",
        )
        .materialize()  # decoded once, then split into shards and quarantine
    )
    ok = decoded.map_batches(_ok_rows, batch_format="pyarrow")
    if ground_truth:
        ok = ok.map_batches(_without_status, batch_format="pyarrow")
    else:
        ok = ok.map_batches(
            SegmentLabelMaps,
            fn_constructor_args=(config.segmenter, config.label_grid),
            batch_size=config.segment_batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=config.segment_actors),
            num_gpus=config.gpus_per_segment_actor,
        )
    ok.write_parquet(shards_path, filesystem=fs, min_rows_per_file=config.shard_rows)
    decoded.map_batches(_failed_rows, batch_format="pyarrow").write_parquet(quarantine_path, filesystem=fs)
    if manifest_quarantine.num_rows:
        write_quarantine(manifest_quarantine, storage.join(quarantine_uri, "manifest_quarantine.parquet"), s3)

    # Reconcile from what was written, not from what we think we wrote.
    shard_rows = ray.data.read_parquet(shards_path, filesystem=fs).count()
    quarantine = read_quarantine(quarantine_uri, s3)
    by_reason = {}
    if quarantine.num_rows:
        for row in quarantine.group_by("reason").aggregate([("reason", "count")]).to_pylist():
            by_reason[row["reason"]] = row["reason_count"]
    result = IngestResult(
        shards_uri=shards_uri,
        quarantine_uri=quarantine_uri,
        rows_in=report.rows_in,
        shard_rows=shard_rows,
        quarantined_by_reason=by_reason,
        segmenter=config.segmenter,
        segmenter_is_random=config.segmenter == RANDOM_SEGMENTER,
        seconds=time.time() - start,
    )
    storage.write_bytes(storage.join(output_uri, "ingest_report.json"), json.dumps(result.to_dict(), indent=2).encode(), s3)
    if not result.reconciles:
        raise RuntimeError(f"ingest lost records: {result.summary()}")
    return result


def read_quarantine(quarantine_uri: str, s3: storage.S3Config | None = None) -> pa.Table:
    """All quarantined rows of an ingest (every stage), as one table in QUARANTINE_SCHEMA."""
    import pyarrow.dataset as pads

    fs, path = storage.resolve(quarantine_uri, s3)
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.path.endswith(".parquet")]
    if not files:
        return QUARANTINE_SCHEMA.empty_table()
    return pads.dataset(files, filesystem=fs, format="parquet").to_table().cast(QUARANTINE_SCHEMA)
