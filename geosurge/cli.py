"""`geosurge` command line: small tools around the library (the pipeline itself runs from workflows/)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from geosurge.data.geoworld import GeoWorldConfig, generate_geoworld
from geosurge.data.storage import S3Config


def _synth(args: argparse.Namespace) -> int:
    config = GeoWorldConfig(
        num_images=args.num_images,
        image_size=args.image_size,
        seed=args.seed,
        landmark_share=args.landmark_share,
    )
    s3 = S3Config(endpoint_url=args.s3_endpoint_url) if args.s3_endpoint_url else None
    manifest = generate_geoworld(config, args.root, s3=s3, progress=not args.quiet)
    print(f"GeoWorld {dataclasses.asdict(config)} → manifest {manifest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geosurge", description="GeoSURGE tools")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="generate a GeoWorld: synthetic geotagged images + label maps + manifest")
    defaults = GeoWorldConfig()
    synth.add_argument("root", help="output root: a local folder or s3://bucket/prefix")
    synth.add_argument("--num-images", type=int, default=defaults.num_images)
    synth.add_argument("--image-size", type=int, default=defaults.image_size)
    synth.add_argument("--seed", type=int, default=defaults.seed)
    synth.add_argument("--landmark-share", type=float, default=defaults.landmark_share)
    synth.add_argument("--s3-endpoint-url", help="S3 endpoint for s3:// roots (credentials from the AWS chain)")
    synth.add_argument("--quiet", action="store_true", help="no progress lines")
    synth.set_defaults(run=_synth)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
