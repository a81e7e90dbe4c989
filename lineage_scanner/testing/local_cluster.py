"""A Ray cluster of several nodes on this machine, every one on 127.0.0.1, for tests and benches.

Ray's own ``cluster_utils.Cluster`` starts each node (head or worker) as its own raylet, object store and
agents, joined through the head's GCS, exactly as ``ray start --address`` does on another machine; unlike
the ``ray start`` command it takes the node address as given (the CLI rewrites 127.0.0.1 to the machine's
outward address). Given 127.0.0.1, Ray's servers listen on loopback only; so that every process that
joins (a node's job agent, a job's driver) also connects to 127.0.0.1 rather than rewriting it to the
machine's outward address, the nodes run with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (under which Ray
takes the loopback address as a node's own), and so does this process's Ray client. Every port is a free
one (Ray's defaults are fixed and would clash with another Ray on the machine); nodes are stopped by the
cluster that started them, never by ``ray stop``, which stops every Ray on the machine. A node is lost as
a machine is: its raylet killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field

#: Starts of a node before giving up: Ray gives a node 30 s to register, which a loaded machine can miss.
TRIES = 3
#: Under "0", Ray takes 127.0.0.1 as the node's address instead of rewriting it (see the module docstring).
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Node deaths noticed within seconds, not Ray's default tens of seconds (a lost node in a test).
FAST_FAILURE = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                "health_check_initial_delay_ms": 1000, "worker_niceness": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """``LocalCluster(temp_dir).start(head_cpus)`` then ``add_node(...)``; ``dashboard`` is the address
    ``ray job submit`` takes, ``address`` the one ``ray.init`` takes. Nodes inherit this process's
    environment when they start (as a machine's nodes have their own: the Hub token, the store's
    credentials), never through a runtime_env."""

    temp_dir: str
    nodes: list = field(default_factory=list)
    dashboard: str = ""
    cluster: object = None

    def start(self, num_cpus: int = 2, dashboard: bool = True) -> LocalCluster:
        os.environ[LOOPBACK] = "0"  # the nodes inherit this process's environment
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        ray_constants.ENABLE_RAY_CLUSTER = False  # read when Ray was imported: this process's client too

        for attempt in range(TRIES):  # a head that timed out is swept away and started again
            port = free_port()
            self.dashboard = f"http://127.0.0.1:{port}"
            try:
                self.cluster = Cluster(initialize_head=True, head_node_args={
                    "num_cpus": num_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": dashboard,
                    "dashboard_host": "127.0.0.1", "dashboard_port": port, "gcs_server_port": free_port(),
                    "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
                    "temp_dir": self.temp_dir, "_system_config": FAST_FAILURE})
                break
            except Exception as exc:
                if not _timed_out(exc) or attempt == TRIES - 1:
                    raise
                _kill(_within(self.temp_dir))
        self.nodes.append(self.cluster.head_node)
        return self

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, num_cpus: int = 1, num_gpus: int = 0):
        """Start a worker node. Ray gives a node 30 s to register; on a loaded machine that can pass, and
        the start is tried again (the processes of the one that timed out are found by its session dir
        when the cluster stops)."""
        for attempt in range(TRIES):
            try:
                node = self.cluster.add_node(num_cpus=num_cpus, num_gpus=num_gpus, node_ip_address="127.0.0.1",
                                             dashboard_agent_listen_port=free_port(),
                                             metrics_export_port=free_port())
                break
            except Exception as exc:
                if not _timed_out(exc) or attempt == TRIES - 1:
                    raise
        self.nodes.append(node)
        return node

    def wait(self) -> None:
        self.cluster.wait_for_nodes()

    @staticmethod
    def kill_raylet(node) -> int:
        """Lose ``node`` as a machine is lost: SIGKILL to its raylet (its workers follow it)."""
        from ray._private import ray_constants

        pid = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """Stop every process this cluster started, and only those: its nodes, then whatever still runs in
        or names its temp dir (a job's entrypoint runs in a working dir there)."""
        if self.cluster is not None:
            self.cluster.shutdown()
        _kill(_within(self.temp_dir))


def _timed_out(exc: Exception) -> bool:
    return "timed out during startup" in str(exc)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _within(folder: str) -> list[int]:
    """Processes (not this one) whose command line names ``folder`` or whose working dir is below it."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if folder.encode() in cmdline or cwd.startswith(folder):
            out.append(int(entry))
    return out
