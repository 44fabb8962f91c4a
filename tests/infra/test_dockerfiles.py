"""infra/Dockerfile and infra/mlflow/Dockerfile, read without a Docker engine: the base image carries the Ray and
MLflow versions pyproject.toml pins, every COPY source exists and survives .dockerignore, and the usual lint rules
(pinned tags, no ADD, no pip cache, no root at the end) hold."""

import fnmatch
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import ray
import yaml

from tests.infra.infra_helpers import (
    INFRA,
    REPO,
    dockerfile_env,
    dockerfile_instructions,
    pinned,
    pyproject,
)

PROJECT_DOCKERFILE = INFRA / "Dockerfile"
MLFLOW_DOCKERFILE = INFRA / "mlflow" / "Dockerfile"


def _from_image(path: Path) -> str:
    instructions = dockerfile_instructions(path)
    assert instructions[0][0] == "FROM", f"{path}: the first instruction must be FROM"
    (image,) = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    return image


def test_project_image_is_rays_gpu_image_at_the_pinned_ray_version():
    image = _from_image(PROJECT_DOCKERFILE)
    repository, tag = image.split(":")
    version = tag.split("-")[0]
    assert repository == "rayproject/ray" and tag.endswith("-py311-gpu"), image
    assert pinned("ray").specifier.contains(version), f"{image} vs pyproject {pinned('ray')}"
    assert version == ray.__version__  # the Ray the tests ran against is the Ray in the image
    # the cluster launcher file runs the same base image
    launcher = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    assert launcher["docker"]["image"] == image
    # and the image build asserts that `pip install .` kept that Ray
    run = " ".join(rest for keyword, rest in dockerfile_instructions(PROJECT_DOCKERFILE) if keyword == "RUN")
    assert f"ray.__version__ == '{version}'" in run


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    parts = Path(relative).parts
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(parts[0], pattern):
            return True
    return False


def test_dockerignore_keeps_the_venv_and_runs_out_and_what_copy_needs_in():
    patterns = _dockerignore_patterns()
    for heavy in (".venv/bin/python", "runs/demo/mlflow.db", ".git/HEAD", "geosurge/__pycache__/x.pyc"):
        assert _ignored(heavy, patterns), heavy
    for keyword, rest in dockerfile_instructions(PROJECT_DOCKERFILE):
        if keyword != "COPY":
            continue
        *sources, _ = [arg for arg in shlex.split(rest) if not arg.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"


def test_project_image_copies_what_pip_install_dot_needs_and_the_workflows():
    instructions = dockerfile_instructions(PROJECT_DOCKERFILE)
    copied = {source.rstrip("/") for keyword, rest in instructions if keyword == "COPY"
              for source in [arg for arg in shlex.split(rest) if not arg.startswith("--")][:-1]}
    project = pyproject()["project"]
    assert {"pyproject.toml", project["readme"], "geosurge", "workflows"} <= copied  # setuptools reads the readme
    (install,) = [rest for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest]
    assert "pip install --no-cache-dir ." in install and "-e " not in install  # a regular install, no pip cache
    # the workflows are copied after the install, so editing a driver does not rebuild the dependency layer
    positions = {rest.split()[-2] if "--chown" in rest else rest.split()[0]: i
                 for i, (keyword, rest) in enumerate(instructions) if keyword == "COPY"}
    install_at = next(i for i, (keyword, rest) in enumerate(instructions) if keyword == "RUN" and "pip install" in rest)
    assert positions["workflows/"] > install_at > positions["geosurge/"]


def test_project_image_environment_and_lint_rules():
    instructions = dockerfile_instructions(PROJECT_DOCKERFILE)
    env = dockerfile_env(instructions)
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["PYTHONUNBUFFERED"] == "1"
    # the DeepSpeed JIT cache the trainer would otherwise put under the default home cache
    from geosurge.train.deepspeed_ops import DEFAULT_EXTENSIONS_DIR

    assert env["TORCH_EXTENSIONS_DIR"] == str(Path("/home/ray") / Path(DEFAULT_EXTENSIONS_DIR).relative_to(Path.home()))
    _lint(PROJECT_DOCKERFILE)


def test_mlflow_image_serves_the_mlflow_the_pipeline_logs_with():
    instructions = dockerfile_instructions(MLFLOW_DOCKERFILE)
    image = _from_image(MLFLOW_DOCKERFILE)
    assert image.startswith("python:3.11"), image  # the Python the project is tested on
    (install,) = [rest for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest]
    requirements = _pins(install)
    assert pinned("mlflow").specifier.contains(requirements["mlflow"]) and requirements["mlflow"] == mlflow.__version__
    assert {"psycopg", "boto3"} <= set(requirements)  # PostgreSQL backend store, S3 artifact store
    _lint(MLFLOW_DOCKERFILE)


def test_the_mlflow_image_packages_resolve_and_import_at_the_pinned_versions():
    """The image's pins agree with pyproject.toml's exact pins (mlflow; psycopg in the test extras, which the
    server test runs with), and what the server imports for its stores imports here."""
    instructions = dockerfile_instructions(MLFLOW_DOCKERFILE)
    (install,) = [rest for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest]
    from packaging.requirements import Requirement

    project = pyproject()["project"]
    exact = {r.name: str(r.specifier).removeprefix("==")
             for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["test"])
             if str(r.specifier).startswith("==")}
    image_pins = _pins(install)
    assert {"mlflow", "psycopg"} <= set(exact)
    for name in set(image_pins) & set(exact):
        assert image_pins[name] == exact[name], f"{name}: image {image_pins[name]}, pyproject {exact[name]}"
    # what the server imports for `--backend-store-uri postgresql://...` (SQLAlchemy's default driver) and S3
    code = ("import sqlalchemy, boto3, mlflow.server; "
            "sqlalchemy.create_engine('postgresql://u:p@localhost/db').dialect.import_dbapi()")
    subprocess.run([sys.executable, "-c", code], check=True)


def _pins(pip_install: str) -> dict[str, str]:
    """name → version of every `name==version` (extras dropped) in a pip install command."""
    from packaging.requirements import Requirement

    requirements = [Requirement(arg) for arg in shlex.split(pip_install) if "==" in arg]
    return {r.name: str(r.specifier).removeprefix("==") for r in requirements}


def _lint(path: Path) -> None:
    """The hadolint rules that matter here, on the parsed instructions."""
    instructions = dockerfile_instructions(path)
    for keyword, rest in instructions:
        assert keyword in {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "CMD", "ARG", "LABEL"}, keyword
        assert keyword != "ADD", f"{path}: use COPY"  # DL3020
        if keyword == "FROM":
            assert ":" in rest and not rest.split()[0].endswith(":latest"), f"{path}: unpinned base {rest}"  # DL3006/7
        if keyword == "WORKDIR":
            assert rest.startswith("/"), f"{path}: relative WORKDIR {rest}"  # DL3000
        if keyword == "RUN" and "pip install" in rest:
            assert "--no-cache-dir" in rest, f"{path}: pip install without --no-cache-dir"  # DL3042
        if keyword == "RUN" and "apt-get install" in rest:
            assert "--no-install-recommends" in rest  # DL3015
        if keyword == "RUN":
            assert not rest.lstrip().startswith("cd "), f"{path}: use WORKDIR"  # DL3003
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert not users or users[-1] not in ("root", "0"), f"{path}: runs as root"  # DL3002
    cmds = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert len(cmds) <= 1 and all(c.startswith("[") for c in cmds)  # DL4003, JSON form
