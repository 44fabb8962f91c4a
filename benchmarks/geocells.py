"""Benchmark: build the 7-level H3 geocell hierarchy at MP-16 scale (4.72 M coordinates).

Coordinates follow a real photo distribution: they are drawn from GeoCLIP's 100K GPS gallery (shipped in the
`geoclip` package) with Gaussian jitter, a mix of 0.01 deg (same spot) and 0.5 deg (same region).
Targets: build under 60 s and process peak RSS under 4 GB.

    python benchmarks/geocells.py [--n 4720000] [--seed 0]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from geosurge.data.gps_gallery import sample_photo_coordinates
from geosurge.geo.geocells import GeocellHierarchy

TAU_MAX = (25000, 10000, 5000, 2500, 1000, 750, 500)
TAU_MIN = 50
TARGET_BUILD_S = 60.0
TARGET_PEAK_GB = 4.0


def peak_rss_gb() -> float:
    """Process peak resident memory in GB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4_720_000, help="number of training coordinates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    lat, lon = sample_photo_coordinates(args.n, args.seed)
    rss_before = peak_rss_gb()
    t0 = time.perf_counter()
    cells = GeocellHierarchy.build(lat, lon, TAU_MAX, TAU_MIN)
    build_s = time.perf_counter() - t0
    rss_after = peak_rss_gb()

    m = min(100_000, args.n)
    t0 = time.perf_counter()
    cells.assign(lat[:m], lon[:m])
    assign_s = time.perf_counter() - t0

    print(f"points:               {args.n:,}")
    print(f"tau_max / tau_min:    {list(TAU_MAX)} / {TAU_MIN}")
    print(f"build time:           {build_s:.2f} s")
    print(f"peak RSS before/after build: {rss_before:.2f} / {rss_after:.2f} GB")
    for lvl, k in enumerate(cells.num_cells):
        kept = int(cells.levels[lvl]["count"].sum())
        print(f"  level {lvl}: {k:6d} cells, {kept:,} points kept ({100 * kept / args.n:.2f}%)")
    print(f"assign {m:,} points:  {assign_s:.2f} s")
    ok_time = build_s < TARGET_BUILD_S
    ok_mem = rss_after < TARGET_PEAK_GB
    print(f"build time < {TARGET_BUILD_S:.0f} s: {'PASS' if ok_time else 'FAIL'}")
    print(f"peak RSS < {TARGET_PEAK_GB:.0f} GB:   {'PASS' if ok_mem else 'FAIL'}")
    return 0 if ok_time and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
