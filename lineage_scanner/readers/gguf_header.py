"""Where a GGUF header ends, from its first bytes alone: for reading GGUF over HTTP range requests.

GGUF's header (metadata and tensor table) has no length prefix; it must be walked. :func:`header_end`
walks what it is given and says how many bytes are needed when that is not enough. Every count and length
is checked against the bytes the file has left before it is used (an array of 2^60 items, or a million
strings in a 99 KB file, is refused at once), so walking costs time and memory in proportion to the file,
locally and over HTTP alike; :class:`lineage_scanner.readers.gguf_file.GgufFile` walks it before the
``gguf`` package parses anything.
"""

from __future__ import annotations

import struct

#: Sizes of GGUF's scalar value types (8 is a string, 9 an array).
SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4
DEFAULT_ALIGNMENT = 32


class NeedMore(Exception):
    """The header continues past the bytes given; ``at_least`` is a size that gets further."""

    def __init__(self, at_least: int):
        self.at_least = at_least


#: GGML tensors have at most 4 dimensions; a few more are tolerated, thousands are a lie.
MAX_DIMS = 8


class _Cursor:
    def __init__(self, data: bytes, size: int, pos: int = 0):
        self.data, self.size, self.pos = data, size, pos

    def fits(self, n: int, what: str) -> None:
        """``n`` more bytes must fit in what remains of the file."""
        if n > self.size - self.pos:
            raise ValueError(f"{what} needs {n} bytes but only {self.size - self.pos} remain in the file")

    def take(self, n: int) -> bytes:
        self.fits(n, "a field")
        if self.pos + n > len(self.data):
            raise NeedMore(max(2 * len(self.data), self.pos + n))
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> bytes:
        n = self.u64()
        self.fits(n, f"a string of {n} bytes")
        return self.take(n)

    def value(self, kind: int, depth: int = 0) -> bytes | None:
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.u32(), self.u64()
            if item in SCALAR:
                self.fits(SCALAR[item] * count, f"an array of {count} items")
                self.take(SCALAR[item] * count)
            elif item in (STRING, ARRAY) and depth < 2:
                self.fits(count * (8 if item == STRING else 12), f"an array of {count} items")
                for _ in range(count):
                    self.value(item, depth + 1)
            else:
                raise ValueError(f"array of metadata type {item} not allowed here")
            return None
        return self.take(SCALAR[kind])


def header_end(data: bytes, size: int | None = None) -> int:
    """Offset where tensor data starts (header end, aligned), for a file of ``size`` bytes (default: the
    data given is the whole file). Raises NeedMore, or ValueError if malformed."""
    cur = _Cursor(data, len(data) if size is None else size, 8)
    n_tensors, n_kv = cur.u64(), cur.u64()
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key, kind = cur.string(), cur.u32()
        if kind not in SCALAR and kind not in (STRING, ARRAY):
            raise ValueError(f"unknown metadata type {kind}")
        value = cur.value(kind)
        if key == b"general.alignment" and kind == UINT32:
            alignment = struct.unpack("<I", value)[0] or DEFAULT_ALIGNMENT
    for _ in range(n_tensors):
        cur.string()
        dims = cur.u32()
        if dims > MAX_DIMS:
            raise ValueError(f"a tensor with {dims} dimensions")
        cur.take(8 * dims + 4 + 8)  # dims, type, offset
    return -(-cur.pos // alignment) * alignment
