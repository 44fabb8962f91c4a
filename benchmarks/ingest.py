"""Benchmark: ingest throughput against its decode-bound limit and a naive loop, with and without the
offline segmenter, and the driver's peak memory for a 20k- vs a 200k-row manifest.

    python benchmarks/ingest.py [--images 3000] [--source-size 384] [--segmenter FOLDER] [--rss-rows 20000 200000]

Every figure comes from one run on one machine, side by side, so the ratios compare like with like:
  (a) images/s through the whole `ingest()` stage (a private local Ray) with segmentation off, over N GeoWorld
      images at a realistic source size (decode matters). If the stage has no "off" mode, `ground_truth` is
      used and the output says so: it also reads and pools each row's label map, so (a) is then a lower bound;
  (b) the decode-bound limit: a tight in-process loop of `decode_image` (decode + resize) over the same bytes
      held in memory, images/s on one core × the cores Ray was given, measured before and after (a)/(d); the
      ratio takes the higher. Target (a)/(b) >= 0.7;
  (c) a naive baseline: one process, for each row read the object, decode, resize, append to a list;
  (d) images/s through `ingest()` with the offline segmenter on (a checkpoint folder from
      `geosurge train-segmenter`, given by --segmenter, or trained here for one epoch: throughput does not
      depend on how well it was trained);
  (e) peak driver RSS (VmHWM of a fresh subprocess running the whole ingest) for a 20k- and a 200k-row
      manifest of small images (rows reuse a few image files under different ids). Target ratio <= 1.25;
  (f) --s3-endpoint-url and --s3-root s3://bucket/prefix: the same against S3 (credentials from the AWS chain);
  (h) over HTTP, side by side with img2dataset: its own script, benchmarks/ingest_http.py.
(b) decodes as the stage does (`decode_image`: JPEG draft mode, then the same resize and crop); per-core images/s
are printed for (a) and (b), and (a) prints where the cores went while it ran, by process: the fetch/write tasks'
workers, Ray's own processes, this driver, the rest of the machine and the idle cores.
The machine's load average is printed before and after: on a shared machine, read the ratios, not the rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# the sibling benchmark module (benchmarks/ is on sys.path when a script there runs)
from process_cpu import CpuSnapshot, TaskTitles, cores_by_process, print_cores

from geosurge import storage
from geosurge.config import GeoWorldConfig, IngestConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.images import ImageSpec, decode_image
from geosurge.segmentation import GROUND_TRUTH_SEGMENTER, NO_SEGMENTER

TARGET_DECODE_RATIO = 0.7
TARGET_RSS_RATIO = 1.25


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, the high-water mark of this program's own memory;
    ru_maxrss would not do in a child, as Linux carries the parent's peak across fork + exec into it."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------------------------------------
# Data


def geoworld(root: str, num_images: int, size: int, s3: storage.S3Config | None) -> str:
    """A GeoWorld under `root`, reused when a previous run already wrote the same config there."""
    config = GeoWorldConfig(num_images=num_images, image_size=size)
    marker = storage.join(root, "geoworld.json")
    manifest = storage.join(root, "manifest.parquet")
    if storage.exists(manifest, s3) and json.loads(storage.read_bytes(marker, s3)) == json.loads(
            json.dumps(dataclasses.asdict(config))):
        print(f"GeoWorld: reusing {root}")
        return manifest
    start = time.perf_counter()
    manifest = generate_geoworld(config, root, s3, progress=False)
    print(f"GeoWorld: {num_images} images at {size} px generated in {time.perf_counter() - start:.0f} s → {root}")
    return manifest


def many_rows_manifest(source_manifest: str, rows: int, uri: str, s3: storage.S3Config | None) -> str:
    """A manifest of `rows` rows that reuse the source manifest's few image (and label) files under new ids."""
    fs, path = storage.resolve(source_manifest, s3)
    src = pq.read_table(path, filesystem=fs)
    idx = pa.array(np.arange(rows) % src.num_rows)
    tenth = np.arange(rows) % 10
    table = pa.table({
        "image_id": pa.array([f"r{i:07d}" for i in range(rows)], pa.string()),
        "uri": src.column("uri").take(idx),
        "label_uri": src.column("label_uri").take(idx),
        "lat": src.column("lat").take(idx),
        "lon": src.column("lon").take(idx),
        "split": pa.array(np.where(tenth < 8, "train", np.where(tenth == 8, "val", "test")), pa.string()),
    })
    out_fs, out_path = storage.resolve(uri, s3)
    if not storage.is_s3(uri):
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
    pq.write_table(table, out_path, filesystem=out_fs)
    return uri


