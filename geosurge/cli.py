"""`geosurge`: the one command line. The pipeline and its parts (`run`, `retrain`, `eval`, `ingest`, `plan`), the
consumer's tools (`predict`, `locate-text`) and the data tools (`synth`, `train-segmenter`). Every pipeline command
takes `--config FILE` (repeatable) and `--set key.path=value`; `workflows/*.py` (the Ray-job entry points) run the
same commands. A user's mistake is one line on stderr and exit code 2 (`--verbose`: with its traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback

from geosurge.config import GeoWorldConfig, PipelineConfig, add_config_arguments, config_from_args
from geosurge.data.geoworld import generate_geoworld
from geosurge.errors import EXIT_USER_ERROR, UserError
from geosurge.orchestration.retraining import EXIT_LOCKED, LockHeld
from geosurge.redaction import redact_uri
from geosurge.storage import S3Config


def _synth(args: argparse.Namespace) -> int:
    config = GeoWorldConfig(
        num_images=args.num_images,
        image_size=args.image_size,
        seed=args.seed,
        landmark_share=args.landmark_share,
        id_prefix=args.id_prefix,
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
    truths = args.truth or []
    if truths and len(truths) != len(args.photos):
        return fail(f"--truth is given {len(truths)} time(s) for {len(args.photos)} photo(s): give one LAT,LON per "
                    "photo, in the photos' order")
    truth_of = dict(zip(args.photos, truths))
    for problem in problems:  # reported, and the other photos are still predicted
        print(f"geosurge predict: error: {problem}", file=sys.stderr)
    if not photos:
        return EXIT_USER_ERROR

    for var, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(var, value)  # a clean terminal: results on stdout, no loading bars
    import mlflow
    from mlflow.exceptions import MlflowException

    from geosurge.orchestration.preflight import check_tracking_database

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    check_tracking_database(mlflow.get_tracking_uri())  # before MLflow creates an empty database there
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except (MlflowException, OSError) as e:
        return fail(f"cannot load model {args.model!r} from tracking URI {mlflow.get_tracking_uri()}: "
                    f"{getattr(e, 'message', e)}")
    try:
        predictions = model.predict([data for _, data in photos], params={"k": args.k})
    except MlflowException as e:
        return fail(e.message)

    from geosurge.geo.distance import haversine_km

    for (name, _), prediction in zip(photos, predictions):
        print(f"{name}")
        print(f"  {'rank':>4} {'lat':>9} {'lon':>10} {'score':>10}  place")
        for rank, c in enumerate(prediction.top_k, 1):
            where = ", ".join(part for part in (c.place.name, c.place.admin1, c.place.country_code) if part)
            print(f"  {rank:>4} {c.lat:>9.4f} {c.lon:>10.4f} {c.score:>10.4g}  {where} ({c.place.distance_km:.0f} km away)")
        if name in truth_of:
            (lat, lon), top = truth_of[name], prediction.top_k[0]
            print(f"  truth {lat:.4f}, {lon:.4f}: the top place is {float(haversine_km(top.lat, top.lon, lat, lon)):,.0f} "
                  "km from it")
    if args.map:
        from geosurge.eval.plots import BeliefPanel, belief_map

        # the model's whole belief (every finest cell, or GeoCLIP's gallery), not only its top k
        beliefs = model.unwrap_python_model().locator.beliefs_bytes([data for _, data in photos])
        panels = []
        for (name, _), b in zip(photos, beliefs):
            true_lat, true_lon = truth_of.get(name, (None, None))
            panels.append(BeliefPanel(b.lat, b.lon, b.prob, b.cell, top_k=args.k, true_lat=true_lat,
                                      true_lon=true_lon, title=f"{Path(name).name} ({args.model})"))
        print(f"map: {belief_map(args.map, panels)}")
    return 1 if problems else 0


def _lat_lon(text: str) -> tuple[float, float]:
    """`--truth LAT,LON` in degrees."""
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON in degrees (e.g. 48.8584,2.2945), got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise argparse.ArgumentTypeError(f"latitude must be in [-90, 90] and longitude in [-180, 180], got {text!r}")
    return lat, lon


# ------------------------------------------------------------------------------------------ pipeline commands
# Heavy imports (Ray, torch, MLflow) happen inside each command, after the console is set up, so that `--help`
# and a mistake in the arguments answer at once and a library's import-time chatter goes to the run's log.


def _config(args: argparse.Namespace) -> PipelineConfig:
    """The run's config from --config/--set; a missing file or an unknown key is the user's mistake."""
    try:
        return config_from_args(args)
    except FileNotFoundError as e:
        raise UserError(str(e), "give the path of a YAML config file (presets are in configs/)") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"config: {e}", "fix the --config file or --set override (sections and keys: "
                        "geosurge/config.py)") from None


def _quiet(config: PipelineConfig, args: argparse.Namespace) -> None:
    from geosurge import console
    from geosurge.layout import RunFolder

    console.quiet_console(RunFolder(config.output_dir).logs, verbose=args.verbose)


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    _quiet(config, args)
    from geosurge.orchestration.preflight import check_run

    check_run(config)
    from geosurge.orchestration.pipeline import STAGES, run_pipeline

    if unknown := [stage for stage in args.force if stage not in STAGES]:
        raise UserError(f"--force {' '.join(unknown)}: no such stage", f"the stages are {', '.join(STAGES)}")
    return run_pipeline(config, force=args.force)


def _retrain(args: argparse.Namespace) -> int:
    config = _config(args)
    _quiet(config, args)
    from geosurge.orchestration.preflight import check_retrain

    check_retrain(config)
    from geosurge.orchestration.retrain import run_retrain

    return run_retrain(config)


def _eval(args: argparse.Namespace) -> int:
    config = _config(args)
    _quiet(config, args)
    import json

    from geosurge.eval.benchmark import default_model_uri
    from geosurge.orchestration.preflight import check_eval

    check_eval(config, default_model_uri(config))
    from geosurge.eval.job import outcome_json, run_eval_job
    from geosurge.orchestration.steps import promotion_lock
    from geosurge.runtime import init_ray

    init_ray(config)
    with promotion_lock(config) as lock:  # one eval job decides and moves the champion at a time
        outcome = run_eval_job(config, before_promote=lock.check)
    for role, results in (("challenger", outcome.challenger), ("champion", outcome.champion)):
        for result in results.values():
            print(f"{role}: {result.summary()}")
            for warning in result.warnings:
                print(f"  warning: {warning}")
    print(f"\n{outcome.table()}\n")
    if outcome.decision is None:
        print(f"decision: none ({outcome.model_uri} is not a registered model version)")
    else:
        moved = "champion alias moved" if outcome.alias_moved else "champion alias unchanged"
        print(f"decision: {outcome.decision.action} — {outcome.decision.reason} ({moved})")
    print(json.dumps({"mlflow_tracking_uri": redact_uri(config.resolved_tracking_uri), "mlflow_run_id": outcome.run_id,
                      "decision": json.loads(outcome_json(outcome))["decision"]}, indent=2))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    config = _config(args)
    _quiet(config, args)
    from geosurge.orchestration.preflight import check_ingest
    from geosurge.segmentation.specs import GEOWORLD_SEGMENTER, GROUND_TRUTH_SEGMENTER

    if args.manifests:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, manifest=args.manifests))
    if config.ingest.segmenter in (GEOWORLD_SEGMENTER, GROUND_TRUTH_SEGMENTER):
        raise UserError(f"ingest.segmenter={config.ingest.segmenter} is made by `geosurge run` from a GeoWorld",
                        "set ingest.segmenter to a hub id, a checkpoint folder (local or s3://), random or none")
    check_ingest(config)
    import numpy as np

    from geosurge import storage
    from geosurge.data.ingest import ingest
    from geosurge.data.manifest import manifest_coordinates
    from geosurge.geo.geocells import GeocellHierarchy
    from geosurge.layout import DataRoot
    from geosurge.runtime import init_ray

    root, s3 = DataRoot(config.resolved_data_root), config.s3
    if storage.exists(root.geocells, s3):
        hierarchy = GeocellHierarchy.load(root.geocells, s3)
        print(f"geocells: {hierarchy} from {root.geocells}")
    else:  # as the pipeline's geocells stage: from the manifests' training coordinates
        parts = [manifest_coordinates(uri, "train", s3, format=config.ingest.manifest_format,
                                      images_root=config.ingest.images_root, val_fraction=config.data.val_fraction)
                 for uri in config.data.manifests]
        g = config.geocells
        hierarchy = GeocellHierarchy.build(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                           g.tau_max, g.tau_min, g.max_resolution)
        hierarchy.save(root.geocells, s3)
        print(f"geocells: built {hierarchy} → {root.geocells}")
    init_ray(config)
    for uri in config.data.manifests:  # each prints its own summary; a rerun resumes by chunk
        ingest(uri, root.ingest.root, config.ingest, s3, hierarchy=hierarchy, val_fraction=config.data.val_fraction)
    print(f"shards: {root.ingest.shards}\nquarantine: {root.ingest.quarantine}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from geosurge.orchestration.capacity import plan_command

    return plan_command(_config(args), args)


def _locate_text(args: argparse.Namespace) -> int:
    from geosurge.eval.plots import world_map
    from geosurge.serving.text_query import locate_text_command

    return locate_text_command(args, draw_map=world_map)


def _build_ops(args: argparse.Namespace) -> int:
    from geosurge.train.deepspeed_ops import build_deepspeed_ops

    outcome = build_deepspeed_ops()
    for op, what in outcome.items():
        print(f"build-ops: {op}: {what}", flush=True)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(chosen=next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"geosurge {args.command}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except LockHeld as e:  # another run holds a bucket lock (retraining, or the eval job's promotion lock)
        print(f"geosurge {args.command}: another run holds the lock, so this one stops: {e}", file=sys.stderr,
              flush=True)
        return EXIT_LOCKED
    except Exception:  # noqa: BLE001 — a bug, not a mistake: its traceback on the console, whatever excepthook a library set
        traceback.print_exc()
        return 1


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser. `plan` and `locate-text` take their arguments from their own modules, imported
    only when `chosen` names them."""
    verbose = "everything on the console (Ray, DeepSpeed, transformers logs) and tracebacks"
    parser = argparse.ArgumentParser(prog="geosurge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help=verbose)
    common = argparse.ArgumentParser(add_help=False)  # --verbose after the command too
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose)
    commands = parser.add_subparsers(dest="command", required=True)

    def pipeline_command(name: str, run, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, description=help, parents=[common])
        add_config_arguments(command)
        command.set_defaults(run=run)
        return command

    run = pipeline_command("run", _run, "the full pipeline: data → segmenter → geocells → ingest (Ray Data) → train "
                           "(Ray Train + DeepSpeed) → register (MLflow) → eval job; finished stages are skipped")
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="redo this stage (and so everything after it) even if it is recorded as done: data, "
                     "segmenter, geocells, ingest, train, register or evaluate")
    pipeline_command("retrain", _retrain, "scheduled retraining: new manifests under retrain.incoming → ingest → "
                     "fine-tune @champion → register @challenger → eval job (exit 75: another run holds the lock)")
    pipeline_command("eval", _eval, "the eval job: eval.model_uri (default @challenger) vs @champion on "
                     "eval.benchmarks; promote if better")
    ingest = pipeline_command("ingest", _ingest, "Ray Data ingest of manifests into <data_root>/ingest (shards + "
                              "quarantine), with the data root's geocells (built from the manifests if none)")
    ingest.add_argument("manifests", nargs="*", metavar="MANIFEST", help="default: data.manifest")
    plan = pipeline_command("plan", _plan, "capacity plan: what a run of this config needs (machines, time)")
    if chosen == "plan":
        from geosurge.orchestration.capacity import add_plan_arguments

        add_plan_arguments(plan)
    locate = commands.add_parser("locate-text", help="where does a text describe? places from a registered model",
                                 parents=[common])
    locate.set_defaults(run=_locate_text)
    if chosen == "locate-text":
        from geosurge.serving.text_query import add_locate_text_arguments

        add_locate_text_arguments(locate)

    synth = commands.add_parser("synth", parents=[common],
                                help="generate a GeoWorld: synthetic geotagged images + label maps + manifest")
    defaults = GeoWorldConfig()
    synth.add_argument("root", help="output root: a local folder or s3://bucket/prefix")
    synth.add_argument("--num-images", type=int, default=defaults.num_images)
    synth.add_argument("--image-size", type=int, default=defaults.image_size)
    synth.add_argument("--seed", type=int, default=defaults.seed)
    synth.add_argument("--landmark-share", type=float, default=defaults.landmark_share)
    synth.add_argument("--id-prefix", default=defaults.id_prefix,
                       help="image ids are PREFIX_<n>: give new imagery for retraining its own (default: %(default)s)")
    synth.add_argument("--s3-endpoint-url", help="S3 endpoint for s3:// roots (credentials from the AWS chain)")
    synth.add_argument("--quiet", action="store_true", help="no progress lines")
    synth.set_defaults(run=_synth)

    seg = commands.add_parser("train-segmenter", help="train a small SegFormer on a GeoWorld's ground-truth label "
                              "maps; saves a transformers checkpoint folder for ingest.segmenter",
                              parents=[common])
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

    build_ops = commands.add_parser("build-ops", parents=[common],
                                    help="compile DeepSpeed's C++ ops for this machine once, into the cache every "
                                    "training run uses ($TORCH_EXTENSIONS_DIR; `make install` runs it)")
    build_ops.set_defaults(run=_build_ops)

    predict = commands.add_parser("predict", help="where were these photos taken? top-k places from a registered "
                                     "model (exit 1: some photos unreadable, the rest predicted)", parents=[common])
    predict.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--model", default="models:/geosurge@champion", help="MLflow model URI (default: %(default)s)")
    predict.add_argument("--tracking-uri", help="MLflow tracking server or database (default: MLFLOW_TRACKING_URI)")
    predict.add_argument("--k", type=_positive_int, default=5, help="places per photo (default: %(default)s)")
    predict.add_argument("--map", metavar="PNG", help="also draw the model's belief per photo (the probability of "
                         "every place it considers, log scale; the top k numbered) on world maps, to this file")
    predict.add_argument("--truth", metavar="LAT,LON", type=_lat_lon, action="append", help="where a photo was really "
                         "taken: once per photo, in order; printed as the top place's error and starred on the map (a negative "
                         "latitude needs '=': --truth=-33.86,151.21)")
    predict.set_defaults(run=_predict)

    return parser


if __name__ == "__main__":
    sys.exit(main())
