"""Strict safetensors header validation, shared by the local (mmap) and remote (range-read) readers.

Nothing in a header is trusted before it is checked: the length prefix against a cap and the file
size, the JSON shape, every dtype and shape, each byte span against ``numel × itemsize``, and the spans
together, which must tile the data section from 0 to its end with no gap or overlap. Each failure raises
its own kind of :class:`~lineage_scanner.errors.HeaderError`, named as the safetensors library names it.
"""

from __future__ import annotations

import json
import struct

from lineage_scanner.errors import (
    HeaderTooLarge,
    HeaderTooSmall,
    InvalidHeader,
    InvalidHeaderDeserialization,
    InvalidHeaderLength,
    InvalidOffset,
    MetadataIncompleteBuffer,
    TensorInvalidInfo,
    ValidationOverflow,
)
from lineage_scanner.readers.base import TensorInfo

#: Largest header accepted. Real headers are well under 10 MB even for 1,000-shard MoE models.
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: No dimension or offset reaches this (2^62 bytes is 4 EiB): larger ones are a lie, refused before any sum.
LARGEST = 2**62

ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}

def header_length(prefix: bytes, file_size: int, path: str) -> int:
    """Validate the 8-byte little-endian length prefix before fetching the header it announces."""
    if file_size < 8 or len(prefix) < 8:
        raise HeaderTooSmall(path, f"truncated: {file_size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise HeaderTooLarge(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap")
    if 8 + n > file_size:
        raise InvalidHeaderLength(path, f"header length {n} runs past the end of the {file_size}-byte file")
    return n


def parse_header(raw: bytes, file_size: int, path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check a header; returns the tensors (absolute offsets) and the ``__metadata__``."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidHeader(path, "header is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidHeaderDeserialization(path, f"header is not valid JSON ({exc.msg})") from None
    if not isinstance(header, dict):
        raise InvalidHeaderDeserialization(path, f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidHeaderDeserialization(path, "__metadata__ must map strings to strings")
    base = 8 + len(raw)
    data_size = file_size - base
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        begin, end, dtype, shape = _check_entry(name, entry, path)
        tensors[name] = TensorInfo(name, dtype, shape, path, base + begin, base + end)
    _check_tiling(tensors.values(), base, data_size, path)
    return tensors, metadata


def _check_entry(name: str, entry: object, path: str) -> tuple[int, int, str, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise InvalidHeaderDeserialization(path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEMSIZE:
        raise InvalidHeaderDeserialization(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not _counts(shape):
        raise InvalidHeaderDeserialization(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative "
                                                 "integers")
    if not (_counts(offsets) and len(offsets) == 2):
        raise InvalidHeaderDeserialization(path, f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    if offsets[0] > offsets[1]:
        raise InvalidOffset(path, f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    if max(shape + offsets) >= LARGEST:
        raise ValidationOverflow(path, f"tensor {name!r}: shape {shape} or data_offsets {offsets} past 2^62")
    numel = 1
    for d in shape:
        numel *= d
    span = offsets[1] - offsets[0]
    if numel * ITEMSIZE[dtype] != span:
        raise TensorInvalidInfo(path, f"tensor {name!r}: {dtype} shape {shape} needs {numel * ITEMSIZE[dtype]} bytes "
                                      f"but data_offsets span {span}")
    return offsets[0], offsets[1], dtype, tuple(shape)


def _counts(values: object) -> bool:
    """A list of non-negative integers (JSON's ``true`` is no count)."""
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _check_tiling(tensors, base: int, data_size: int, path: str) -> None:
    cursor = 0
    for t in sorted(tensors, key=lambda t: (t.start, t.end)):
        begin, end = t.start - base, t.end - base
        if begin != cursor:
            problem = "overlaps the previous tensor" if begin < cursor else f"leaves a gap at byte {cursor}"
            raise InvalidOffset(path, f"tensor {t.name!r}: data_offsets [{begin}, {end}] {problem}")
        cursor = end
    if cursor != data_size:
        raise MetadataIncompleteBuffer(path, f"tensors end at byte {cursor} of a {data_size}-byte data section"
                                             f" ({'truncated file' if cursor > data_size else 'trailing bytes'})")
