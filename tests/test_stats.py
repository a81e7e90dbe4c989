"""Moments: every backend against numpy float64, and the merge law stats(a) + stats(b) = stats(a ∪ b).

The same suite runs on the CPU backend and on the Triton kernel (in Triton's interpreter without a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.measure.kernels.stats import Moments
from tests.helpers import BACKEND_NAMES

BACKEND = get_backend("cpu")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    return get_backend(request.param)


def moments_of(t: torch.Tensor, backend=BACKEND) -> Moments:
    return Moments.from_partial(backend.partials([t])[0])


def reference(values: np.ndarray) -> dict:
    x = values.astype(np.float64).ravel()
    x = x[np.isfinite(x)]
    d = x - x.mean()
    return {
        "count": x.size,
        "mean": x.mean(),
        "std": x.std(ddof=1),
        "min": x.min(),
        "max": x.max(),
        "skew": math.sqrt(x.size) * (d**3).sum() / ((d**2).sum() ** 1.5),
        "kurtosis": x.size * (d**4).sum() / ((d**2).sum() ** 2),
    }


CASES = [pytest.param((1823, 781), 0.0, 0.02, marks=pytest.mark.slow), ((4097,), 3.0, 5e-2), ((3, 5, 7), -2.0, 3.0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,loc,scale", CASES)
def test_matches_float64_reference(backend, dtype, shape, loc, scale):
    check_against_reference(backend, dtype, shape, loc, scale)


def test_large_mean_does_not_swamp_small_spread(backend):
    """mean 1e3, std 1e-2: a naive sum-of-squares loses every digit of the std (fp32 only: 16-bit types
    cannot even represent the spread at that magnitude)."""
    check_against_reference(backend, torch.float32, (100_003,), 1e3, 1e-2)


def check_against_reference(backend, dtype, shape, loc, scale):
    gen = torch.Generator().manual_seed(1)
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + loc).to(dtype)
    m = moments_of(t, backend)
    ref = reference(t.to(torch.float64).numpy())
    assert m.count == ref["count"]
    assert m.std == pytest.approx(ref["std"], rel=1e-6)
    # fp32 block partials (Triton) put the mean within ~1e-7 std of the truth; the std itself within 1e-6
    assert m.mean == pytest.approx(ref["mean"], rel=1e-6, abs=1e-6 * ref["std"])
    assert (m.min, m.max) == (ref["min"], ref["max"])
    assert m.absmax == max(abs(ref["min"]), abs(ref["max"]))
    assert m.skew == pytest.approx(ref["skew"], rel=1e-4, abs=1e-6)
    assert m.kurtosis == pytest.approx(ref["kurtosis"], rel=1e-6)


def test_nonfinite_values_are_counted_not_averaged(backend):
    t = torch.randn(10_000, dtype=torch.float32)
    t[17], t[4000], t[9999] = float("nan"), float("inf"), float("-inf")
    m = moments_of(t.to(torch.bfloat16), backend)
    finite = t[torch.isfinite(t)].to(torch.bfloat16).to(torch.float64).numpy()
    assert m.nonfinite == 3
    assert m.count == 9997
    assert m.std == pytest.approx(finite.std(ddof=1), rel=1e-6)


def test_empty_and_single_element(backend):
    assert moments_of(torch.empty(0), backend).count == 0
    one = moments_of(torch.tensor([2.5]), backend)
    assert (one.count, one.mean, one.min, one.max) == (1, 2.5, 2.5, 2.5)
    assert math.isnan(one.std)


def test_bit_identical_twice(backend):
    t = torch.randn(300_001).to(torch.bfloat16)
    assert backend.partials([t]) == backend.partials([t])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300), st.data())
def test_merge_equals_union(values, data):
    x = np.array(values)
    cut = data.draw(st.integers(0, len(x)))
    a = moments_of(torch.from_numpy(x[:cut]))
    b = moments_of(torch.from_numpy(x[cut:]))
    whole = moments_of(torch.from_numpy(x))
    merged = a + b
    assert merged.count == whole.count
    assert (merged.min, merged.max) == (whole.min, whole.max)
    scale = max(1.0, float(np.abs(x).max()))
    assert merged.mean == pytest.approx(whole.mean, rel=1e-9, abs=1e-12 * scale)
    assert merged.m2 == pytest.approx(whole.m2, rel=1e-7, abs=1e-9 * scale**2)
    assert merged.m4 == pytest.approx(whole.m4, rel=1e-6, abs=1e-9 * scale**4)
