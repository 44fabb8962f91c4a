"""The KubeRay manifests (infra/kuberay/) against the KubeRay API and against this code base.

No KubeRay CRD schema ships in any installed package, so the API checks use the fields verified from KubeRay's
v1 types and CRDs (ray-operator/apis/ray/v1, config/crd/bases; RayCronJob as released in v1.7.0) and Ray's own
KubeRay autoscaler, which turns a RayCluster spec into an autoscaling config and validates it against the schema
that ships inside the `ray` package. The code checks: entry points exist and take `--config`/`--set`, the mounted
configs load as PipelineConfig, images and versions agree with pyproject.toml and infra/Dockerfile."""

import re
import subprocess
import sys
import zoneinfo
from pathlib import Path

import pytest
import ray
import yaml

from geosurge.config import load_config
from geosurge.train.trainer import checkpoint_root
from tests.infra.infra_helpers import (
    INFRA,
    NAMESPACE,
    REPO,
    all_docs,
    containers,
    dockerfile_instructions,
    docs_of_kind,
    entrypoint_argv,
    flag_value,
    flag_values,
    manifest_files,
    one,
    pinned,
    pod_specs,
    project_image,
    ray_cluster_specs,
    ray_job_specs,
)

# Fields of the ray.io/v1 specs (KubeRay v1.7 types); a key outside these is a typo the API server would prune.
RAY_CLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "workerGroupSpecs", "upgradeStrategy",
}
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType", "resources", "labels"}
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
    "template", "scaleStrategy", "numOfHosts", "resources", "labels",
}
WORKER_GROUP_REQUIRED = {"groupName", "template"}
RAY_JOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint", "entrypointNumCpus",
    "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata", "rayClusterSpec", "runtimeEnvYAML",
    "shutdownAfterJobFinishes", "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend",
    "ttlSecondsAfterFinished",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# RayCronJob (KubeRay v1.7.0, alpha, feature gate RayCronJob): exactly these spec fields; the first two required.
# v1.7.0 is the oldest release to require: v1.6.x can fire one schedule tick twice (kuberay#4888) and has no timeZone.
RAY_CRON_JOB_SPEC_FIELDS = {"schedule", "jobTemplate", "timeZone", "suspend"}
RAY_CRON_JOB_REQUIRED = {"schedule", "jobTemplate"}
KUBERAY_FOR_RAYCRONJOB = "v1.7.0"
# RayJob deletionRules (v1.7 DeletionRule/DeletionCondition and validateDeletionRules): policies in the order their
# TTLs must not decrease, and the terminal states a condition can name.
DELETION_ORDER = ["DeleteWorkers", "DeleteCluster", "DeleteSelf"]
DELETION_JOB_STATUSES = {"SUCCEEDED", "FAILED"}
DELETION_DEPLOYMENT_STATUSES = {"Failed"}

CONFIG_MOUNT = "/config"


