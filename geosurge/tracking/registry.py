"""MLflow Model Registry: log a trained model as a pyfunc, register it, point an alias at it; load it back.

A registered version carries everything needed to answer without the training code's state (the bundle of
`geosurge.serving.write_bundle`) and the whole `geosurge` package it was trained with (`code_paths`), so a
consumer in a fresh process loads it with `mlflow.pyfunc.load_model` alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.tracking import MlflowClient

import geosurge
from geosurge.config import PipelineConfig
from geosurge.errors import UserError
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.layout import DataRoot
from geosurge.segmentation.segmenter import Segmenter
from geosurge.serving import GeoLocator, write_bundle
from geosurge.storage import redact_uri
from geosurge.tracking.model_card import metric_rows, registration_card
from geosurge.tracking.runs import log_training_shards

if TYPE_CHECKING:
    import torch

PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_model.py")  # models-from-code: MLflow runs it, nothing is pickled
PACKAGE_DIR = Path(geosurge.__file__).parent  # the whole package travels with every registered model
CHECKPOINT_TAG = "geosurge.checkpoint_uri"  # on the training run and the version: the checkpoint in storage
REGISTERED_BY_TAG, REGISTERED_BY = "geosurge.registered_by", "geosurge pipeline"  # on versions this code registers
SOURCE_RUN_TAG = "geosurge.source_run_id"  # the training run that registered the version
IDEMPOTENCY_TAG = "geosurge.idempotency_key"  # what was trained and in which run: one version per key


def load_locator(model_uri: str, tracking_uri: str | None = None) -> GeoLocator:
    """The `GeoLocator` inside a logged GeoSURGE model (`models:/name@alias`, `models:/name/3`, `runs:/…`): the
    torch model, its geocell hierarchy and its run config, for jobs that need more than `predict` (the eval
    job's batch inference, fine-tuning from the champion)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().locator


def log_and_register(
    state_dict: dict,
    config: PipelineConfig,
    hierarchy: GeocellHierarchy,
    segmenter: Segmenter,
    example_image: bytes,
    *,
    shards_uri: str | None = None,
    checkpoint_uri: str | None = None,
    parent_version: str | None = None,
    idempotency_key: str | None = None,
    tags: dict[str, str] | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[str, str]:
    """Log the pyfunc model in the active MLflow run, register a new version and point the alias at it.
    Returns (model URI by alias, version). `model`: the model holding `state_dict`, if at hand (`write_bundle`).

    The version gets its model card (`geosurge.tracking.model_card`): the training shards are logged as the run's
    "training" dataset (`shards_uri`, default the data root's ingest shards), `checkpoint_uri` is tagged on the
    run and the version, and `parent_version` (default: the run's `retrain.parent_version` tag) is recorded.

    Idempotent: a version tagged with `idempotency_key` (what was trained, and in which run) is reused, not
    registered again, so a job killed after registering and rerun does not add a duplicate. The key, the lineage
    (`REGISTERED_BY_TAG`, `SOURCE_RUN_TAG`) and `tags` are set in the same call that creates the version."""
    name, alias = config.tracking.registered_model, config.tracking.alias
    if idempotency_key and (existing := find_version_by_key(name, idempotency_key)) is not None:
        print(f"{name} version {existing} was registered by an earlier attempt (idempotency key {idempotency_key}): "
              "reused", flush=True)
        if mlflow.active_run():
            mlflow.set_tag(registered_run_tag(name, existing), "true")
        MlflowClient().set_registered_model_alias(name, alias, existing)
        return f"models:/{name}@{alias}", existing
    training_data = _log_training_data(config, shards_uri)
    run = mlflow.active_run()
    run_data = MlflowClient().get_run(run.info.run_id).data if run else None
    if parent_version is None and run_data is not None:
        parent_version = run_data.tags.get("retrain.parent_version")
    if checkpoint_uri:
        mlflow.set_tag(CHECKPOINT_TAG, redact_uri(checkpoint_uri))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_bundle(Path(tmp) / "bundle", state_dict, config, hierarchy, segmenter, model)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_ENTRY),
            artifacts={"bundle": str(bundle)},
            # records form, so the example is also a valid JSON scoring request; k becomes a serving param
            input_example=([{"image": example_image}], {"k": config.eval.top_k}),
            code_paths=[str(PACKAGE_DIR)],  # the model carries the geosurge code it was trained with
            pip_requirements=_pip_requirements(),
        )
    lineage = {REGISTERED_BY_TAG: REGISTERED_BY, SOURCE_RUN_TAG: run.info.run_id if run else "none",
               **({IDEMPOTENCY_TAG: idempotency_key} if idempotency_key else {}), **(tags or {})}
    version = str(mlflow.register_model(info.model_uri, name, tags=lineage).version)
    if run:  # the run names what it registered: a version's lineage is checked against it (check_lineage)
        mlflow.set_tag(registered_run_tag(name, version), "true")
    client = MlflowClient()
    card = registration_card(
        name=name, version=version, model=config.model.name, config_fingerprint=config.fingerprint(),
        run_id=run.info.run_id if run else None, parent_version=parent_version, training_data=training_data,
        checkpoint_uri=redact_uri(checkpoint_uri) if checkpoint_uri else None,
        run_metrics=run_data.metrics if run_data else {},
    )
    client.update_model_version(name, version, description=card)
    card_tags = {"geosurge.config_fingerprint": config.fingerprint(), "geosurge.parent_version": parent_version or "none"}
    if checkpoint_uri:
        card_tags[CHECKPOINT_TAG] = redact_uri(checkpoint_uri)
    if training_data:
        card_tags.update({"geosurge.training_data": str(training_data["source"]),
                          "geosurge.training_data_digest": str(training_data["digest"])})
    for row, values in metric_rows(run_data.metrics if run_data else {}).items():
        card_tags.update({f"metrics.{row}.{k}": f"{v:.6g}" for k, v in values.items()})
    for key, value in card_tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    client.set_registered_model_alias(name, alias, version)
    return f"models:/{name}@{alias}", version


