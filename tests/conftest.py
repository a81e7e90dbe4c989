"""Shared fixtures: the demo zoo (built once per session) and small hand-made checkpoints."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from lineage_scanner.demo.zoo import build_zoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """The demo zoo's ground truth; checkpoints live under the returned entries' paths."""
    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def zoo_by_name(zoo):
    return {e.model: e for e in zoo}


# The synthetic null's disk cache is kept per test session, so no earlier version's scores are read.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="lineage-test-cache-")

# Without a GPU, the Triton backend runs its kernels in Triton's CPU interpreter. Set before any import
# of triton (the interpreter is chosen at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

