"""Ray nodes on this machine, each its own `ray start` with its own temp dir and ports: a head, and worker nodes
that join it the way a cluster's machines do. A node is stopped by killing only its own processes (`ray stop`
would stop every Ray instance on the machine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.conftest import free_port

BIN = Path(sys.executable).parent
# Every port a node opens, explicit and free: Ray's fixed defaults (10001, 52365, …) would clash with any other Ray
HEAD_PORT_FLAGS = ("--port", "--ray-client-server-port")
NODE_PORT_FLAGS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                   "--metrics-export-port", "--node-manager-port", "--object-manager-port")


def ray_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayNode:
    temp_dir: str  # short, under /tmp: Ray's socket paths have a length limit
    ports: dict[str, int]
    gcs_address: str = ""
    dashboard: str = ""  # the head's job-submission address
    env: dict[str, str] = field(default_factory=ray_env)

    @property
    def node_manager_port(self) -> int:
        return self.ports["--node-manager-port"]

    def processes(self) -> list[psutil.Process]:
        """This node's processes and all their descendants (agents and workers retitle themselves "ray::…")."""
        marks = [re.escape(self.temp_dir), self._raylet_mark]
        if "--port" in self.ports:
            marks.append(rf":{self.ports['--port']}(?!\d)")  # the head's client server names only the GCS address
        mark = re.compile("|".join(marks))
        roots = [p for p in psutil.process_iter(["cmdline"]) if mark.search(" ".join(p.info["cmdline"] or []))]
        found = {}
        for proc in roots:
            try:
                for q in [proc, *proc.children(recursive=True)]:
                    found[q.pid] = q
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    @property
    def _raylet_mark(self) -> str:
        """This node's raylet on its command line (a port that is the prefix of another never matches)."""
        return rf"--node_manager_port={self.node_manager_port}(?!\d)"

    def owns(self, proc: psutil.Process) -> bool:
        """Whether `proc` runs on this node: its raylet (an ancestor) is this node's."""
        try:
            return any(re.search(self._raylet_mark, " ".join(p.cmdline())) for p in proc.parents())
        except psutil.Error:
            return False

    def kill(self) -> None:
        """SIGKILL every process of the node at once: a machine that is lost, not one shut down."""
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of this node's GCS (a head's) and raylet logs: why a start failed."""
        logs = Path(self.temp_dir, "session_latest", "logs")
        tails = []
        for name in ("gcs_server.out", "gcs_server.err", "raylet.out", "raylet.err"):
            text = (logs / name).read_text(errors="replace") if (logs / name).is_file() else ""
            if text.strip():
                tails.append(f"--- {name} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(["", *tails])


def _start(args: list[str], node: RayNode, attempts: int = 3) -> RayNode:
    """`ray start`, tried again after a clean-up and a pause when it fails: on a loaded machine a raylet can miss
    Ray's fixed 30 s deadline to register with the GCS (seen in CI while another test ran three Ray jobs)."""
    for attempt in range(attempts):
        command = [str(BIN / "ray"), "start", "--node-ip-address=127.0.0.1", f"--temp-dir={node.temp_dir}",
                   "--disable-usage-stats", *(f"{flag}={port}" for flag, port in node.ports.items()), *args]
        try:  # a start takes 3-7 s here, 34 s when it failed in CI; one that cannot reach its GCS hangs
            started = subprocess.run(command, check=False, env=node.env, capture_output=True, text=True, timeout=90)
            if started.returncode == 0:
                return node
            failure = f"{started.stdout}{started.stderr}"
        except subprocess.TimeoutExpired as hung:
            output = b"".join(o if isinstance(o, bytes) else o.encode() for o in (hung.stdout, hung.stderr) if o)
            failure = f"no answer in {hung.timeout:.0f} s\n{output.decode(errors='replace')}"
        failure += node.log_tails()
        node.kill()
        if attempt + 1 < attempts:
            time.sleep(5 * (attempt + 1))  # let the load spike that slowed this start pass
    node.remove()
    raise RuntimeError(f"ray start failed {attempts} times; the last:\n{failure}")


def start_head(num_cpus: int) -> RayNode:
    """`ray start --head` on loopback with the dashboard (job submission) on a free port."""
    node = RayNode(tempfile.mkdtemp(prefix="gsray", dir="/tmp"),
                   {flag: free_port() for flag in (*HEAD_PORT_FLAGS, *NODE_PORT_FLAGS)})
    dashboard = free_port()
    node.gcs_address = f"127.0.0.1:{node.ports['--port']}"
    node.dashboard = f"http://127.0.0.1:{dashboard}"
    return _start(["--head", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                   f"--num-cpus={num_cpus}"], node)


def start_worker_node(head: RayNode, num_cpus: int) -> RayNode:
    """Another Ray node joining `head` (`ray start --address …`): its own temp dir, hence its own session folder,
    logs and working directory for the jobs' code."""
    node = RayNode(tempfile.mkdtemp(prefix="gsnode", dir="/tmp"), {flag: free_port() for flag in NODE_PORT_FLAGS})
    node.gcs_address = head.gcs_address
    return _start([f"--address={head.gcs_address}", f"--num-cpus={num_cpus}"], node)


@dataclass
class RayCluster:
    """A head that takes no work (`--num-cpus=0`, as on a real cluster) and worker nodes that do."""

    head: RayNode
    nodes: list[RayNode]

    @property
    def address(self) -> str:
        return self.head.dashboard

    @property
    def env(self) -> dict[str, str]:
        return self.head.env

    def train_workers(self) -> dict[int, RayNode]:
        """The cluster's RayTrainWorker processes, by pid, with the node each runs on."""
        found = {}
        for node in self.nodes:
            for proc in node.processes():
                try:
                    if " ".join(proc.cmdline()).startswith("ray::RayTrainWorker") and node.owns(proc):
                        found[proc.pid] = node
                except psutil.Error:  # exited meanwhile
                    pass
        return found

    def remove(self) -> None:
        for node in [*self.nodes, self.head]:
            node.remove()


def start_cluster(nodes: int, cpus_per_node: int, attempts: int = 2) -> RayCluster:
    """A head and `nodes` worker nodes; started afresh, head included, when a worker node cannot join: a head whose
    GCS stopped answering would fail every retry of the worker."""
    for attempt in range(1, attempts + 1):
        cluster = RayCluster(start_head(num_cpus=0), [])
        try:
            for _ in range(nodes):
                cluster.nodes.append(start_worker_node(cluster.head, cpus_per_node))
        except RuntimeError as error:
            head_logs = cluster.head.log_tails()
            cluster.remove()
            if attempt == attempts:
                raise RuntimeError(f"no cluster in {attempts} tries; its head's logs:{head_logs}") from error
        except BaseException:
            cluster.remove()
            raise
        else:
            return cluster
