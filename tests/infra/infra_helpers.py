"""Readers for the files under infra/ that the infra tests share: YAML manifests, Dockerfiles, pyproject pins."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
NAMESPACE = "geosurge"


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under infra/ (the compose file is not one)."""
    return sorted(p for p in INFRA.rglob("*.yaml") if p.name != "docker-compose.yml")


def all_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in manifest_files() for doc in load_docs(path)]


def docs_of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in all_docs() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict:
    (doc,) = [doc for _, doc in docs_of_kind(kind) if doc["metadata"]["name"] == name]
    return doc


# -- pyproject ------------------------------------------------------------------------------------------------
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(name: str) -> Requirement:
    (req,) = [Requirement(r) for r in pyproject()["project"]["dependencies"] if Requirement(r).name == name]
    return req


def project_image() -> str:
    """The image infra/Dockerfile builds, as the manifests name it: geosurge:<project version>."""
    return f"geosurge:{pyproject()['project']['version']}"


# -- Ray custom resources ---------------------------------------------------------------------------------------
def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of every RayCluster, RayJob and RayCronJob under infra/."""
    specs = []
    for path, doc in all_docs():
        where = f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "RayCluster":
            specs.append((where, doc["spec"]))
        elif doc["kind"] == "RayJob":
            specs.append((where, doc["spec"]["rayClusterSpec"]))
        elif doc["kind"] == "RayCronJob":
            specs.append((where, doc["spec"]["jobTemplate"]["rayClusterSpec"]))
    return specs


def ray_job_specs() -> list[tuple[str, dict]]:
    """(where, RayJobSpec) of every RayJob and of every RayCronJob's jobTemplate."""
    specs = []
    for path, doc in all_docs():
        where = f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "RayJob":
            specs.append((where, doc["spec"]))
        elif doc["kind"] == "RayCronJob":
            specs.append((where, doc["spec"]["jobTemplate"]))
    return specs


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(group, pod spec) of every pod template in a manifest."""
    kind, spec = doc["kind"], doc.get("spec", {})
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
               "RayCronJob": spec.get("jobTemplate", {}).get("rayClusterSpec")}.get(kind)
    if cluster:
        yield "head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]["spec"]
    elif kind in ("Deployment", "StatefulSet"):
        yield doc["metadata"]["name"], spec["template"]["spec"]


def containers(doc: dict) -> Iterator[tuple[str, dict, dict]]:
    for group, pod in pod_specs(doc):
        for container in pod["containers"]:
            yield group, pod, container


def expand_k8s_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values: defined names expand, `$$` escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def entrypoint_argv(job_spec: dict) -> list[str]:
    return shlex.split(job_spec["entrypoint"])


def flag_values(argv: list[str], flag: str) -> list[str]:
    """Every value of a repeatable flag, in order."""
    return [argv[i + 1] if arg == flag else arg.split("=", 1)[1] for i, arg in enumerate(argv)
            if arg == flag or arg.startswith(flag + "=")]


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# -- Dockerfiles ------------------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped and continuation lines joined."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    assert not current, f"{path}: a continuation line runs off the end"
    return instructions


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env
