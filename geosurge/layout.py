"""Every path under a run's data root and under an ingest output, in one place.

A data root is a local folder or an `s3://` prefix. It is the only state that the machines of a cluster share:

    <data root>/
      geoworld/                 the generated GeoWorld (images/, labels/, manifest.parquet, geoworld.json)
      manifests/                copies of manifests given by http(s):// URL (data.manifest), read from here
      geocells.parquet          the geocell hierarchy built from the training coordinates
      segmenter/<key>/          the segmenter the pipeline trains (ingest.segmenter=geoworld), by its stage key
      ingest/                   an ingest output (see IngestLayout): shards/, quarantine/, ...
      checkpoints/<run name>/   Ray Train's checkpoints (a bucket data root, train.storage_path unset)
      incoming/                 where new manifests land for scheduled retraining
      retrain/                  the retraining job's lock, watermark and the champion's geocells and weights
      _stages/<stage>.json      what each pipeline stage made, and from which config
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from geosurge.storage import join

# Where each machine keeps its own caches (copies made once that every later process reuses, never shared through
# the data root): segmenter checkpoints from a bucket (segmentation.cache) and the packed land mask (geo.land_mask);
# each module says where under it, and where without it (under ~/.cache/geosurge)
CACHE_ENV = "GEOSURGE_CACHE"

MANIFEST_FILE = "manifest.parquet"
GEOCELLS_FILE = "geocells.parquet"


@dataclass(frozen=True)
class IngestLayout:
    """An ingest output: shards and quarantine (one Parquet file per chunk each), plus the ingest's own
    bookkeeping (staged chunks, plans, the last report)."""

    root: str

    @property
    def shards(self) -> str:
        return join(self.root, "shards")

    @property
    def quarantine(self) -> str:
        return join(self.root, "quarantine")

    @property
    def report(self) -> str:
        return join(self.root, "ingest_report.json")

    def staging(self, tag: str) -> str:
        """A manifest's staged chunks and id buckets while it is being ingested."""
        return join(self.root, "_staging", tag)

    def staged_chunk(self, tag: str, chunk: str) -> str:
        """One staged chunk of a manifest: its rows as read, before validation."""
        return join(self.staging(tag), "chunks", f"{chunk}.parquet")

    def staged_ids(self, tag: str) -> str:
        """A manifest's id hash buckets (the valid rows' ids), for the duplicate search."""
        return join(self.staging(tag), "ids")

    def duplicates(self, tag: str) -> str:
        """Every duplicate row of a manifest, by chunk and row; its absence tells a rerun to stage again."""
        return join(self.staging(tag), "duplicates.parquet")

    def plan(self, tag: str) -> str:
        """A manifest's plan: its chunk names and row counts."""
        return join(self.root, "_plans", f"{tag}.json")


@dataclass(frozen=True)
class DataRoot:
    """The paths of one data root (local folder or s3:// prefix)."""

    root: str

    @property
    def geoworld(self) -> str:
        return join(self.root, "geoworld")

    @property
    def geoworld_manifest(self) -> str:
        return join(self.geoworld, MANIFEST_FILE)

    @property
    def geocells(self) -> str:
        return join(self.root, GEOCELLS_FILE)

    def manifest_copy(self, url: str) -> str:
        """Where a manifest given by URL is copied to: named by its file name and a hash of the URL."""
        name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "manifest.csv"
        return join(self.root, "manifests", hashlib.sha1(url.encode()).hexdigest()[:8], name)

    def segmenter(self, key: str) -> str:
        """The segmenter the `segmenter` stage trains, by its stage key: in the data root, so the segmentation
        actors of every node (each copies it once to its own cache) and later runs on other machines find it."""
        return join(self.root, "segmenter", key)

    @property
    def ingest(self) -> IngestLayout:
        return IngestLayout(join(self.root, "ingest"))

    @property
    def checkpoints(self) -> str:
        """Ray Train's checkpoints when the data root is a bucket and `train.storage_path` is unset."""
        return join(self.root, "checkpoints")

    @property
    def stages(self) -> str:
        return join(self.root, "_stages")

    @property
    def incoming(self) -> str:
        return join(self.root, "incoming")

    @property
    def retrain(self) -> str:
        return join(self.root, "retrain")

    @property
    def retrain_lock(self) -> str:
        return join(self.retrain, "lock.json")

    @property
    def retrain_watermark(self) -> str:
        return join(self.retrain, "watermark.json")

    @property
    def promotion_lock(self) -> str:
        """Held while an eval job decides and moves the champion alias: one decision at a time."""
        return join(self.root, "eval", "promotion_lock.json")

    def champion_geocells(self, version: str) -> str:
        return join(self.retrain, f"geocells-v{version}.parquet")

    def champion_weights(self, version: str) -> str:
        return join(self.retrain, f"init-v{version}.pt")


@dataclass(frozen=True)
class RunFolder:
    """The local output folder of a run (`output_dir`): what stays on the machine that ran the driver."""

    root: str

    @property
    def ray_results(self) -> str:
        return str(Path(self.root, "ray_results").absolute())

    @property
    def logs(self) -> str:
        """What the console leaves out: Ray, Ray Data, Ray Train, DeepSpeed and transformers output."""
        return str(Path(self.root, "logs").absolute())

    @property
    def summary(self) -> str:
        """The finished run's summary (JSON): where everything is, for scripts; the console names it."""
        return str(Path(self.root, "summary.json").absolute())
