"""The full pipeline, stage by stage (what `workflows/full_pipeline.py` runs):

data (your manifests from `data.manifest`, or a generated GeoWorld when none is given) → segmenter (trained on
GeoWorld's label maps when ingest.segmenter=geoworld) → geocells (from the manifests' training coordinates) → ingest (Ray Data: fetch, decode, segment, cells →
shards + quarantine) → train (Ray Train + DeepSpeed) → register (evaluate the test split, MLflow run, new
version at @challenger) → eval job (challenger vs @champion on the fixed benchmarks; promote if better).

Every stage records what it made and the hash of the config that made it (`<data_root>/_stages/`): a rerun
skips finished stages and redoes the ones whose config (or whose inputs) changed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import mlflow
import numpy as np

from geosurge import console, storage
from geosurge.config import PipelineConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.manifest import list_manifest_files, manifest_coordinates
from geosurge.data.shards import split_rows
from geosurge.eval.evaluate import baseline_metrics, evaluate_split
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.geo.metrics import format_metrics_table
from geosurge.layout import DataRoot, RunFolder
from geosurge.models import create_model
from geosurge.orchestration.ledger import (
    StageLedger,
    StageRecord,
    StageRunner,
    stage_key,
)
from geosurge.orchestration.steps import (
    evaluate_version,
    ingest_manifests,
    register_model,
    train_model,
)
from geosurge.runtime import init_ray
from geosurge.segmentation.segmenter import (
    GEOWORLD_SEGMENTER,
    GROUND_TRUTH_SEGMENTER,
    Segmenter,
    is_random_spec,
)
from geosurge.tracking.runs import start_mlflow_run
from geosurge.train.segmenter import train_geoworld_segmenter
from geosurge.train.trainer import consolidated_state_dict

STAGES = ["data", "segmenter", "geocells", "ingest", "train", "register", "evaluate"]


def stage_keys(config: PipelineConfig) -> dict[str, str]:
    """Each stage's key: the config sections it reads and the keys of the stages it consumes. User manifests are
    keyed by their identity (size and modification time, or ETag), so a changed manifest redoes ingest."""
    c = dataclasses.asdict(config)
    data = manifest_identity(config.data.manifests, config.s3) if config.data.manifests else c["geoworld"]
    k = {"data": stage_key(data, c["data_root"])}
    k["segmenter"] = stage_key(c["segmenter"], c["ingest"]["image_size"], c["ingest"]["label_grid"], k["data"])
    reading = (c["data"]["val_fraction"], c["ingest"]["manifest_format"], c["ingest"]["images_root"])
    k["geocells"] = stage_key(c["geocells"], k["data"], *reading)
    segmenter_key = k["segmenter"] if config.ingest.segmenter == GEOWORLD_SEGMENTER else None
    k["ingest"] = stage_key(c["ingest"], k["data"], k["geocells"], segmenter_key, reading[0])
    k["train"] = stage_key(c["model"], c["train"], k["ingest"])
    k["register"] = stage_key(c["eval"]["split"], c["eval"]["top_k"], c["tracking"], k["train"])
    k["evaluate"] = stage_key(c["eval"], k["register"])
    assert list(k) == STAGES
    return k


def check_pipeline_config(config: PipelineConfig) -> None:
    """Settings the full pipeline refuses before it starts anything."""
    if config.ingest.segmenter == GROUND_TRUTH_SEGMENTER:
        raise ValueError("ingest.segmenter=ground_truth is an oracle for benchmarks: the registered model "
                         "would have no segmenter for new photos")
    if config.data.manifests and config.ingest.segmenter == GEOWORLD_SEGMENTER:
        raise ValueError("ingest.segmenter=geoworld trains a segmenter on GeoWorld's label maps, and data.manifest "
                         "names your own imagery: set ingest.segmenter to a hub id (e.g. the paper's "
                         "shi-labs/oneformer_ade20k_swin_large), a checkpoint folder (local or s3://), or none")
    if not 0 <= config.data.val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
    if config.ingest.segmenter == GEOWORLD_SEGMENTER:  # the segmenter trains at the ingest size: check it now
        dataclasses.replace(config.segmenter, image_size=config.ingest.image_size)


def manifest_identity(manifests: list[str], s3) -> list[dict]:
    """What identifies the content of every manifest file: `storage.stat` of each file (a folder's files listed)."""
    files: list[str] = []
    for uri in manifests:
        files += [uri] if storage.is_http(uri) else list_manifest_files(uri, s3)
    return [storage.stat(f, s3) for f in files]


def run_pipeline(config: PipelineConfig, force: list[str] | None = None) -> int:
    """Run (or finish) every stage of the pipeline for `config`; `force` redoes the named stages and everything
    after them. Prints a summary at the end; returns the exit code."""
    check_pipeline_config(config)
    started = time.time()
    keys = stage_keys(config)
    stages = StageRunner(StageLedger(config.resolved_data_root, config.s3), keys, force)
    print(f"GeoSURGE pipeline '{config.run_name}' (config {config.fingerprint()}); data root {config.resolved_data_root}")
    if stages.all_done:
        print("every stage is recorded as done with this config: nothing to do (--force STAGE redoes one)")
        return summarise(config, stages, started)

    init_ray(config)
    job = PipelineJob(config, keys, start_mlflow_run(config))
    job.manifests = stages.run("data", job.data_title(), job.make_data).summary["manifests"]
    job.use_segmenter(stages.run("segmenter", f"ingest.segmenter={config.ingest.segmenter}", job.make_segmenter))
    stages.run("geocells", "adaptive H3 hierarchy from the training coordinates", job.make_geocells)
    job.load_geocells()
    job.shards_uri = stages.run("ingest", "Ray Data fetch → decode → segment → cells → shards",
                                job.make_shards).outputs["shards"]
    tc = config.train
    job.checkpoint = stages.run("train", f"Ray Train × {tc.num_workers} workers, DeepSpeed ZeRO-{tc.zero_stage}",
                                job.make_checkpoint).outputs["checkpoint"]
    job.version = stages.run("register", f"evaluate the '{config.eval.split}' split, new version at "
                             f"@{config.tracking.alias}", job.make_version).summary["version"]
    mlflow.end_run()
    stages.run("evaluate", f"version {job.version} vs @{config.eval.champion_alias} on "
               f"{[b.name for b in config.eval.benchmarks]}", job.make_decision)
    return summarise(config, stages, started)


Made = tuple[dict[str, str], dict]  # a stage's (outputs by name → URI, summary)


class PipelineJob:
    """The stages' bodies, and what each hands the next (the manifest, segmenter, geocells, shards, checkpoint,
    version). Each `make_*` runs only when its stage is not recorded as done; `run_pipeline` fills the hand-offs
    from the stage records either way."""

    def __init__(self, config: PipelineConfig, keys: dict[str, str], run):
        self.config, self.keys, self.run = config, keys, run
        self.root, self.s3 = DataRoot(config.resolved_data_root), config.s3
        self.manifests: list[str] = []
        self.shards_uri = self.checkpoint = self.version = ""
        self.ingest_config = config.ingest
        self.hierarchy: GeocellHierarchy | None = None

    @functools.cached_property
    def train_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """The manifests' training coordinates, read once: the geocells and the median-guess baseline use them.
        Rows held out for validation (`data.val_fraction`) and test rows never shape the geocells."""
        ingest, val_fraction = self.config.ingest, self.config.data.val_fraction
        parts = [manifest_coordinates(uri, "train", self.s3, format=ingest.manifest_format,
                                      images_root=ingest.images_root, val_fraction=val_fraction)
                 for uri in self.manifests]
        return np.concatenate([lat for lat, _ in parts]), np.concatenate([lon for _, lon in parts])

    def data_title(self) -> str:
        manifests = self.config.data.manifests
        if not manifests:
            return f"GeoWorld, {self.config.geoworld.num_images} synthetic geotagged images (no data.manifest given)"
        return f"{len(manifests)} manifest(s): {', '.join(manifests)}"

    def make_data(self) -> Made:
        """GeoWorld when no manifest is given; else the user's manifests, those given by URL copied into the data
        root first (Ray tasks stream manifests from storage, and the copy pins what this run ingested)."""
        if not self.config.data.manifests:
            uri = generate_geoworld(self.config.geoworld, self.root.geoworld, self.s3)
            return {"manifest": uri}, {"manifests": [uri], "images": self.config.geoworld.num_images}
        manifests = []
        for uri in self.config.data.manifests:
            if storage.is_http(uri):
                copy = self.root.manifest_copy(uri)
                size = storage.copy_from_http(uri, copy, self.s3)
                print(f"data: {storage.redact_uri(uri)} → {copy} ({size / 1e6:.1f} MB)", flush=True)
                uri = copy
            files = list_manifest_files(uri, self.s3)  # fails clearly on a missing manifest
            print(f"data: {storage.redact_uri(uri)}: {len(files)} manifest file(s)", flush=True)
            manifests.append(uri)
        return {f"manifest{i}": uri for i, uri in enumerate(manifests)}, {"manifests": manifests}

    def make_segmenter(self) -> Made:
        config = self.config
        if config.ingest.segmenter != GEOWORLD_SEGMENTER:
            return {}, {"spec": config.ingest.segmenter, "trained_here": False}
        folder = self.root.segmenter(self.keys["segmenter"])
        seg_config = dataclasses.replace(config.segmenter, image_size=config.ingest.image_size,
                                         label_grid=config.ingest.label_grid)
        result = train_geoworld_segmenter(self.manifests[0], folder, seg_config, self.s3)  # prints its progress
        mlflow.log_dict(result.to_dict(), "segmenter_metrics.json")
        mlflow.log_metrics({"segmenter_val_miou": result.val.miou, "segmenter_val_pixel_accuracy": result.val.pixel_accuracy,
                            "segmenter_val_grid_accuracy": result.val.grid_accuracy})
        return {"folder": folder}, {"spec": folder, "trained_here": True, "val_miou": result.val.miou,
                                    "majority_baseline_miou": result.majority_baseline.miou}

    def use_segmenter(self, record: StageRecord) -> None:
        """Ingest (and the registered model) segment with the segmenter stage's result."""
        spec = record.summary["spec"]
        self.ingest_config = dataclasses.replace(self.config.ingest, segmenter=spec)
        if is_random_spec(spec):
            print(f"WARNING: the segmenter ({spec}) is RANDOMLY INITIALISED: label maps carry no meaning "
                  "(set ingest.segmenter=geoworld to train one here, or a hub id / checkpoint folder).")
        mlflow.set_tags({"segmenter": spec, "segmenter_random_init": str(is_random_spec(spec))})

    def make_geocells(self) -> Made:
        g, (lat, lon) = self.config.geocells, self.train_coordinates
        hierarchy = GeocellHierarchy.build(lat, lon, g.tau_max, g.tau_min, g.max_resolution)
        hierarchy.save(self.root.geocells, self.s3)
        print(f"{hierarchy} from {len(lat)} training coordinates → {self.root.geocells}")
        return {"geocells": self.root.geocells}, {"cells_per_level": list(hierarchy.num_cells)}

    def load_geocells(self) -> None:
        self.hierarchy = GeocellHierarchy.load(self.root.geocells, self.s3)
        mlflow.log_params({f"geocells.num_cells.level{i}": n for i, n in enumerate(self.hierarchy.num_cells)})

    def make_shards(self) -> Made:
        totals = ingest_manifests(self.manifests, self.root.ingest, self.ingest_config, self.s3, self.hierarchy,
                                  val_fraction=self.config.data.val_fraction)
        return ({"shards": totals.shards_uri, "quarantine": totals.quarantine_uri},
                {"rows_in": totals.rows_in, "shard_rows": totals.shard_rows,
                 "quarantined_by_reason": totals.quarantined_by_reason})

    def make_checkpoint(self) -> Made:
        # Ray Train resumes a run name's latest checkpoint: a changed config must not resume an older one
        train_config = dataclasses.replace(self.config, run_name=f"{self.config.run_name}-{self.keys['train'][:8]}")
        trained = train_model(train_config, self.shards_uri, self.hierarchy, self.root.geocells, self.run.info.run_id)
        return {"checkpoint": trained.checkpoint_path}, {
            k: v for k, v in trained.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    def make_version(self) -> Made:
        config, split = self.config, self.config.eval.split
        if split_rows(self.shards_uri, split, self.s3) == 0:
            # your own imagery has no test split (test images come from the benchmarks): check on the held-out rows
            print(f"register: the shards have no '{split}' rows; evaluating the held-out 'val' rows instead")
            split = "val"
        state_dict = consolidated_state_dict(self.checkpoint, self.s3)
        model = create_model(config.model, self.hierarchy, pretrained=False)  # trained weights follow
        model.load_state_dict(state_dict)
        metrics, predictions = evaluate_split(model, self.shards_uri, split, self.s3, config.eval.top_k,
                                              config.eval.batch_size, ten_crop=config.eval.ten_crop)
        reference = baseline_metrics(*self.train_coordinates, predictions.lat.to_numpy(), predictions.lon.to_numpy())
        mlflow.log_metrics({f"{split}_{k}": float(v) for k, v in metrics.items()})
        mlflow.log_metrics({f"{split}_median_guess_{k}": float(v) for k, v in reference.items()})
        mlflow.log_table(predictions, f"predictions_{split}.json")
        print(format_metrics_table({f"{config.model.name} ({split} shards at {config.ingest.image_size} px, "
                                    f"n={metrics['n']:.0f})": metrics,
                                    "median-coordinate guess": reference}))
        registered = dataclasses.replace(config, ingest=self.ingest_config)  # the segmenter the model was trained with
        segmenter = Segmenter(self.ingest_config.segmenter, config.ingest.label_grid, s3=self.s3)
        model_uri, version = register_model(state_dict, registered, self.hierarchy, segmenter, self.shards_uri, split,
                                             work_key=f"pipeline|{self.keys['register']}|{self.run.info.run_id}",
                                             checkpoint_uri=self.checkpoint, model=model)
        return {}, {"version": version, "model_uri": model_uri, "mlflow_run_id": self.run.info.run_id,
                    "split": split, "metrics": metrics, "median_guess": reference}

    def make_decision(self) -> Made:
        outcome = evaluate_version(self.config, self.version)
        decision = outcome.decision.to_dict() if outcome.decision else {}
        return {}, {"decision": decision, "alias_moved": outcome.alias_moved, "eval_run_id": outcome.run_id}


def summarise(config: PipelineConfig, stages: StageRunner, started: float) -> int:
    """The final report: where the time went, counts, metrics, the model version and its aliases, and where
    everything is."""
    from mlflow.tracking import MlflowClient

    records = stages.records
    register, ingested = records["register"].summary, records["ingest"].summary
    name = config.tracking.registered_model
    client = MlflowClient(config.resolved_tracking_uri)
    aliases = sorted(client.get_registered_model(name).aliases.items())
    print(f"\n=== done in {time.time() - started:.0f} s ===")
    seconds = stages.seconds()
    if seconds:
        print("stages: " + ", ".join(f"{stage} {s:.0f} s" for stage, s in seconds.items())
              + (f" (done before: {', '.join(stages.done)})" if stages.done else ""))
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(ingested["quarantined_by_reason"].items())) or "none"
    print(f"ingest: {ingested['rows_in']} in = {ingested['shard_rows']} in shards + "
          f"{sum(ingested['quarantined_by_reason'].values())} quarantined ({reasons})")
    split = register.get("split", config.eval.split)
    print(format_metrics_table({f"{config.model.name} v{register['version']} ({split} shards at "
                                f"{config.ingest.image_size} px)": register["metrics"],
                                "median-coordinate guess": register["median_guess"]}))
    # the eval job's table (stage 7) scores the same version on the benchmark's original images, which the
    # registered model resizes itself: a different input, so a different score
    print(f"(scored on the ingested shards; the eval job scores the benchmarks' original images, so its numbers "
          f"for v{register['version']} can differ)")
    if is_random_spec(records["segmenter"].summary["spec"]):
        print("(semantic label maps came from a randomly initialised segmenter)")
    decision = records["evaluate"].summary["decision"]
    print(f"promotion: {decision.get('action')} — {decision.get('reason')}")
    if console.log_dir():
        print(f"logs: {console.log_dir()} (driver.log: Ray, Ray Data, MLflow, DeepSpeed, transformers; workers.log: "
              "the Ray workers' output; --verbose shows them on the console)")
    summary = {
        "data_root": config.resolved_data_root,
        "manifests": [storage.redact_uri(m) for m in records["data"].summary["manifests"]],
        "segmenter": records["segmenter"].summary["spec"],
        "geocells": records["geocells"].outputs["geocells"],
        "shards": records["ingest"].outputs["shards"],
        "quarantine": records["ingest"].outputs["quarantine"],
        "checkpoint": records["train"].outputs["checkpoint"],
        "mlflow_tracking_uri": storage.redact_uri(config.resolved_tracking_uri),
        "mlflow_run_id": register["mlflow_run_id"],
        "logs": console.log_dir(),
        "model": f"{register['model_uri']} (version {register['version']})",
        "aliases": {alias: f"version {v}" for alias, v in aliases},
        "stages": {n: r.key for n, r in records.items()},
        "stage_seconds": seconds,  # the stages this run made
    }
    summary_path = Path(RunFolder(config.output_dir).summary)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"model: {summary['model']}; " + ", ".join(f"@{alias}: {v}" for alias, v in summary["aliases"].items()))
    print(f"summary: {summary_path} (data root, shards, quarantine, checkpoint, MLflow run, stage keys)")
    return 0
