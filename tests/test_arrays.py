"""Tensors as numpy arrays (readers/arrays.py): bf16 as opaque 2-byte items, decoded exactly; the views to
and from torch keep every bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineage_scanner.readers.arrays import BFLOAT16, as_numpy, floats, to_torch


def test_every_bf16_code_decodes_as_torch_does():
    codes = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = floats(codes.view(BFLOAT16))
    ref = torch.from_numpy(codes.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))  # NaN payloads and signed zeros included
    assert floats(codes.view(BFLOAT16)[:3], np.float64).dtype == np.float64


def test_bf16_items_refuse_a_plain_cast():
    """The point of the opaque dtype: code that forgets to decode fails loudly, never reads codes as values."""
    with pytest.raises((TypeError, ValueError)):
        np.zeros(4, np.uint16).view(BFLOAT16).astype(np.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn,
                                   torch.float8_e5m2])
def test_views_to_and_from_torch_keep_every_bit(dtype):
    t = (torch.randn(7, 9) * 3).to(dtype)
    back = to_torch(as_numpy(t))
    assert back.dtype == dtype and torch.equal(back.view(torch.uint8), t.view(torch.uint8))
    np.testing.assert_array_equal(floats(as_numpy(t), np.float64), t.to(torch.float64).numpy())
