"""`geosurge` command line: small tools around the library (the pipeline itself runs from workflows/)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from geosurge.config import GeoWorldConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.storage import S3Config


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


def _train_segmenter(args: argparse.Namespace) -> int:
    # imported here: torch and transformers are heavy, and the other commands do not need them
    from geosurge.train.segmenter import SegmenterTrainConfig, train_geoworld_segmenter

    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "image_size", "max_train_images",
                                               "seed", "num_threads") if getattr(args, k) is not None}
    config = SegmenterTrainConfig(**overrides, progress=not args.quiet)
    s3 = S3Config(endpoint_url=args.s3_endpoint_url) if args.s3_endpoint_url else None
    result = train_geoworld_segmenter(args.manifest, args.out_dir, config, s3=s3)
    print(f"{result.summary()}\nuse it with: --set ingest.segmenter={result.output_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from geosurge.data.images import ImageRejected, ImageSpec, decode_image

    def fail(message: str) -> int:
        print(f"geosurge predict: error: {message}", file=sys.stderr)
        return 2

    # every photo is checked before the (slow) model load, and every bad one is reported
    photos, problems = [], []
    for name in args.photos:
        path = Path(name)
        if not path.is_file():
            problems.append(f"{name}: no such file")
            continue
        data = path.read_bytes()
        try:
            decode_image(data, ImageSpec())
        except ImageRejected as e:
            problems.append(f"{name}: not a usable image ({e.reason}: {e.detail})")
            continue
        photos.append((name, data))
    if problems:
        return fail("; ".join(problems))

    for var, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(var, value)  # a clean terminal: results on stdout, no loading bars
    import mlflow
    from mlflow.exceptions import MlflowException

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except (MlflowException, OSError) as e:
        return fail(f"cannot load model {args.model!r} from tracking URI {mlflow.get_tracking_uri()}: "
                    f"{getattr(e, 'message', e)}")
    try:
        predictions = model.predict([data for _, data in photos], params={"k": args.k})
    except MlflowException as e:
        return fail(e.message)

    for (name, _), prediction in zip(photos, predictions):
        print(f"{name}")
        print(f"  {'rank':>4} {'lat':>9} {'lon':>10} {'score':>10}  place")
        for rank, c in enumerate(prediction.top_k, 1):
            where = ", ".join(part for part in (c.place.name, c.place.admin1, c.place.country_code) if part)
            print(f"  {rank:>4} {c.lat:>9.4f} {c.lon:>10.4f} {c.score:>10.4g}  {where} ({c.place.distance_km:.0f} km away)")
    if args.map:
        from geosurge.eval.plots import world_map

        path = world_map(args.map, [p.top_k[0].lat for p in predictions], [p.top_k[0].lon for p in predictions],
                         labels=[Path(name).name for name, _ in photos], title=f"{args.model}: top prediction per photo")
        print(f"map: {path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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

    seg = commands.add_parser("train-segmenter", help="train a small SegFormer on a GeoWorld's ground-truth label "
                              "maps; saves a transformers checkpoint folder for ingest.segmenter")
    seg.add_argument("manifest", help="GeoWorld manifest URI (needs label_uri and train/val splits)")
    seg.add_argument("out_dir", help="local folder for the checkpoint and geosurge_metrics.json")
    seg.add_argument("--epochs", type=int)
    seg.add_argument("--batch-size", type=int)
    seg.add_argument("--lr", type=float)
    seg.add_argument("--image-size", type=int, help="train and evaluate at this size (default: ingest.image_size)")
    seg.add_argument("--max-train-images", type=int)
    seg.add_argument("--seed", type=int)
    seg.add_argument("--num-threads", type=int, help="torch threads (default: torch's own)")
    seg.add_argument("--s3-endpoint-url", help="S3 endpoint for s3:// manifests (credentials from the AWS chain)")
    seg.add_argument("--quiet", action="store_true", help="no progress lines")
    seg.set_defaults(run=_train_segmenter)

    predict = commands.add_parser("predict", help="where were these photos taken? top-k places from a registered model")
    predict.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--model", default="models:/geosurge@champion", help="MLflow model URI (default: %(default)s)")
    predict.add_argument("--tracking-uri", help="MLflow tracking server or database (default: MLFLOW_TRACKING_URI)")
    predict.add_argument("--k", type=_positive_int, default=5, help="places per photo (default: %(default)s)")
    predict.add_argument("--map", metavar="PNG", help="also draw each photo's top place on a world map, to this file")
    predict.set_defaults(run=_predict)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
