"""A real `ray start --head` for the tests, as an operator starts one, on loopback only, and stopped
without touching any other Ray on the machine.

`ray stop` stops every Ray it finds on the machine (other people's too), so it is never used: the head is
started in a session of its own, and stopping it kills that session's processes (Ray's workers stay in
their raylet's session), then any process whose command line names its temp dir. Every port is a free
one chosen here (Ray's defaults, 6379, 8265, 10001, 52365, are fixed and would clash with another Ray on
the machine), and the head has a token of its own, never ``~/.ray/auth_token``, which every Ray on the
machine shares.

Addresses: Ray's CLI rewrites ``--node-ip-address=127.0.0.1`` to the machine's outward address
(``resolve_ip_for_localhost``); under ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` it takes the loopback
address instead, which is what a one-node cluster needs. (That setting also refuses ``ray start
--address``: a cluster of several nodes on loopback is started with Ray's ``cluster_utils.Cluster``,
which takes the node address as given; see tests/test_multinode.py.)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of a Ray command: this venv first, no inherited RAY_ADDRESS."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class RayHead:
    """One `ray start --head --block` on 127.0.0.1: its session (the `ray start` process leads it)."""

    num_cpus: int = 2
    env: dict[str, str] = field(default_factory=lambda: ray_env(RAY_AUTH_MODE="token",
                                                                RAY_AUTH_TOKEN=secrets.token_hex(32)))
    temp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # sockets: < 108 bytes
    dashboard: str = ""
    sid: int = 0
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> RayHead:
        dash_port = free_port()
        self.dashboard = f"http://127.0.0.1:{dash_port}"
        cmd = [RAY, "start", "--head", f"--port={free_port()}", f"--num-cpus={self.num_cpus}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--temp-dir={self.temp}", "--disable-usage-stats",
               "--block"]
        log = Path(self.temp) / "start.log"
        with open(log, "w") as out:
            self.proc = proc = subprocess.Popen(cmd, env={**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.sid = proc.pid
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text(errors="replace"):  # --block: it stays, after this
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start --head failed ({proc.returncode}): {log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    def pids(self) -> list[int]:
        """Live processes of the head's session."""
        return [pid for pid in _pids() if _sid(pid) == self.sid]

    def stop(self) -> None:
        """Stop this head's processes only: its session, then anything naming its temp dir."""
        _signal_all(self.pids(), signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.3)
        _signal_all(self.pids() + _naming(self.temp), signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _naming(text: str) -> list[int]:
    """Processes whose command line holds ``text``."""
    out = []
    for pid in _pids():
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