# ----------------------------------------------------------------------------------------------------------
# Measurements


def decode_loop(blobs: list[bytes], spec: ImageSpec) -> float:
    """(b) images/s of decode_image on one core, bytes already in memory."""
    start = time.perf_counter()
    for blob in blobs:
        decode_image(blob, spec)
    return len(blobs) / (time.perf_counter() - start)


def naive_loop(uris: list[str], spec: ImageSpec, s3: storage.S3Config | None) -> float:
    """(c) one process: read, decode, resize, append."""
    start = time.perf_counter()
    out = []
    for uri in uris:
        out.append(decode_image(storage.read_bytes(uri, s3), spec))
    return len(out) / (time.perf_counter() - start)


def timed_ingest(manifest: str, output: str, config: IngestConfig, s3: storage.S3Config | None) -> tuple[float, object]:
    from geosurge.data.ingest import ingest

    start = time.perf_counter()
    result = ingest(manifest, output, config, s3=s3, overwrite=True)  # every row done now, nothing resumed
    seconds = time.perf_counter() - start
    if not result.reconciles or result.quarantined:
        raise RuntimeError(f"benchmark ingest did not ingest every row: {result.summary()}")
    return result.rows_in / seconds, result


def init_ray(address: str, num_cpus: int) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import ray.data

    # "local": always a private Ray, never another user's cluster on this machine
    ray.init(address=address, num_cpus=num_cpus if address == "local" else None, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # keep the figures readable


def rss_child(args: argparse.Namespace) -> int:
    """Run in a fresh subprocess: one whole ingest; print its peak RSS as a JSON line."""
    init_ray(args.ray_address, args.num_cpus)
    s3 = storage.S3Config(endpoint_url=args.s3_endpoint_url) if args.s3_endpoint_url else None
    config = IngestConfig(image_size=args.image_size, segmenter=args.child_segmenter)
    rate, result = timed_ingest(args.child_manifest, args.child_output, config, s3)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "images_per_s": rate, "rows": result.rows_in,
                      "seconds": result.seconds}))
    return 0


