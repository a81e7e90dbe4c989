"""Fixtures every module may use: the demo zoo (built once, cached across sessions) and the session's
environment; a Ray one module starts is shut down when the module ends; what each marker implies. Helpers
live in tests/helpers.py."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

#: Where built zoos are kept between sessions (before XDG_CACHE_HOME is pointed at this session's own).
ZOO_CACHE = Path(os.environ.get("LINEAGE_TEST_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineage-scanner-tests")

# The synthetic null's disk cache is kept per test session, so no earlier version's scores are read.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="lineage-test-cache-")

# Without a GPU, the Triton backend runs its kernels in Triton's CPU interpreter. Set before any import
# of triton (the interpreter is chosen at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """The demo zoo's ground truth; checkpoints live under the returned entries' paths (this session's own
    copy of a zoo built once per version of the code that writes it)."""
    from tests.helpers import cached_zoo

    return cached_zoo(tmp_path_factory.mktemp("zoo"), ZOO_CACHE)


@pytest.fixture(scope="session")
def zoo_by_name(zoo):
    return {e.model: e for e in zoo}


@pytest.fixture(autouse=True, scope="module")
def ray_per_module():
    """A local Ray lives no longer than the module that started it: if its raylet dies under load, that
    module's tests fail and the next module starts a Ray of its own, instead of every later module failing
    on a dead one."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


#: Markers that imply others: starting Ray or Chromium costs seconds, so such a test is slow too, and a
#: cluster test starts Ray (and stops every Ray on the machine: never part of the fast loop).
IMPLIED = {"ray": ("slow",), "browser": ("slow",), "cluster": ("ray", "slow")}


def pytest_collection_modifyitems(items):
    for item in items:
        for marker, implied in IMPLIED.items():
            if item.get_closest_marker(marker):
                for name in implied:
                    item.add_marker(name)