def test_every_manifest_parses_and_names_its_kind_and_namespace():
    assert {p.relative_to(INFRA).as_posix() for p in manifest_files()} >= {
        "kuberay/common.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-full-pipeline.yaml",
        "kuberay/raycronjob-retrain.yaml", "mlflow/mlflow.yaml"}
    kinds = set()
    for path, doc in all_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path}: {doc['kind']} outside {NAMESPACE}"
        kinds.add((doc["apiVersion"], doc["kind"]))
    assert {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayCronJob")} <= kinds
    assert all(api == "ray.io/v1" for api, kind in kinds if kind.startswith("Ray"))


@pytest.mark.parametrize("where, spec", ray_cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_ray_cluster_spec_has_the_kuberay_v1_fields(where, spec):
    assert set(spec) <= RAY_CLUSTER_SPEC_FIELDS, set(spec) - RAY_CLUSTER_SPEC_FIELDS
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS and head["template"]["spec"]["containers"]
    for group in spec["workerGroupSpecs"]:
        assert WORKER_GROUP_REQUIRED <= set(group) <= WORKER_GROUP_FIELDS, group.keys()
        assert group["template"]["spec"]["containers"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    for _, pod in [("head", head["template"]["spec"])] + [(g["groupName"], g["template"]["spec"])
                                                           for g in spec["workerGroupSpecs"]]:
        # KubeRay takes the first container as the Ray container; every Ray pod needs a real /dev/shm
        assert any(m["mountPath"] == "/dev/shm" for m in pod["containers"][0]["volumeMounts"])


@pytest.mark.parametrize("where, spec", ray_cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_rays_own_kuberay_autoscaler_accepts_the_cluster_and_sees_cpu_head_and_gpu_workers(where, spec):
    """Ray's KubeRay autoscaler derives its config from the RayCluster CR exactly as in the cluster, and
    validates it against ray/autoscaler/ray-schema.json."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    config = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": "geosurge", "namespace": NAMESPACE},
                                                     "spec": spec})
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and "GPU" not in head["resources"]  # nothing heavy on the head
    gpu_groups = {name: t for name, t in node_types.items() if t["resources"].get("GPU")}
    assert gpu_groups, "no worker group has GPUs (nvidia.com/gpu limits)"
    for node_type in gpu_groups.values():
        assert node_type["resources"]["GPU"] == 1 and node_type["min_workers"] == 0 < node_type["max_workers"]
    assert config["max_workers"] == sum(g["maxReplicas"] for g in spec["workerGroupSpecs"])
    assert spec["enableInTreeAutoscaling"] is True


def test_the_rayjob_and_raycronjob_run_on_the_same_cluster_spec_as_the_standing_raycluster():
    specs = ray_cluster_specs()
    assert len(specs) == 3
    (_, reference), *others = specs
    for where, spec in others:
        assert spec == reference, f"{where} differs from the other Ray cluster specs"


@pytest.mark.parametrize("where, spec", ray_cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_ray_container_runs_the_project_image_at_the_pinned_ray_version(where, spec):
    assert spec["rayVersion"] == ray.__version__ and pinned("ray").specifier.contains(spec["rayVersion"])
    from_line = next(rest for keyword, rest in dockerfile_instructions(INFRA / "Dockerfile") if keyword == "FROM")
    assert f"rayproject/ray:{spec['rayVersion']}-" in from_line  # the image's Ray is the Ray KubeRay is told of
    doc = {"kind": "RayCluster", "spec": spec}
    images = {container["image"] for _, _, container in containers(doc)}
    assert images == {project_image()}


@pytest.mark.parametrize("where, job", ray_job_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_ray_job_spec_has_the_kuberay_v1_fields_and_runs_from_the_image_project_folder(where, job):
    assert set(job) <= RAY_JOB_SPEC_FIELDS, set(job) - RAY_JOB_SPEC_FIELDS
    assert job["entrypoint"] and job["rayClusterSpec"]
    assert job.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    # GPU nodes go back when the run ends: shutdownAfterJobFinishes, or deletionRules that delete the cluster
    rules = job.get("deletionStrategy", {}).get("deletionRules", [])
    assert job.get("shutdownAfterJobFinishes") is True or {
        r["condition"].get("jobStatus") for r in rules if r["policy"] in ("DeleteCluster", "DeleteSelf")} >= {
        "SUCCEEDED", "FAILED"}
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    workdir = next(rest for keyword, rest in dockerfile_instructions(INFRA / "Dockerfile") if keyword == "WORKDIR")
    assert runtime_env["working_dir"] == workdir  # relative entry points resolve in the image's project folder


def test_raycronjob_has_the_v1_7_spec_a_daily_schedule_and_a_time_zone():
    (path, cron), = docs_of_kind("RayCronJob")
    spec = cron["spec"]
    assert RAY_CRON_JOB_REQUIRED <= set(spec) <= RAY_CRON_JOB_SPEC_FIELDS, set(spec)
    # the schedule does not follow the operator pod's TZ: an IANA name the operator's bundled tz database knows
    assert spec.get("timeZone") and zoneinfo.ZoneInfo(spec["timeZone"])
    # the KubeRay release it needs is stated where it is applied
    for text in (path.read_text(), (INFRA / "README.md").read_text()):
        assert f"{KUBERAY_FOR_RAYCRONJOB} or newer" in text
    assert "v1.6.0 or newer" not in (INFRA / "README.md").read_text() + (REPO / "README.md").read_text()
    assert "spec" not in spec["jobTemplate"]  # the RayJob spec sits inline, not under a `spec:` wrapper
    minute, hour, day, month, weekday = _parse_cron(spec["schedule"])
    assert len(minute) == 1 and len(hour) == 1  # once a day ...
    assert day == set(range(1, 32)) and month == set(range(1, 13)) and weekday == set(range(7))  # ... every day
    assert spec.get("suspend") in (None, False)
    # a stuck run ends before the next one is due
    assert cron["spec"]["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600


def test_raycronjob_prunes_its_finished_rayjobs_with_deletion_rules_kuberay_accepts():
    """RayCronJob has no history limit: each child RayJob deletes its Ray cluster when it ends and itself later, for
    every way a run can end. The rules pass KubeRay v1.7's validateDeletionRules."""
    (_, cron), = docs_of_kind("RayCronJob")
    job = cron["spec"]["jobTemplate"]
    rules = job["deletionStrategy"]["deletionRules"]
    # rules mode excludes shutdownAfterJobFinishes, a global TTL and the legacy onSuccess/onFailure
    assert not job.get("shutdownAfterJobFinishes") and not job.get("ttlSecondsAfterFinished")
    assert set(job["deletionStrategy"]) == {"deletionRules"}
    ttls: dict[tuple[str, str], dict[str, int]] = {}
    for rule in rules:
        assert set(rule) == {"policy", "condition"} and rule["policy"] in DELETION_ORDER + ["DeleteNone"]
        condition = rule["condition"]
        assert set(condition) <= {"jobStatus", "jobDeploymentStatus", "ttlSeconds"}
        (kind,) = {"jobStatus", "jobDeploymentStatus"} & set(condition)  # exactly one
        assert condition[kind] in (DELETION_JOB_STATUSES if kind == "jobStatus" else DELETION_DEPLOYMENT_STATUSES)
        assert condition.get("ttlSeconds", 0) >= 0
        policies = ttls.setdefault((kind, condition[kind]), {})
        assert rule["policy"] not in policies, f"duplicate rule {rule}"
        policies[rule["policy"]] = condition.get("ttlSeconds", 0)
    for outcome, policies in ttls.items():  # Workers <= Cluster <= Self
        ordered = [policies[p] for p in DELETION_ORDER if p in policies]
        assert ordered == sorted(ordered), (outcome, policies)
    # every end of a run: the GPU nodes go within the hour, the RayJob within a month
    outcomes = {("jobStatus", "SUCCEEDED"), ("jobStatus", "FAILED"), ("jobDeploymentStatus", "Failed")}
    assert set(ttls) == outcomes
    for outcome in outcomes:
        assert ttls[outcome]["DeleteCluster"] <= 3600 and 24 * 3600 <= ttls[outcome]["DeleteSelf"] <= 30 * 24 * 3600
    # a week or more of daily runs stays visible: the history a person looks at
    assert ttls[("jobStatus", "SUCCEEDED")]["DeleteSelf"] >= 7 * 24 * 3600


def _parse_cron(schedule: str) -> list[set[int]]:
    """The five fields of a standard cron schedule, each as the set of values it matches."""
    fields = schedule.split()
    assert len(fields) == 5, f"{schedule!r}: a RayCronJob schedule has 5 fields"
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
    parsed = []
    for text, (low, high) in zip(fields, ranges):
        values = set()
        for item in text.split(","):
            m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", item)
            assert m, f"{schedule!r}: bad cron field {item!r}"
            start, end = (low, high) if m.group(1) == "*" else (int(m.group(2)), int(m.group(3) or m.group(2)))
            assert low <= start <= end <= high, f"{schedule!r}: {item!r} outside {low}-{high}"
            values |= set(range(start, end + 1, int(m.group(4) or 1)))
        parsed.append(values)
    return parsed


# -- entry points and configs against the code ----------------------------------------------------------------
def _job_named(workflow: str) -> dict:
    (job,) = [job for _, job in ray_job_specs() if entrypoint_argv(job)[1] == f"workflows/{workflow}.py"]
    return job


def _check_entry_point(workflow: str) -> None:
    argv = entrypoint_argv(_job_named(workflow))
    assert argv[0] == "python"
    script = REPO / argv[1]
    assert script.is_file(), f"{argv[1]} does not exist"
    flags = {arg.split("=")[0] for arg in argv[2:] if arg.startswith("--")}
    assert flags <= {"--config", "--set"}, flags
    # the workflow's own argparse takes the flags the manifest passes
    result = subprocess.run([sys.executable, str(script), "--help"], check=False, capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--config" in result.stdout and "--set" in result.stdout, result.stdout


def test_full_pipeline_entry_point_exists_and_takes_config_and_set():
    _check_entry_point("full_pipeline")


def test_retrain_entry_point_exists_and_takes_config_and_set():
    """The RayCronJob runs workflows/retrain.py (written separately, with full_pipeline.py's CLI)."""
    _check_entry_point("retrain")


@pytest.mark.parametrize("where, job", ray_job_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_the_config_file_of_each_job_is_mounted_on_the_head_and_is_a_valid_pipeline_config(where, job, tmp_path):
    # a preset from the image's configs/ first, then the cluster's own file from the ConfigMap, read after it
    *presets, config_path = flag_values(entrypoint_argv(job), "--config")
    assert presets == ["configs/geosurge-mp16.yaml"] and (REPO / presets[0]).is_file()
    assert config_path.startswith(CONFIG_MOUNT + "/")
    # the driver runs on the head: the config volume must be mounted there
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == CONFIG_MOUNT]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    configmap = one("ConfigMap", volume["configMap"]["name"])
    key = Path(config_path).name
    assert key in configmap["data"], f"{key} not in ConfigMap {configmap['metadata']['name']}"
    local = tmp_path / key
    local.write_text(configmap["data"][key])
    config = load_config([str(REPO / p) for p in presets] + [str(local)])  # rejects any unknown key
    assert config.data_root.startswith("s3://")
    # real imagery, the paper's model: MP-16 and the benchmarks in the bucket, weights staged there too
    if "retrain" not in config_path:  # retraining reads new manifests from retrain.incoming instead
        assert config.data.manifests and all(m.startswith("s3://") for m in config.data.manifests)
    assert config.model.backbone == "vit_large_patch14_clip_336.openai"
    assert all(b.manifest.startswith("s3://") and b.images_root.startswith("s3://") for b in config.eval.benchmarks)
    # the bucket is the only shared state: checkpoints beside the data, no volume shared between pods
    assert checkpoint_root(config).startswith(config.data_root + "/")
    for group, pod in pod_specs({"kind": "RayCluster", "spec": job["rayClusterSpec"]}):
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v], f"{group} mounts a claim"
    # output_dir (the driver's logs and summary) is on the head's own volume
    (runs,) = [m for m in head["containers"][0]["volumeMounts"] if config.output_dir.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in head["volumes"] if v["name"] == runs["name"]]
    assert "emptyDir" in volume
    if config.train.use_gpu:
        gpus = sum(g["maxReplicas"] for g in job["rayClusterSpec"]["workerGroupSpecs"]
                   if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"])
        assert config.train.num_workers <= gpus, "more GPU training workers than the GPU group can ever hold"


@pytest.mark.parametrize("where, job", ray_job_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_the_jobs_log_to_the_clusters_mlflow_server_through_its_proxy(where, job, tmp_path):
    configmap = one("ConfigMap", "geosurge-config")
    local = tmp_path / "config.yaml"
    *presets, mounted = flag_values(entrypoint_argv(job), "--config")
    local.write_text(configmap["data"][Path(mounted).name])
    config = load_config([str(REPO / p) for p in presets] + [str(local)])
    url = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", config.resolved_tracking_uri)
    assert url, config.resolved_tracking_uri
    service = one("Service", url.group(1))
    assert service["metadata"]["namespace"] == url.group(2)
    assert int(url.group(3)) in {p["port"] for p in service["spec"]["ports"]}
    # that Service reaches the MLflow server, which accepts this Host header and serves artifacts itself,
    # so the experiment's artifact location is left to the server (no S3 credentials needed for artifacts)
    deployment = one("Deployment", "mlflow")
    assert deployment["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    allowed = flag_value(command, "--allowed-hosts").split(",")
    assert f"{url.group(1)}.{url.group(2)}.svc.cluster.local:{url.group(3)}" in allowed
    assert "--serve-artifacts" in command and config.resolved_artifact_location is None