def measure_rss(args: argparse.Namespace, manifest: str, output: str, segmenter: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--rss-child", "--child-manifest", manifest,
               "--child-output", output, "--child-segmenter", segmenter, "--num-cpus", str(args.num_cpus),
               "--image-size", str(args.image_size), "--ray-address", args.ray_address]
    if args.s3_endpoint_url:
        command += ["--s3-endpoint-url", args.s3_endpoint_url]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"RSS child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="GeoWorld images for (a)-(d)")
    parser.add_argument("--source-size", type=int, default=384, help="stored image size (decode cost)")
    parser.add_argument("--repeat", type=int, default=1, help="(a), (c), (d) ingest each image under this many ids")
    parser.add_argument("--shard-rows", type=int, default=IngestConfig.shard_rows,
                        help="ingest.shard_rows for (a) and (d): rows per chunk, the stage's unit of work")
    parser.add_argument("--image-size", type=int, default=IngestConfig.image_size, help="ingest output size")
    parser.add_argument("--off-segmenter", default=NO_SEGMENTER, choices=[NO_SEGMENTER, GROUND_TRUTH_SEGMENTER],
                        help="segmenter setting for (a): none (default), or ground_truth (also reads label maps)")
    parser.add_argument("--segmenter", help="checkpoint folder for (d); default: train one for one epoch")
    parser.add_argument("--segment-actors", type=int, default=IngestConfig.segment_actors)
    parser.add_argument("--rss-rows", type=int, nargs=2, default=[20_000, 200_000])
    parser.add_argument("--rss-files", type=int, default=64, help="distinct small image files the RSS rows reuse")
    parser.add_argument("--rss-source-size", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d", "e"])
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the benchmark's Ray")
    parser.add_argument("--ray-address", default="local", help='"local": a private Ray for this run')
    parser.add_argument("--work-dir", default="runs/bench_ingest", help="local folder (cache, outputs)")
    parser.add_argument("--s3-endpoint-url", help="run against S3 (with --s3-root)")
    parser.add_argument("--s3-root", help="s3://bucket/prefix for data and outputs")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-manifest", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    parser.add_argument("--child-segmenter", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args)
    if bool(args.s3_endpoint_url) != bool(args.s3_root):
        parser.error("--s3-endpoint-url and --s3-root go together")

    s3 = storage.S3Config(endpoint_url=args.s3_endpoint_url) if args.s3_endpoint_url else None
    root = args.s3_root or os.path.abspath(args.work_dir)
    spec = ImageSpec(size=args.image_size)
    cores = min(args.num_cpus, os.cpu_count() or 1)
    off = args.off_segmenter
    print(f"machine: {os.cpu_count()} cores, Ray given {args.num_cpus} CPUs; load average {load()}")
    print(f"data on {'S3 ' + args.s3_endpoint_url if s3 else 'local disk'}")

    manifest = geoworld(storage.join(root, f"geoworld_{args.images}x{args.source_size}"), args.images,
                        args.source_size, s3)
    fs, path = storage.resolve(manifest, s3)
    uris = pq.read_table(path, filesystem=fs).column("uri").to_pylist()
    blobs = [storage.read_bytes(u, s3) for u in uris]
    print(f"{len(uris)} images, {args.source_size} px source → {args.image_size} px, "
          f"mean {np.mean([len(b) for b in blobs]) / 1024:.0f} KiB")
    # (a), (c), (d) run over `repeat` × the images: more rows per run amortise the stage's fixed costs
    rows_manifest = manifest if args.repeat == 1 else many_rows_manifest(
        manifest, len(uris) * args.repeat, storage.join(root, f"rows_{len(uris)}x{args.repeat}.parquet"), s3)
    if args.repeat > 1:
        print(f"(a), (c), (d) over {len(uris) * args.repeat} rows: each image under {args.repeat} ids")

    def ingest_config(**kwargs) -> IngestConfig:
        return IngestConfig(image_size=args.image_size, shard_rows=args.shard_rows, **kwargs)
    figures: dict[str, float] = {}

    if "b" not in args.skip:
        per_core = decode_loop(blobs, spec)
        figures["b"] = per_core * cores
        print(f"(b) decode-bound limit: {per_core:.0f} images/s per core × {cores} cores = {figures['b']:.0f} images/s")
    if "c" not in args.skip:
        figures["c"] = naive_loop(uris * args.repeat, spec, s3)
        print(f"(c) naive loop (read, decode, resize, append; one process): {figures['c']:.0f} images/s")

    if {"a", "d"} - set(args.skip):
        init_ray(args.ray_address, args.num_cpus)
        # warm-up: start Ray's workers once, so (a) and (d) time the stage, not the cluster's start
        warm = many_rows_manifest(manifest, 50, storage.join(root, "warmup_manifest.parquet"), s3)
        timed_ingest(warm, storage.join(root, "out_warmup"), ingest_config(segmenter=off), s3)
    if "a" not in args.skip:
        tasks, first = TaskTitles(), CpuSnapshot.take()
        tasks.start()
        figures["a"], result = timed_ingest(rows_manifest, storage.join(root, "out_off"),
                                            ingest_config(segmenter=off), s3)
        seconds, used = cores_by_process(first, CpuSnapshot.take(), tasks.stop(),
                                          driver="this driver process (planning, Ray Data's executor, reconciling, this meter)")
        note = "" if off == NO_SEGMENTER else " — ground_truth also reads and pools each row's label map"
        print(f"(a) ingest, segmenter={off}: {figures['a']:.0f} images/s ({result.rows_in} rows in "
              f"{result.rows_in / figures['a']:.1f} s){note}; where the {os.cpu_count()} cores went over its "
              f"{seconds:.1f} s, in cores (Ray workers by the last task they ran):")
        print_cores(used, indent="    ")
        # the stage's own efficiency, apart from what Ray's processes and planning take from the cores
        figures["a_workers"] = sum(v for k, v in used.items() if "fetch_decode_chunks" in k)
    if "d" not in args.skip:
        folder = args.segmenter
        if not folder:
            from geosurge.train.segmenter import (
                SegmenterTrainConfig,
                train_geoworld_segmenter,
            )

            folder = os.path.join(os.path.abspath(args.work_dir), "segmenter")
            print(f"(d) training a segmenter for one epoch (throughput does not depend on its quality) → {folder}")
            train_geoworld_segmenter(manifest, folder, SegmenterTrainConfig(image_size=args.image_size, epochs=1,
                                                                            progress=False), s3)
        figures["d"], result = timed_ingest(rows_manifest, storage.join(root, "out_segment"),
                                            ingest_config(segmenter=folder, segment_actors=args.segment_actors), s3)
        print(f"(d) ingest, offline segmenter ({folder}, {args.segment_actors} actor(s)): {figures['d']:.0f} images/s "
              f"({result.rows_in} rows in {result.rows_in / figures['d']:.1f} s)")
    if {"a", "d"} - set(args.skip):
        import ray

        ray.shutdown()
    if "b" not in args.skip and {"a", "d"} - set(args.skip):
        # again after the stage ran: on a shared machine the load moves; the higher limit is the stricter one
        per_core = decode_loop(blobs, spec)
        figures["b"] = max(figures["b"], per_core * cores)
        print(f"(b) decode-bound limit, measured again: {per_core:.0f} images/s per core × {cores} cores = "
              f"{per_core * cores:.0f} images/s; the ratio uses the higher, {figures['b']:.0f}")
    del blobs

    if "e" not in args.skip:
        small = geoworld(storage.join(root, f"geoworld_{args.rss_files}x{args.rss_source_size}"), args.rss_files,
                         args.rss_source_size, s3)
        rss = {}
        for rows in args.rss_rows:
            rows_manifest = many_rows_manifest(small, rows, storage.join(root, f"rows_{rows}.parquet"), s3)
            rss[rows] = measure_rss(args, rows_manifest, storage.join(root, f"out_rows_{rows}"), off)
            print(f"(e) {rows:,} rows ({args.rss_files} files reused), segmenter={off}: peak driver RSS "
                  f"{rss[rows]['peak_rss_mb']:.0f} MB, {rss[rows]['images_per_s']:.0f} images/s")
        lo, hi = sorted(args.rss_rows)
        figures["e"] = rss[hi]["peak_rss_mb"] / rss[lo]["peak_rss_mb"]

    print(f"load average after: {load()}")
    print("summary:")
    verdicts = []
    if "a" in figures and "b" in figures:
        ok = figures["a"] / figures["b"] >= TARGET_DECODE_RATIO
        verdicts.append(ok)
        print(f"  (a) per core: {figures['a'] / cores:.0f} images/s; (b) per core: {figures['b'] / cores:.0f} images/s")
        if figures.get("a_workers"):
            per_worker_core = figures["a"] / figures["a_workers"]
            print(f"  (a) per core its fetch tasks' workers used ({figures['a_workers']:.2f} cores): "
                  f"{per_worker_core:.0f} images/s, {per_worker_core / (figures['b'] / cores):.2f} of (b) per core")
        print(f"  (a)/(b) ingest vs decode-bound: {figures['a'] / figures['b']:.2f} "
              f"(target >= {TARGET_DECODE_RATIO}): {'PASS' if ok else 'FAIL'}")
    if "a" in figures and "c" in figures:
        print(f"  (a)/(c) ingest vs naive loop:   {figures['a'] / figures['c']:.2f}")
    if "d" in figures and "a" in figures:
        print(f"  (d)/(a) segmenter on vs off:    {figures['d'] / figures['a']:.2f}")
    if "e" in figures:
        ok = figures["e"] <= TARGET_RSS_RATIO
        verdicts.append(ok)
        print(f"  (e) peak driver RSS {max(args.rss_rows):,} / {min(args.rss_rows):,} rows: {figures['e']:.2f} "
              f"(target <= {TARGET_RSS_RATIO}): {'PASS' if ok else 'FAIL'}")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