def registered_run_tag(name: str, version: str) -> str:
    """The training run's tag that names a version it registered."""
    return f"{REGISTERED_BY_TAG}.{name}.{version}"


def find_version_by_key(name: str, idempotency_key: str) -> str | None:
    """The version of `name` registered with `idempotency_key`, if any (the oldest, should there be several)."""
    from mlflow.exceptions import MlflowException

    try:
        found = MlflowClient().search_model_versions(f"name='{name}' and tags.`{IDEMPOTENCY_TAG}`='{idempotency_key}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":  # no such model yet
            return None
        raise  # a server error must not read as "never registered": that would register a duplicate
    return str(min(int(v.version) for v in found)) if found else None


def check_lineage(name: str, version: str, client: MlflowClient | None = None) -> None:
    """Refuse (UserError, saying why) a version this pipeline did not register: it must carry the lineage tags
    set at registration, and its source run must name it back. Eval and retraining load only such versions."""
    client = client or MlflowClient()
    v = client.get_model_version(name, str(version))
    source_run = v.tags.get(SOURCE_RUN_TAG)
    why = None
    if v.tags.get(REGISTERED_BY_TAG) != REGISTERED_BY:
        why = f"it has no {REGISTERED_BY_TAG} tag (registered by hand or by other code)"
    elif source_run != v.run_id:
        why = f"its {SOURCE_RUN_TAG} tag ({source_run}) is not the run it was logged in ({v.run_id})"
    else:
        if client.get_run(v.run_id).data.tags.get(registered_run_tag(name, version)) != "true":
            why = f"its source run {v.run_id} does not name it ({registered_run_tag(name, version)})"
    if why:
        raise UserError(f"{name} version {version} was not registered by this pipeline: {why}",
                        "eval and retraining load only versions the pipeline registered (geosurge run or retrain); "
                        "for a version registered before lineage tags existed, register it again with "
                        "`geosurge run --force register`, or evaluate another version")


def _log_training_data(config: PipelineConfig, shards_uri: str | None) -> dict | None:
    """Log the training shards as the active run's "training" dataset; returns what the card says of them. The
    default location (the data root's ingest shards) may be absent (a model trained elsewhere): None then."""
    from geosurge import storage

    if shards_uri is None:
        shards_uri = DataRoot(config.resolved_data_root).ingest.shards
        if not storage.exists(shards_uri, config.s3):
            return None
    dataset = log_training_shards(shards_uri, config.s3)
    return {"name": dataset.name, "source": redact_uri(shards_uri), "digest": dataset.digest, **dataset.profile}


def _pip_requirements() -> list[str]:
    """The runtime packages the model needs, pinned to the versions it was trained with."""
    from importlib.metadata import version

    packages = ["torch", "torchvision", "timm", "transformers", "h3", "scipy", "numpy", "pandas", "pyarrow",
                "pillow", "pyyaml", "pydantic", "requests", "reverse_geocoder"]
    return [f"{p}=={version(p)}" for p in packages]
