"""Where a GGUF header ends, from its first bytes alone: for reading GGUF over HTTP range requests.

GGUF's header (metadata and tensor table) has no length prefix; it must be walked. :func:`header_end`
walks what it is given and says how many bytes are needed when that is not enough.
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


class _Cursor:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
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
        return self.take(self.u64())

    def value(self, kind: int) -> bytes | None:
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.u32(), self.u64()
            if item in SCALAR:
                self.take(SCALAR[item] * count)
            else:
                for _ in range(count):
                    self.value(item)
            return None
        return self.take(SCALAR[kind])


def header_end(data: bytes) -> int:
    """Offset where tensor data starts (header end, aligned). Raises NeedMore, or ValueError if malformed
    (the full validation is :class:`scanner.readers.gguf_file.GgufFile`'s)."""
    cur = _Cursor(data, 8)
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
        cur.take(8 * cur.u32() + 4 + 8)  # dims, type, offset
    return -(-cur.pos // alignment) * alignment
