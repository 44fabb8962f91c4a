"""Checks of what a user gave (manifests, endpoints, the MLflow database, model names) made before Ray starts, so
a mistake is one `UserError` line in seconds rather than a traceback from inside a Ray task minutes later."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from geosurge import storage
from geosurge.config import PipelineConfig
from geosurge.data.manifest import list_manifest_files
from geosurge.data.manifest.reading import resolve_manifest_format
from geosurge.errors import UserError

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
CONNECT_TIMEOUT_S = 5.0


def check_reachable(url: str, what: str, setting: str) -> None:
    """A TCP connection to `url`'s host and port, or a UserError naming `setting` (seconds, where the clients'
    own retries would take minutes to give up)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(f"{what} {storage.redact_uri(url)} is unreachable ({reason})",
                        f"start it, or fix {setting} (and check the network between here and there)") from None


def check_s3_endpoint(config: PipelineConfig) -> None:
    """The S3 endpoint answers, when anything the run reads or writes is on s3://."""
    uris = [config.resolved_data_root, *config.data.manifests, config.retrain.incoming or ""]
    if config.s3.endpoint_url and any(storage.is_s3(u) for u in uris):
        check_reachable(config.s3.endpoint_url, "the S3 endpoint", "s3.endpoint_url")


def check_manifests(config: PipelineConfig) -> None:
    """Every `data.manifest` exists and its columns are ones a reader knows (read from the header only)."""
    for uri in config.data.manifests:
        if storage.is_http(uri):
            continue  # copied into the data root by the data stage, which reports a failed download itself
        try:
            for file in list_manifest_files(uri, config.s3):
                resolve_manifest_format(file, config.ingest.manifest_format, config.s3)
        except FileNotFoundError as e:
            raise UserError(f"data.manifest: {e}", "give an existing Parquet or CSV file or folder (local path or "
                            "s3://…), or leave data.manifest unset to generate the GeoWorld demo") from None
        except ValueError as e:
            raise UserError(f"data.manifest: {e}", "use our columns image_id, uri, lat, lon (split optional), or "
                            "name the published format with ingest.manifest_format (mp16, im2gps3k, yfcc4k, "
                            "img2dataset, …)") from None


def check_segmenter_folder(config: PipelineConfig) -> None:
    """`ingest.segmenter` given as a local path (absolute, or starting with ./ or ../) names a folder that exists;
    a hub id (`org/name`) or s3:// folder is left to the segmenter's loader."""
    spec = config.ingest.segmenter
    if spec.startswith(("/", "./", "../", "~")) and not Path(spec).expanduser().is_dir():
        raise UserError(f"ingest.segmenter={spec}: no such folder",
                        "give a checkpoint folder (local or s3://), a hub id, random or none")


def check_tracking_database(tracking_uri: str) -> None:
    """An `sqlite:///` tracking URI read for models names an existing, non-empty database: MLflow would create a
    new empty one and then report that no model exists."""
    if not tracking_uri.startswith("sqlite:///"):
        if tracking_uri.startswith(("http://", "https://")):
            check_reachable(tracking_uri, "the MLflow tracking server", "the tracking URI")
        return
    path = Path(tracking_uri[len("sqlite:///"):])
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"no MLflow database at {path} (tracking URI {storage.redact_uri(tracking_uri)})",
                        "give the database a pipeline run wrote, e.g. sqlite:///runs/demo/mlflow.db after `make "
                        "demo` (tracking.tracking_uri, --tracking-uri or MLFLOW_TRACKING_URI)")


def check_model_registered(model_uri: str, tracking_uri: str) -> None:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` exists in the registry at `tracking_uri`; other URIs
    (runs:/, paths) are left to MLflow."""
    m = _MODEL_URI.match(model_uri)
    if not m:
        return
    check_tracking_database(tracking_uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, name = MlflowClient(tracking_uri), m["name"]
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(r.name for r in client.search_registered_models())
        raise UserError(f"no model named {name!r} is registered at {storage.redact_uri(tracking_uri)}",
                        f"registered models: {names or 'none'}; `geosurge run` registers one") from None
    versions = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
    known = f"versions {versions}, aliases {dict(sorted(model.aliases.items())) or 'none'}"
    if m["alias"] and m["alias"] not in model.aliases:
        raise UserError(f"model {name!r} has no alias @{m['alias']} at {storage.redact_uri(tracking_uri)}",
                        f"it has {known}")
    if m["version"] and m["version"] not in versions:
        raise UserError(f"model {name!r} has no version {m['version']} at {storage.redact_uri(tracking_uri)}",
                        f"it has {known}")


def check_run(config: PipelineConfig) -> None:
    """Before the full pipeline starts Ray: its settings, the S3 endpoint and the manifests."""
    # the pipeline module brings MLflow, PyTorch and the trainer: `geosurge ingest`'s own checks need none of them
    from geosurge.orchestration.pipeline import check_pipeline_config

    try:
        check_pipeline_config(config)
    except ValueError as e:
        raise UserError(str(e), "change that setting (--set key=value, or in the --config file)") from None
    check_s3_endpoint(config)
    check_manifests(config)
    check_segmenter_folder(config)


def check_ingest(config: PipelineConfig) -> None:
    if not config.data.manifests:
        raise UserError("nothing to ingest: data.manifest is not set",
                        "give one with --set data.manifest=PATH (a Parquet or CSV file or folder, local or s3://)")
    check_s3_endpoint(config)
    check_manifests(config)
    check_segmenter_folder(config)


def check_eval(config: PipelineConfig, model_uri: str) -> None:
    """Before the eval job starts Ray: the model to evaluate is registered (a missing one would otherwise end in
    an ActorDiedError from the inference pool)."""
    check_s3_endpoint(config)
    check_model_registered(model_uri, config.resolved_tracking_uri)


def check_retrain(config: PipelineConfig) -> None:
    """Before retraining starts Ray: the champion it fine-tunes from is registered."""
    check_s3_endpoint(config)
    name = config.tracking.registered_model
    try:
        check_model_registered(f"models:/{name}@{config.eval.champion_alias}", config.resolved_tracking_uri)
    except UserError as e:
        raise UserError(f"retraining fine-tunes @{config.eval.champion_alias}, and {e.problem}",
                        "run the full pipeline first (`geosurge run`: its eval step names the first champion)") from None
