"""Benchmark: ingest over HTTP, side by side with img2dataset: whole processes, the same URLs, the same nginx.

    python benchmarks/ingest_http.py [--images 3000] [--source-size 384] [--img2dataset VENV/bin/img2dataset]
        [--runs 3] [--http-repeat 6] [--nginx nginx]

  (h) the N GeoWorld images (generated as benchmarks/ingest.py does for (a), and reused from the same --work-dir)
      served by nginx on loopback (`--nginx`, one worker), each under `--http-repeat` ids (3,000 × 6 = 18,000 URLs),
      resized and centre-cropped to --image-size; our ingest (segmenter none, a fresh process: Ray up, ingest, Ray
      down) and img2dataset (`--img2dataset`, installed in its own venv: `python3 -m venv V && V/bin/pip install
      img2dataset==1.47.0`; `--i2d-processes` × `--i2d-threads`, Parquet output), whole processes timed, `--runs`
      each, interleaved; medians, their ratio (target: ours no slower) and the CPU seconds each took. Without
      --img2dataset that column is skipped.
  (d) a host that is down: the first `--live-urls` of those URLs as served, then `--dead-urls` more on a loopback
      port nobody listens on (connection refused); one ingest in a fresh process: seconds, the retries it took, how
      the dead rows were quarantined (the rows after a read that spent its retries fail at once: "host down").
      `--dead-urls 0` skips it.
The machine's load average is printed before and after: on a shared machine, read the ratios, not the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# the sibling benchmark script: importable as `ingest` because Python puts a script's own folder (benchmarks/) on
# sys.path; the dependency runs this way only (ingest.py never imports this file)
from ingest import geoworld, init_ray, load, timed_ingest

from geosurge import storage
from geosurge.config import IngestConfig
from geosurge.segmentation import NO_SEGMENTER

# ----------------------------------------------------------------------------------------------------------
# (h) over HTTP, side by side with img2dataset: whole processes, the same URLs, the same nginx


NGINX_CONF = """worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  types {{ image/jpeg jpg; image/png png; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def start_nginx(nginx: str, root: str, work: str) -> tuple[subprocess.Popen, str]:
    """nginx serving `root` on a free loopback port (one worker: both clients meet the same server)."""
    os.makedirs(os.path.join(work, "tmp"), exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(work=work, port=port, root=root))
    server = subprocess.Popen([nginx, "-c", conf, "-p", work], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"nginx did not start: {server.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("nginx did not listen within 10 s")


def http_manifests(manifest: str, base_url: str, repeat: int, work: str) -> tuple[str, str]:
    """Our manifest and img2dataset's URL list for the same `repeat` × images, every row its own id and a URL
    served by nginx (rows of one image share its URL)."""
    src = pq.read_table(manifest)
    root = os.path.dirname(manifest)
    urls = [base_url + "/" + os.path.relpath(u, root) for u in src.column("uri").to_pylist()]
    idx = np.arange(len(urls) * repeat) % len(urls)
    table = pa.table({
        "image_id": pa.array([f"h{i:07d}" for i in range(idx.size)], pa.string()),
        "uri": pa.array(urls).take(pa.array(idx)),
        "lat": src.column("lat").take(pa.array(idx)),
        "lon": src.column("lon").take(pa.array(idx)),
        "split": pa.array(["train"] * idx.size, pa.string()),
    })
    ours, theirs = os.path.join(work, "manifest.parquet"), os.path.join(work, "urls.parquet")
    pq.write_table(table, ours)
    pq.write_table(table.select(["uri"]).rename_columns(["url"]), theirs)
    return ours, theirs


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of process `root` and every process below it, living or reaped (Linux /proc):
    Ray's workers hang under its raylet, which a parent's RUSAGE_CHILDREN never sees while Ray is up."""
    parents, times = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(pid)] = int(fields[1])
        times[int(pid)] = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def http_child(args: argparse.Namespace) -> int:
    """Run in a fresh subprocess: Ray up, one ingest (segmenter none), Ray down, as a user would run it."""
    init_ray(args.ray_address, args.num_cpus)
    config = IngestConfig(image_size=args.image_size, shard_rows=args.shard_rows, segmenter=NO_SEGMENTER)
    rate, result = timed_ingest(args.child_manifest, args.child_output, config, None)
    cpu = tree_cpu_s(os.getpid())
    import ray

    ray.shutdown()
    print(json.dumps({"images_per_s": rate, "rows": result.rows_in, "cpu_s": cpu}))
    return 0


def dead_host_child(args: argparse.Namespace) -> int:
    """Run in a fresh subprocess: Ray up, one ingest of a manifest whose last rows name a host that is down."""
    from geosurge.data.ingest import ingest, read_quarantine

    init_ray(args.ray_address, args.num_cpus)
    config = IngestConfig(image_size=args.image_size, shard_rows=args.shard_rows, segmenter=NO_SEGMENTER)
    result = ingest(args.child_manifest, args.child_output, config, overwrite=True)
    if not result.reconciles:
        raise RuntimeError(f"rows lost: {result.summary()}")
    details = read_quarantine(result.quarantine_uri).column("detail").to_pylist()
    print(json.dumps({"seconds": result.seconds, "retries": result.fetch_retries, "shard_rows": result.shard_rows,
                      "quarantined": result.quarantined_by_reason,
                      "host_down": sum(": host down (" in d for d in details)}))
    return 0


def dead_host(args: argparse.Namespace, ours_manifest: str, work: str) -> dict[str, float]:
    """(d): `--live-urls` served rows, then `--dead-urls` rows on a port nobody listens on; one whole ingest."""
    table = pq.read_table(ours_manifest).slice(0, args.live_urls + args.dead_urls)
    with socket.socket() as s:  # a port nobody listens on: every connection refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    uris = table.column("uri").to_pylist()
    base = uris[0].split("/", 3)
    dead = [f"{base[0]}//127.0.0.1:{closed}/{u.split('/', 3)[3]}" for u in uris[args.live_urls:]]
    table = table.set_column(table.schema.get_field_index("uri"), "uri", pa.array(uris[:args.live_urls] + dead))
    manifest = os.path.join(work, "manifest_dead_host.parquet")
    pq.write_table(table, manifest)
    command = [sys.executable, os.path.abspath(__file__), "--dead-host-child", "--child-manifest", manifest,
               "--child-output", os.path.join(work, "out_dead_host"), "--num-cpus", str(args.num_cpus),
               "--image-size", str(args.image_size), "--shard-rows", str(args.shard_rows),
               "--ray-address", args.ray_address]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"dead-host ingest child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"(d) {len(table) - len(dead)} served + {len(dead)} refused URLs: {figures['seconds']:.1f} s, "
          f"{figures['retries']} retries, {figures['shard_rows']} in shards, quarantined {figures['quarantined']} "
          f"({figures['host_down']} of them at once as 'host down')", flush=True)
    return {"d_seconds": figures["seconds"], "d_retries": figures["retries"], "d_dead": len(dead)}


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children and theirs: on a shared machine the CPU a
    run took says more than its wall time (img2dataset's processes are all reaped by the time it exits)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ours_http(args: argparse.Namespace, manifest: str, output: str) -> tuple[float, float, float]:
    """(whole-process seconds, CPU seconds of the process tree up to Ray's shutdown, images/s inside the stage)."""
    command = [sys.executable, os.path.abspath(__file__), "--http-child", "--child-manifest", manifest,
               "--child-output", output, "--num-cpus", str(args.num_cpus), "--image-size", str(args.image_size),
               "--shard-rows", str(args.shard_rows), "--ray-address", args.ray_address]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"HTTP ingest child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, figures["cpu_s"], figures["images_per_s"]


def run_img2dataset(args: argparse.Namespace, urls: str, output: str, rows: int) -> tuple[float, float]:
    """(whole-process seconds, CPU seconds) of img2dataset on the URL list (`--i2d-processes` × `--i2d-threads`, Parquet out,
    resized and centre-cropped to the ingest size); raises unless every URL came out."""
    shutil.rmtree(output, ignore_errors=True)
    command = [args.img2dataset, "--url_list", urls, "--input_format", "parquet", "--url_col", "url",
               "--output_format", "parquet", "--output_folder", output, "--processes_count",
               str(args.i2d_processes), "--thread_count", str(args.i2d_threads), "--image_size",
               str(args.image_size), "--resize_mode", "center_crop", "--enable_wandb", "False"]
    cpu, start = children_cpu_s(), time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    seconds, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    if done.returncode:
        raise RuntimeError(f"img2dataset failed ({done.returncode}):\n{done.stderr[-3000:]}")
    ok = sum(json.loads(Path(output, f).read_text())["successes"] for f in os.listdir(output)
             if f.endswith("_stats.json"))
    if ok != rows:
        raise RuntimeError(f"img2dataset wrote {ok} of {rows} images: see {output}")
    return seconds, cpu


def compare_http(args: argparse.Namespace, manifest: str, n_images: int) -> dict[str, float]:
    """(h): our ingest (segmenter none) and img2dataset, whole processes, `--runs` each, interleaved so load
    drifts hit both; medians."""
    nginx = shutil.which(args.nginx) or args.nginx
    if not os.path.exists(nginx):
        print(f"(h) skipped: no nginx at {args.nginx!r} (apt-get install nginx-light, or --nginx PATH)")
        return {}
    work = os.path.join(os.path.abspath(args.work_dir), "http")
    os.makedirs(work, exist_ok=True)
    server, base_url = start_nginx(nginx, os.path.dirname(manifest), work)
    try:
        ours_manifest, urls = http_manifests(manifest, base_url, args.http_repeat, work)
        rows = n_images * args.http_repeat
        print(f"(h) {rows} URLs ({n_images} images under {args.http_repeat} ids) on nginx {base_url}, "
              f"→ {args.image_size} px, {args.runs} whole-process runs each")
        if not args.img2dataset:
            print("(h) img2dataset column skipped: give --img2dataset PATH (its own venv: python3 -m venv V; "
                  "V/bin/pip install img2dataset==1.47.0; --img2dataset V/bin/img2dataset)")
        ours, ours_cpu, inside, theirs, theirs_cpu = [], [], [], [], []
        for run in range(args.runs):
            seconds, cpu, rate = run_ours_http(args, ours_manifest, os.path.join(work, "out_ours"))
            ours.append(seconds)
            ours_cpu.append(cpu)
            inside.append(rate)
            line = f"(h) run {run + 1}: ours {seconds:.1f} s, {cpu:.0f} CPU s ({rate:.0f} images/s inside the stage)"
            if args.img2dataset:
                seconds, cpu = run_img2dataset(args, urls, os.path.join(work, "out_img2dataset"), rows)
                theirs.append(seconds)
                theirs_cpu.append(cpu)
                line += f"; img2dataset {seconds:.1f} s, {cpu:.0f} CPU s"
            print(f"{line}; load {load()}", flush=True)
        dead = dead_host(args, ours_manifest, work) if args.dead_urls else {}
    finally:
        server.terminate()
        server.wait()
    figures = {**dead, "h_ours_s": statistics.median(ours), "h_ours_cpu": statistics.median(ours_cpu),
               "h_inside": statistics.median(inside), "h_rows": rows}
    if theirs:
        figures["h_img2dataset_s"] = statistics.median(theirs)
        figures["h_img2dataset_cpu"] = statistics.median(theirs_cpu)
    return figures


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="GeoWorld images served over HTTP")
    parser.add_argument("--source-size", type=int, default=384, help="stored image size (decode cost)")
    parser.add_argument("--shard-rows", type=int, default=IngestConfig.shard_rows,
                        help="ingest.shard_rows: rows per chunk, the stage's unit of work")
    parser.add_argument("--image-size", type=int, default=IngestConfig.image_size, help="output size (both tools)")
    parser.add_argument("--runs", type=int, default=3, help="whole-process runs of each tool (median)")
    parser.add_argument("--http-repeat", type=int, default=6, help="each image under this many ids (URLs)")
    parser.add_argument("--img2dataset", help="the img2dataset executable (its own venv); none: column skipped")
    parser.add_argument("--i2d-processes", type=int, default=2, help="img2dataset --processes_count")
    parser.add_argument("--i2d-threads", type=int, default=16, help="img2dataset --thread_count")
    parser.add_argument("--nginx", default="nginx", help="the nginx executable serving the images")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the benchmark's Ray")
    parser.add_argument("--ray-address", default="local", help='"local": a private Ray for this run')
    # the same default as ingest.py's: the GeoWorld it generated for (a) is reused, not generated again
    parser.add_argument("--work-dir", default="runs/bench_ingest", help="local folder (cache, outputs)")
    parser.add_argument("--live-urls", type=int, default=2000, help="(d): rows served as they are")
    parser.add_argument("--dead-urls", type=int, default=400, help="(d): rows on a host that is down; 0: skip (d)")
    parser.add_argument("--http-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dead-host-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-manifest", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.http_child:
        return http_child(args)
    if args.dead_host_child:
        return dead_host_child(args)

    cores = min(args.num_cpus, os.cpu_count() or 1)
    print(f"machine: {os.cpu_count()} cores, Ray given {args.num_cpus} CPUs; load average {load()}")
    # nginx serves a local folder, so the GeoWorld is always on local disk here
    manifest = geoworld(storage.join(os.path.abspath(args.work_dir), f"geoworld_{args.images}x{args.source_size}"),
                        args.images, args.source_size, None)
    figures = compare_http(args, manifest, pq.read_table(manifest).num_rows)

    print(f"load average after: {load()}")
    print("summary:")
    verdicts = []
    if "d_seconds" in figures:
        print(f"  (d) a host that is down ({figures['d_dead']} URLs): {figures['d_seconds']:.1f} s, "
              f"{figures['d_retries']} retries")
    if "h_ours_s" in figures:
        rows, ours = figures["h_rows"], figures["h_ours_s"]
        print(f"  (h) HTTP, {rows:.0f} URLs on nginx (loopback), median of {args.runs} whole-process runs:")
        print(f"      {'':<24}{'seconds':>9}{'images/s':>10}{'per core':>10}{'CPU s':>8}")
        print(f"      {'ours (segmenter none)':<24}{ours:>9.1f}{rows / ours:>10.0f}{rows / ours / cores:>10.0f}"
              f"{figures['h_ours_cpu']:>8.0f}   ({figures['h_inside']:.0f} images/s inside the stage)")
        if "h_img2dataset_s" in figures:
            theirs = figures["h_img2dataset_s"]
            print(f"      {'img2dataset':<24}{theirs:>9.1f}{rows / theirs:>10.0f}{rows / theirs / cores:>10.0f}"
                  f"{figures['h_img2dataset_cpu']:>8.0f}")
            ok = ours <= theirs
            verdicts.append(ok)
            print(f"      ours / img2dataset time: {ours / theirs:.2f} (target <= 1.00): {'PASS' if ok else 'FAIL'}")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
