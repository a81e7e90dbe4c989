"""Tensors as numpy arrays, so that a CPU scan never imports torch (2.5 s and 220 MB of a process here).

Readers hand the measurement numpy arrays that view the stored bytes. numpy has no bf16: bf16 items are
2-byte voids (:data:`BFLOAT16`), which numpy refuses to cast to any number, so no code can misread the
codes as values; :func:`floats` decodes them (and everything else) to float32 or float64, and the
compiled kernels read them as int16 codes. fp8 (rare outside packed formats) uses ``ml_dtypes``, imported
only when an fp8 tensor is read (its import alone costs half a second). Code that holds torch tensors
(the packed-format decoders, the GPU backend, callers of the API) converts at the edge with
:func:`as_numpy` / :func:`to_torch`, both views of the same memory.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lineage_scanner.errors import HeaderError
from lineage_scanner.readers.base import TensorInfo

BFLOAT16 = np.dtype("V2")
#: numpy dtype of each safetensors / GGUF number type (fp8: see :func:`numeric_dtype`).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": BFLOAT16,
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
#: safetensors fp8 type -> ml_dtypes / torch name
FP8 = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def numeric_dtype(info: TensorInfo, path: str) -> np.dtype:
    """The dtype a tensor is read as; raises for types that are not numbers (e.g. F8_E8M0 scales)."""
    if info.dtype in FP8:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, FP8[info.dtype]))
    dtype = DTYPES.get(info.dtype)
    if dtype is None:
        raise HeaderError(path, f"tensor {info.name!r}: dtype {info.dtype} cannot be read as numbers")
    return dtype


def floats(array: np.ndarray, dtype=np.float32) -> np.ndarray:
    """The values as ``dtype`` (a new array), bf16 codes decoded exactly."""
    if array.dtype == BFLOAT16:
        return (array.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32).astype(dtype, copy=False)
    return array.astype(dtype)


def as_numpy(tensor: Any) -> np.ndarray:
    """A numpy view of a numpy array or a CPU torch tensor (a copy of a GPU one), bf16 and fp8 included."""
    if isinstance(tensor, np.ndarray):
        return tensor
    import torch  # only a caller holding a torch tensor gets here, and it has imported torch already

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16)
    for name in FP8.values():
        if t.dtype == getattr(torch, name):
            import ml_dtypes

            return t.view(torch.uint8).numpy().view(getattr(ml_dtypes, name))
    return t.numpy()


def to_torch(array: np.ndarray):
    """A torch view of a numpy array, bf16 and fp8 included (for the GPU backend and packed formats)."""
    import torch

    dtype = None
    if array.dtype == BFLOAT16:
        array, dtype = np.ascontiguousarray(array).view(np.int16), torch.bfloat16
    elif array.dtype.name in FP8.values():
        array, dtype = np.ascontiguousarray(array).view(np.uint8), getattr(torch, array.dtype.name)
    with warnings.catch_warnings():  # a view of read-only bytes (a Hub body): the decoders only read it
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    return tensor.view(dtype) if dtype is not None else tensor


def take_runs(array: np.ndarray, starts: np.ndarray, run: int) -> np.ndarray:
    """``run`` consecutive elements of the flattened array from each index in ``starts``: [len(starts), run]."""
    return array.reshape(-1)[np.asarray(starts)[:, None] + np.arange(run)]
