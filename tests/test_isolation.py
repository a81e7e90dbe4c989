"""A test module whose local Ray dies fails its own tests, not the run: the next module gets a Ray of its own
(tests/conftest.py shuts a module's Ray down when the module ends)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.ray

KILLS_ITS_RAYLET = """
import os, signal, time
from lineage_scanner.run.ray import connect

def test_the_raylet_dies():
    ray = connect(num_cpus=1)
    os.kill(ray._private.worker.global_worker.node.all_processes["raylet"][0].process.pid, signal.SIGKILL)
    time.sleep(1)
    ray.get(ray.remote(lambda: 1).remote(), timeout=60)

def test_the_same_module_after_it():
    from lineage_scanner.run.ray import connect
    ray = connect(num_cpus=1)
    ray.get(ray.remote(lambda: 1).remote(), timeout=60)
"""

USES_RAY_AFTER = """
from lineage_scanner.run.ray import connect

def test_a_later_module():
    ray = connect(num_cpus=1)
    assert ray.get(ray.remote(lambda: 41).remote(), timeout=120) == 41
"""


def test_a_dead_ray_fails_only_its_own_module(tmp_path):
    (tmp_path / "test_a_kills.py").write_text(KILLS_ITS_RAYLET)
    (tmp_path / "test_b_after.py").write_text(USES_RAY_AFTER)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = done.stdout.strip().splitlines()[-1]
    assert "2 failed, 1 passed" in summary, done.stdout[-3000:]
    assert "test_b_after.py::test_a_later_module" not in done.stdout
