"""infra/seaweedfs.sh and the MLflow server of infra/mlflow/mlflow.yaml, run for real on loopback.

The MLflow server gets the Deployment's own command line and environment (Kubernetes' $(VAR) expansion included),
with a real PostgreSQL standing in for the `mlflow-postgres` Service and the SeaweedFS of infra/seaweedfs.sh for S3."""

import dataclasses
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest
import requests

from geosurge import storage
from geosurge.config import load_config
from tests.conftest import end_process_group
from tests.infra.infra_helpers import INFRA, REPO, docs_of_kind, expand_k8s_vars, flag_value, one

SCRIPT = INFRA / "seaweedfs.sh"


def _free_port_pair() -> int:
    """A free loopback port P whose P+10000 (SeaweedFS's gRPC twin) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def _script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, **(env or {})})


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory):
    """infra/seaweedfs.sh start on a free port; yields (folder, printed settings); stopped at the end."""
    folder = tmp_path_factory.mktemp("seaweedfs")
    started = _script("start", str(folder), env={"S3_PORT": str(_free_port_pair()), "S3_BUCKET": "geosurge"})
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((folder / "weed.pid").read_text())
    try:
        yield folder, started.stdout
    finally:
        stopped = _script("stop", str(folder))
        assert stopped.returncode == 0 and not _pid_alive(pid), stopped.stdout + stopped.stderr


def _printed(stdout: str) -> tuple[list[str], dict[str, str]]:
    """The `--set` overrides and the exported credentials the script printed."""
    overrides = re.findall(r"--set (\S+)", stdout)
    (exports,) = [line for line in stdout.splitlines() if line.strip().startswith("export ")]
    credentials = dict(token.split("=", 1) for token in exports.split()[1:])
    return overrides, credentials


def test_seaweedfs_script_serves_s3_with_the_settings_it_prints(seaweedfs, monkeypatch):
    folder, stdout = seaweedfs
    overrides, credentials = _printed(stdout)
    config = load_config(overrides=overrides)  # the printed settings are real PipelineConfig keys
    assert config.s3.endpoint_url.startswith("http://127.0.0.1:") and config.data_root.startswith("s3://geosurge/")
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)  # the AWS chain, as the printout says
    uri = storage.join(config.resolved_data_root, "probe", "hello.txt")
    storage.write_bytes(uri, b"hello from the pipeline", config.s3)
    assert storage.read_bytes(uri, config.s3) == b"hello from the pipeline"
    assert (folder / "s3.env").stat().st_mode & 0o077 == 0  # the key file is private
    status = _script("status", str(folder))
    assert status.returncode == 0 and config.s3.endpoint_url in status.stdout


def test_seaweedfs_script_keeps_its_key_across_a_restart_and_stops_only_its_own_server(tmp_path):
    with socket.socket() as taken:  # torch.distributed's MASTER_PORT, on a port in use: not the script's to take
        taken.bind(("127.0.0.1", 0))
        env = {"S3_PORT": str(_free_port_pair()), "MASTER_PORT": str(taken.getsockname()[1])}
        first = _script("start", str(tmp_path), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    pid = int((tmp_path / "weed.pid").read_text())
    assert _script("stop", str(tmp_path)).returncode == 0 and not _pid_alive(pid)
    assert _script("status", str(tmp_path)).returncode == 3
    second = _script("start", str(tmp_path), env=env)
    try:
        assert second.returncode == 0, second.stdout + second.stderr
        assert _printed(second.stdout)[1] == _printed(first.stdout)[1]  # same key pair: clients keep working
    finally:
        assert _script("stop", str(tmp_path)).returncode == 0
    # a pid file naming someone else's process is never acted on
    (tmp_path / "weed.pid").write_text(str(os.getpid()))
    assert "not running" in _script("stop", str(tmp_path)).stdout and _pid_alive(os.getpid())


# -- PostgreSQL + MLflow server --------------------------------------------------------------------------------
def _postgres_bin(name: str) -> str | None:
    """On PATH, or in Debian's versioned folder (newest first)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return shutil.which(name) or (str(candidates[-1]) if candidates else None)


