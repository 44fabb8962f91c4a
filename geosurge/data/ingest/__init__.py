"""The ingest stage on Ray Data: manifest → fetch bytes → validate/decode/resize → segment → Parquet shards.

Built for manifests of millions of rows in a bucket: no stage holds the manifest in the driver, and a run that
is killed resumes where it stopped.

1. **Plan and stage** (Ray tasks, one per manifest file): each file (Parquet or CSV, local or s3://; a folder of
   them is one manifest; our columns or a public CSV as published: MP-16, Im2GPS3k, YFCC4k, see
   `ingest.manifest_format` / `ingest.images_root`; a public file's swapped LAT/LON header is decided on its
   head and applied to every batch, and reported) is streamed once into staged Parquet chunks of `shard_rows`
   rows named `<file stem>-<hash of its URI>-<chunk:05d>`, and the ids of the rows that pass the manifest checks go to
   hash buckets. The driver keeps only the plan: chunk names and their row counts (`IngestLayout.plan`:
   `_plans/<manifest>.json`).
2. **Duplicate ids** (Ray tasks, one per bucket): every id of a bucket is in one task, so it sees all copies of
   an id; the first valid occurrence (by file, then row) is kept and the others are listed, by chunk and row,
   in `IngestLayout.duplicates` (`_staging/<manifest>/duplicates.parquet`). Ids already in the output's shards
   (written by another manifest) count as kept before every row: a repeat of one is a `duplicate_id` too.
3. **Ingest** (Ray Data, streaming): one input row per pending chunk → a fetch task validates the chunk
   (manifest.validate_rows, with the global duplicate list), fetches its images on a thread pool of
   `fetch_concurrency` (retries with backoff, counted) and decodes them on its own thread → the segmentation
   actor pool labels the rows that decoded → a writer task writes the chunk's shard rows and quarantine rows,
   each as one Parquet file named after the chunk (atomically), and sends a one-line summary back to the driver
   for progress.
4. **Reconcile** from what was written (Parquet footers and the quarantine `reason` column): rows in = shard
   rows + quarantined, by reason; raise if not.

Resume: at start-up the rows already written for each chunk are counted (shards + quarantine). A chunk whose
rows are all there is skipped; a partial chunk's files are deleted and the chunk is redone. So a rerun of a
finished manifest rewrites nothing, a killed run finishes without duplicating or losing a row, and a second
manifest ingested into the same output lands beside the first (its chunks have other names). `overwrite=True`
clears the output first. A change to the settings that shape the output (image size, label grid, segmenter,
shard rows, geocells) makes that manifest's chunks be redone; an edited manifest is planned again and the chunks
whose rows (or duplicate list) changed, by the digest kept per chunk in the plan, are redone.

Untrusted input is bounded: every image read takes at most `ingest.max_image_bytes` and `ingest.fetch_deadline_s`
(total, retries included), a chunk at most `ingest.chunk_timeout_s`, a decode at most `ingest.max_image_pixels`;
a uri that leaves its images root (or, with `ingest.allowed_uri_prefixes`, is under none) is `bad_uri`. A web host
that has served a worker nothing and that a read could not connect to once its retries were spent counts as down
for a minute in that worker: its other URLs are quarantined at once (`fetch_error`, "host down"), not each after a
retry cycle of its own. A host that has served keeps every read's retries (a restart is short, and a quarantined
row is not fetched again by a resumed ingest).

Shard rows: image_id, uri, lat, lon, split (+ any manifest label columns), image (JPEG bytes at `image_size`),
label_map (uint8 bytes, label_grid × label_grid ADE20K ids), label_grid, and `cells` (list<int64>, the cell at
every level) when a geocell hierarchy is given.

Modules, in the order a row meets them: `plan` (naming, staging, duplicate ids, the plan), `fetch` (the Ray Data
stages: fetch + decode, segment, write), `resume` (what was written: resume, reconcile, clear, the quarantine),
`run` (`ingest()` composing the steps, `IngestResult`). Paths come from `geosurge.layout.IngestLayout`.
"""

from geosurge.data.ingest.fetch import (
    STATUS_COLUMNS,
    SegmentLabelMaps,
    fetch_decode_chunks,
    write_chunk_parts,
)
from geosurge.data.ingest.plan import chunk_name, source_tag
from geosurge.data.ingest.resume import read_quarantine

# Every Ray worker that runs a fetch, write or staging task imports this package (to unpickle the function), so
# the driver-side names load when first asked for: `run` brings Ray Data, seconds of CPU per worker process that
# no fetch needs.
_LAZY = {"IngestResult": "geosurge.data.ingest.run", "ingest": "geosurge.data.ingest.run",
         "GROUND_TRUTH_SEGMENTER": "geosurge.segmentation.specs", "NO_SEGMENTER": "geosurge.segmentation.specs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GROUND_TRUTH_SEGMENTER",
    "NO_SEGMENTER",
    "STATUS_COLUMNS",
    "IngestResult",
    "SegmentLabelMaps",
    "chunk_name",
    "fetch_decode_chunks",
    "ingest",
    "read_quarantine",
    "source_tag",
    "write_chunk_parts",
]
