"""infra/mlflow/mlflow.yaml as a trust boundary: the server authenticates every request, keeps no secret on its command
line, and NetworkPolicies let only the Ray pods reach it and only it reach its database. (The server itself runs for
real in tests/infra/test_local_services.py.)"""

from urllib.parse import urlparse

import pytest

from tests.infra.infra_helpers import containers, docs_of_kind, flag_value, one, ray_cluster_specs

# KubeRay puts this label on every Ray head and worker pod it creates (ray-operator/controllers/ray/common/pod.go,
# utils.RayNodeLabelKey: "yes", v1.7.0); the submitter pod of a RayJob does not carry it.
KUBERAY_RAY_POD_LABELS = {"ray.io/is-ray-node": "yes"}


def _server() -> tuple[dict, dict]:
    pod = one("Deployment", "mlflow")["spec"]["template"]
    return pod, pod["spec"]["containers"][0]


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _selects(policy: dict, labels: dict) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def _ingress_peers(policy: dict) -> list[dict]:
    return [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]


def _pod_labels() -> dict[str, dict]:
    """Every pod template's labels: our Deployments and StatefulSets as written, Ray pods with KubeRay's labels."""
    labels = {doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
              for kind in ("Deployment", "StatefulSet") for _, doc in docs_of_kind(kind)}
    for where, spec in ray_cluster_specs():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            own = group["template"].get("metadata", {}).get("labels", {})
            labels[f"{where}/{group.get('groupName', 'head')}"] = {**own, **KUBERAY_RAY_POD_LABELS}
    return labels


def test_the_server_runs_the_basic_auth_app_with_its_admin_from_a_secret():
    _, container = _server()
    assert flag_value(container["command"], "--app-name") == "basic-auth"
    env = _env(container)
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth", name


def test_the_auth_config_is_read_by_mlflow_and_keeps_users_in_the_servers_postgresql(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    pod, container = _server()
    env = _env(container)
    (mount,) = [m for m in container["volumeMounts"] if env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith(m["mountPath"])]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    ini_name = env["MLFLOW_AUTH_CONFIG_PATH"]["value"].removeprefix(mount["mountPath"] + "/")
    ini = tmp_path / ini_name
    ini.write_text(one("ConfigMap", volume["configMap"]["name"])["data"][ini_name])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    config = read_auth_config()
    database, backend = urlparse(config.database_uri), urlparse(env["MLFLOW_BACKEND_STORE_URI"]["value"])
    assert database.scheme == backend.scheme == "postgresql" and database.netloc == backend.netloc
    assert database.password is None and backend.password is None  # libpq's PGPASSWORD, from the Secret
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "POSTGRES_PASSWORD"}
    assert config.default_permission in ("READ", "NO_PERMISSIONS")


def test_no_secret_reaches_the_servers_command_line():
    _, container = _server()
    secret_vars = {name for name, item in _env(container).items() if "secretKeyRef" in item.get("valueFrom", {})}
    assert {"PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "AWS_SECRET_ACCESS_KEY"} <= secret_vars
    expanded = " ".join(container["command"] + container.get("args", []))
    assert not [name for name in secret_vars if f"$({name})" in expanded]
    # nor through a plain variable that embeds one and is then expanded on the command line
    for item in container["env"]:
        if "value" in item:
            assert not [name for name in secret_vars if f"$({name})" in item["value"]], item
    assert flag_value(container["command"], "--backend-store-uri") is None  # MLFLOW_BACKEND_STORE_URI instead


def test_only_the_ray_pods_reach_the_server_and_only_the_server_reaches_its_database():
    pods = _pod_labels()
    policies = [doc for _, doc in docs_of_kind("NetworkPolicy")]
    server_pod, server = _server()
    database_labels = one("StatefulSet", "mlflow-postgres")["spec"]["template"]["metadata"]["labels"]
    for target, allowed in ((server_pod["metadata"]["labels"], lambda name, labels: "Ray" in name),
                            (database_labels, lambda name, labels: name == "mlflow")):
        (policy,) = [p for p in policies if _selects(p, target)]
        assert "Ingress" in policy["spec"]["policyTypes"]
        peers = _ingress_peers(policy)
        assert peers and all(set(peer) == {"podSelector"} for peer in peers)  # no namespace or IP block
        reaching = {name for name, labels in pods.items()
                    if any(peer["podSelector"]["matchLabels"].items() <= labels.items() for peer in peers)}
        assert reaching and all(allowed(name, pods[name]) for name in reaching), reaching
        ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule.get("ports", [])}
        assert ports and len(ports) == 1
    assert len([n for n in pods if "Ray" in n]) == 9  # head + 2 worker groups in each of the 3 cluster specs
    (server_port,) = [p["containerPort"] for p in server["ports"]]
    (server_policy,) = [p for p in policies if _selects(p, server_pod["metadata"]["labels"])]
    assert {port["port"] for rule in server_policy["spec"]["ingress"] for port in rule["ports"]} == {server_port}


@pytest.mark.parametrize("where, spec", ray_cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_ray_pod_logs_in_to_the_server_as_the_user_the_secret_defines(where, spec):
    server_env = _env(_server()[1])
    expected = {"MLFLOW_TRACKING_USERNAME": server_env["MLFLOW_AUTH_ADMIN_USERNAME"]["valueFrom"]["secretKeyRef"],
                "MLFLOW_TRACKING_PASSWORD": server_env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]}
    for group, _, container in containers({"kind": "RayCluster", "spec": spec}):
        env = _env(container)
        for name, secret_ref in expected.items():
            assert env[name]["valueFrom"]["secretKeyRef"] == secret_ref, f"{where}/{group}: {name}"