def _postgres_owner() -> list[str]:
    """The command prefix that runs PostgreSQL's tools: as `postgres` when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as: `make test` installs "
                    "Debian's postgresql package, which creates it")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on loopback: (port, user, password, database). `make test` installs the server when it
    is missing (Makefile, `postgres-server`); in CI (CI=true) a missing one fails these tests instead of skipping."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: `make postgres-server` "
                    "installs them (as root, from Debian's packages), or install PostgreSQL yourself")
    import psycopg  # a test dependency (pyproject.toml, [test]): missing is an error, not a skip

    as_owner = _postgres_owner()
    root = Path(tempfile.mkdtemp(prefix="gspg", dir="/tmp"))
    if as_owner:
        shutil.chown(root, "postgres")
    port, user, password, database = _free_port_pair(), "mlflow", "pw-" + os.urandom(6).hex(), "mlflow"
    pwfile = root / "pw"
    pwfile.write_text(password)
    if as_owner:
        shutil.chown(pwfile, "postgres")
    subprocess.run([*as_owner, initdb, "-D", str(root / "data"), "-U", user, f"--pwfile={pwfile}",
                    "--auth=scram-sha-256"], check=True, capture_output=True)
    subprocess.run([*as_owner, pg_ctl, "-D", str(root / "data"), "-l", str(root / "log"), "-w", "start",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        # CREATE DATABASE runs outside a transaction
        with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {database}")
        yield port, user, password, database
    finally:
        subprocess.run([*as_owner, pg_ctl, "-D", str(root / "data"), "-m", "fast", "-w", "stop"], check=False,
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class DeployedMlflow:
    """The MLflow server of infra/mlflow/mlflow.yaml as it runs here: its URL, the Secrets' values it was given, the
    S3 endpoint, its command line and its process (a session leader: its workers are in its group)."""

    url: str
    secrets: dict[str, dict[str, str]]
    s3_endpoint: str
    command: list[str]
    pid: int

    @property
    def auth(self) -> tuple[str, str]:
        secret = self.secrets["mlflow-auth"]
        return secret["MLFLOW_AUTH_ADMIN_USERNAME"], secret["MLFLOW_AUTH_ADMIN_PASSWORD"]


def _container_env(container: dict, secrets: dict, configmaps: dict) -> dict[str, str]:
    """The container's environment as Kubernetes builds it; in order: $(VAR) sees only the variables above it."""
    env: dict[str, str] = {}
    for item in container["env"]:
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = expand_k8s_vars(item["value"], env)
        elif "secretKeyRef" in source:
            env[item["name"]] = secrets[source["secretKeyRef"]["name"]][source["secretKeyRef"]["key"]]
        else:
            env[item["name"]] = configmaps[source["configMapKeyRef"]["name"]][source["configMapKeyRef"]["key"]]
    return env


@pytest.fixture(scope="module")
def mlflow_server(postgres, seaweedfs, tmp_path_factory):
    """`mlflow server` with the Deployment's command, env and mounted ConfigMaps, the Secrets holding fresh values;
    the postgres Service's address stands for the local PostgreSQL. Yields a DeployedMlflow."""
    pg_port, pg_user, pg_password, pg_db = postgres
    _, stdout = seaweedfs
    overrides, credentials = _printed(stdout)
    endpoint = load_config(overrides=overrides).s3.endpoint_url
    pod = one("Deployment", "mlflow")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secrets = {"mlflow-db": {"POSTGRES_USER": pg_user, "POSTGRES_PASSWORD": pg_password, "POSTGRES_DB": pg_db},
               "geosurge-s3": credentials,
               "mlflow-auth": {"MLFLOW_AUTH_ADMIN_USERNAME": "geosurge", "MLFLOW_AUTH_ADMIN_PASSWORD": os.urandom(12).hex(),
                               "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}}
    configmaps = {doc["metadata"]["name"]: dict(doc["data"]) for _, doc in docs_of_kind("ConfigMap")}
    configmaps["mlflow-config"]["MLFLOW_S3_ENDPOINT_URL"] = endpoint  # the optional key, for a non-AWS S3
    service = one("Service", "mlflow-postgres")
    service_address = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    local_address = f"127.0.0.1:{pg_port}"
    # the ConfigMap volumes, written where the container would see them (a folder of ours stands for the mount)
    mounts = tmp_path_factory.mktemp("mlflow_mounts")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mount_paths = {}
    for mount in container.get("volumeMounts", []):
        folder = mounts / mount["name"]
        folder.mkdir()
        for key, text in configmaps[volumes[mount["name"]]["configMap"]["name"]].items():
            (folder / key).write_text(text.replace(service_address, local_address))
        mount_paths[mount["mountPath"]] = str(folder)
    env = _container_env(container, secrets, configmaps)
    assert any(service_address in value for value in env.values()), f"nothing in the env names {service_address}"
    for name, value in env.items():
        value = value.replace(service_address, local_address)
        for mount_path, folder in mount_paths.items():
            value = value.replace(mount_path + "/", folder + "/")
        env[name] = value
    command = [expand_k8s_vars(arg, env) for arg in container["command"]]
    port = _free_port_pair()
    command[command.index("--host") + 1] = "127.0.0.1"  # the pod binds 0.0.0.0; here, loopback only
    command[command.index("--port") + 1] = str(port)
    command[0] = str(Path(sys.executable).with_name("mlflow"))
    log = tempfile.NamedTemporaryFile("w", prefix="mlflow-server-", suffix=".log", delete=False)  # noqa: SIM115
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MLFLOW_"))}
    server = subprocess.Popen(command, env={**clean_env, **env}, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # first start migrates the empty database (minutes on a busy machine)
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.time() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        yield DeployedMlflow(url, secrets, endpoint, command, server.pid)
    finally:
        end_process_group(server, timeout_s=10)  # the server and its uvicorn workers, only ours
        log.close()


@pytest.mark.slow
def test_mlflow_server_as_deployed_keeps_runs_and_registry_in_postgres_and_artifacts_in_s3(
        mlflow_server, postgres, tmp_path, monkeypatch):
    import mlflow
    import psycopg
    from mlflow import MlflowClient

    from geosurge.tracking.runs import start_mlflow_run

    server = mlflow_server
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)  # the client needs no S3 access: the server proxies artifacts
    user, password = server.auth  # what the Ray pods get from the Secret mlflow-auth
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    config = load_config(overrides=[f"tracking.tracking_uri={server.url}", f"output_dir={tmp_path}",
                                    "tracking.experiment=infra-test", "run_name=infra-test"])
    assert config.resolved_artifact_location is None  # the server's proxied default, as on the cluster
    run = start_mlflow_run(config)  # the pipeline's own code path: params + config.yaml artifact
    mlflow.log_metric("test_geoscore", 1234.5)
    mlflow.end_run()
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    client = MlflowClient(server.url)
    client.create_registered_model("infra-test")
    version = client.create_model_version("infra-test", f"{run.info.artifact_uri}/config.yaml", run.info.run_id)
    client.set_registered_model_alias("infra-test", "challenger", version.version)
    assert client.get_model_version_by_alias("infra-test", "challenger").run_id == run.info.run_id

    # the run, the metric, the alias and the server's users are rows in PostgreSQL ...
    pg_port, pg_user, pg_password, pg_db = postgres
    with psycopg.connect(host="127.0.0.1", port=pg_port, user=pg_user, password=pg_password, dbname=pg_db) as c:
        cursor = c.cursor()
        cursor.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cursor.fetchone()[0] == 1
        cursor.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'test_geoscore'", (run.info.run_id,))
        assert cursor.fetchone()[0] == 1234.5
        cursor.execute("SELECT version FROM registered_model_aliases WHERE alias = 'challenger'")
        assert str(cursor.fetchone()[0]) == str(version.version)
        cursor.execute("SELECT is_admin FROM users WHERE username = %s", (user,))
        assert cursor.fetchone() == (True,)  # a pod restart keeps its users
    # ... and config.yaml is an object under --artifacts-destination in the S3 bucket
    destination = urlparse(flag_value(server.command, "--artifacts-destination"))
    s3_credentials = server.secrets["geosurge-s3"]
    s3 = boto3.client("s3", endpoint_url=server.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=s3_credentials["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_credentials["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=destination.netloc,
                                                 Prefix=destination.path.strip("/"))["Contents"]]
    (config_key,) = [k for k in keys if run.info.run_id in k and k.endswith("/config.yaml")]
    body = s3.get_object(Bucket=destination.netloc, Key=config_key)["Body"].read().decode()
    assert "experiment: infra-test" in body

    # A large artifact (a ViT-L's fp32 weights are 1.2 GB) goes up in parts: the server advertises multipart for its
    # S3 destination and presigns each part; the client, still without S3 credentials, PUTs the parts. The
    # threshold (500 MiB by default) is lowered here so that 12 MiB make 3 parts of S3's minimum part size.
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(5 << 20))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(5 << 20))
    weights = tmp_path / "model.pt"
    weights.write_bytes(random.randbytes(12 << 20))
    client.log_artifact(run.info.run_id, str(weights), "model")
    (weights_key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=destination.netloc,
                                                          Prefix=destination.path.strip("/"))["Contents"]
                      if run.info.run_id in o["Key"] and o["Key"].endswith("/model/model.pt")]
    uploaded = s3.get_object(Bucket=destination.netloc, Key=weights_key)
    # S3 ends a multipart object's ETag with its part count: 3 parts of 5 MiB (one PUT of the same file: "-2",
    # SeaweedFS's own 8 MiB chunks)
    assert uploaded["ETag"].strip('"').endswith("-3"), uploaded["ETag"]
    assert uploaded["Body"].read() == weights.read_bytes()


@pytest.mark.slow
def test_mlflow_server_accepts_the_host_the_ray_pods_use_and_rejects_others(mlflow_server, tmp_path):
    configmap = one("ConfigMap", "geosurge-config")["data"]
    (tmp_path / "pipeline.yaml").write_text(configmap["pipeline.yaml"])
    cluster_host = urlparse(load_config(str(tmp_path / "pipeline.yaml")).resolved_tracking_uri).netloc
    api = f"{mlflow_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    auth = mlflow_server.auth
    assert requests.get(api, headers={"Host": cluster_host}, auth=auth, timeout=10).status_code == 200
    assert requests.get(api, headers={"Host": "mlflow:5000"}, auth=auth, timeout=10).status_code == 200  # compose
    assert requests.get(api, headers={"Host": "attacker.example:5000"}, auth=auth, timeout=10).status_code == 403


@pytest.mark.slow
def test_mlflow_server_as_deployed_answers_only_requests_with_the_users_password(mlflow_server):
    """Whoever can register a model can run code where it is loaded: no anonymous reads or writes."""
    api = f"{mlflow_server.url}/api/2.0/mlflow"
    user, password = mlflow_server.auth
    anonymous = [requests.get(f"{api}/experiments/search?max_results=1", timeout=10),
                 requests.get(f"{api}/registered-models/search", timeout=10),
                 requests.post(f"{api}/experiments/create", json={"name": "anonymous"}, timeout=10),
                 requests.get(f"{mlflow_server.url}/api/2.0/mlflow-artifacts/artifacts", timeout=10)]
    assert [r.status_code for r in anonymous] == [401, 401, 401, 401]
    wrong = requests.get(f"{api}/experiments/search?max_results=1", auth=(user, password + "x"), timeout=10)
    assert wrong.status_code == 401
    assert requests.get(f"{api}/experiments/search?max_results=1", auth=(user, password), timeout=10).ok
    assert requests.get(f"{mlflow_server.url}/health", timeout=10).ok  # the kubelet's probes need no password


@pytest.mark.slow
def test_no_secret_is_on_the_mlflow_servers_command_lines(mlflow_server):
    """A command line is in every process listing (`ps`, /proc/<pid>/cmdline): the server and its workers get the
    database password, the admin password and the keys from their environment only."""
    secret_values = [v for secret in mlflow_server.secrets.values() for k, v in secret.items()
                     if "PASSWORD" in k or "SECRET" in k]
    assert len(secret_values) == 4
    group = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
             if _process_group(pid) == mlflow_server.pid]
    assert mlflow_server.pid in group and len(group) >= 3  # the server and its two uvicorn workers
    for pid in group:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        assert not [v for v in secret_values if v in cmdline], f"a secret is on the command line of {pid}: {cmdline}"


def _process_group(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None
