"""GGUF headers in one pass, taking only what a scan needs, over a file or HTTP ranges alike.

A GGUF header has no length prefix: metadata pairs, then the tensor table, must be walked. A real one is
mostly tokenizer: a 150,000-token vocabulary is ~450,000 strings (tokens, merges) and arrays of scores and
token types, none of which a scan uses. :func:`parse_header` keeps the scalar and string metadata (the
architecture and the layout's sizes; arrays are never kept) and the tensor table, and passes over the rest
without building a Python object per item: an array of fixed-size items is skipped by its declared size
(its bytes are never read: over HTTP they are never fetched), an array of strings by a compiled walk of
its length prefixes (GGUF declares no total for it, so its bytes must pass, but none is decoded).

Every count and length is checked against the bytes the file has left before it is used (an array of
2^60 items, or a million strings in a 99 KB file, is refused at once), so the walk costs time and memory
in proportion to the file; the header itself is capped at MAX_HEADER_BYTES. The tensor table is held to
what llama.cpp's loader accepts: known types, rows of whole blocks, offsets laid end to end from the start
of the data section at the file's alignment, and every tensor inside the file; a table that claims more
bytes than the file holds is an error before anything is allocated for it.

The bytes come from a window ``(buffer, base)``: a local file's whole memory map, or for the Hub the first
bytes fetched, then further windows from a ``fetch(pos, n, hint)`` callable holding at least ``[pos, pos +
n)`` (``hint``: how much the walk expects to read from there), made of range reads
(:mod:`lineage_scanner.readers.hub_gguf`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from lineage_scanner.errors import HeaderError
from lineage_scanner.readers.base import TensorInfo

MAGIC = b"GGUF"
VERSIONS = (2, 3)
#: Sizes of GGUF's scalar value types (8 is a string, 9 an array).
SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4
#: struct formats of the scalar types, for the values kept
FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
DEFAULT_ALIGNMENT = 32
#: Smallest possible encoding of one metadata pair / tensor record; bounds counts by the file size.
MIN_KV_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8
#: GGML tensors have at most 4 dimensions; a few more are tolerated, thousands are a lie.
MAX_DIMS = 8
#: Arrays may hold arrays this deep (GGUF allows it; no known file nests at all).
MAX_DEPTH = 2
#: The most a header (metadata and tensor table) may span. A 262,000-token vocabulary with scores and
#: merges is under 20 MB.
MAX_HEADER_BYTES = 256 << 20
#: String values longer than this are not kept (a chat template is tens of KB): skipped like arrays.
MAX_KEPT_STRING = 1 << 20
#: Keys and tensor names are short (llama.cpp refuses tensor names of 64 bytes or more).
MAX_NAME_BYTES = 64 << 10
#: GGML tensor types: id -> (name, weights per block, bytes per block), as ggml.h numbers them (the tests
#: hold this table to the ``gguf`` package's, which the scan does not import: 0.2 s a process).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
#: name -> (weights per block, bytes per block)
BLOCKS = {name: (block, size) for name, block, size in GGML_TYPES.values()}

Fetch = Callable[[int, int, int], tuple[object, int]]
_U32, _U64, _TYPE_OFFSET = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<IQ")
#: What a window is asked to hold beyond the value read, where the walk cannot tell (metadata pairs).
AHEAD = 4 << 10
#: A string array's windows until STRINGS_MEASURED of its strings show the bytes a string takes ...
FIRST_STRINGS_WINDOW = 256 << 10
STRINGS_MEASURED = 2000
#: ... and the share of what the rest should take by that measure that later windows ask for: a window that
#: falls short costs one more request, one that overshoots fetches bytes a skip would have spared.
STRINGS_SHARE = 0.99


class NeedMore(Exception):
    """The header continues past the bytes given; ``at_least`` is a size that gets further."""

    def __init__(self, at_least: int):
        self.at_least = at_least


@dataclass(frozen=True)
class GgufHeader:
    """What a scan takes from a GGUF header: scalar and string metadata, the tensor table (absolute byte
    offsets, numpy shape order), and where tensor data starts."""

    data_start: int
    metadata: dict[str, object]
    tensors: dict[str, TensorInfo]


def check_prefix(prefix: bytes, file_size: int, path: str) -> tuple[int, int, int]:
    """Validate magic, version and the tensor / metadata counts; returns (version, n_tensors, n_kv)."""
    if len(prefix) < 24:
        raise HeaderError(path, f"truncated: {file_size} bytes, too short for a GGUF header")
    if prefix[:4] != MAGIC:
        raise HeaderError(path, f"bad magic {bytes(prefix[:4])!r}, not a GGUF file")
    (version,) = struct.unpack("<I", prefix[4:8])
    if version not in VERSIONS:
        raise HeaderError(path, f"GGUF version {version} is not supported (expected 2 or 3)")
    n_tensors, n_kv = struct.unpack("<QQ", prefix[8:24])
    if n_tensors * MIN_TENSOR_BYTES + n_kv * MIN_KV_BYTES > file_size:
        raise HeaderError(path, f"header claims {n_tensors} tensors and {n_kv} metadata keys, "
                                f"more than a {file_size}-byte file can hold")
    return version, n_tensors, n_kv


@numba.njit(cache=True, nogil=True)
def _walk_strings(buf, off, count, limit):  # pragma: no cover (compiled)
    """Walk up to ``count`` length-prefixed strings from ``buf[off]``, stopping where the next length prefix
    is not in ``buf``; a string may end past ``buf`` (its bytes are not needed), not past ``limit`` (the
    file's end, relative to ``buf``). Returns (offset reached, strings left, length of the string that
    would overrun the file, or 0 with none)."""
    n = len(buf)
    while count > 0 and off + 8 <= n:
        length = np.uint64(0)
        for i in range(8):
            length |= np.uint64(buf[off + i]) << np.uint64(8 * i)
        if length > np.uint64(limit - off - 8):
            return off, count, length
        off += 8 + np.int64(length)
        count -= 1
    return off, count, np.uint64(0)


class _Cursor:
    """A position in the file over a window of its bytes, refilled by ``fetch`` only where a value is read."""

    def __init__(self, fetch: Fetch, size: int, path: str):
        self.fetch, self.size, self.path = fetch, size, path
        self.buf, self.base, self.pos = memoryview(b""), 0, 0
        self.codes = np.empty(0, np.uint8)
        #: bytes the walk expects to read from here on, the size a window is fetched at
        self.ahead = AHEAD

    def fail(self, problem: str) -> HeaderError:
        return HeaderError(self.path, problem)

    def fits(self, n: int, what: str) -> None:
        """``n`` more bytes must fit in what remains of the file, and within the header cap."""
        if n > self.size - self.pos:
            raise self.fail(f"{what} needs {n} bytes but only {self.size - self.pos} remain in the file")
        if self.pos + n > MAX_HEADER_BYTES:
            raise self.fail(f"the header runs past {MAX_HEADER_BYTES >> 20} MiB, the cap for a GGUF header")

    def need(self, n: int, what: str = "a field", hint: int | None = None) -> int:
        """Where ``[pos, pos + n)`` starts in the window, fetched if it is not there."""
        self.fits(n, what)
        off = self.pos - self.base
        if off < 0 or off + n > len(self.buf):
            buf, self.base = self.fetch(self.pos, n, max(n, self.ahead if hint is None else hint))
            self.buf = memoryview(buf).cast("B")
            self.codes = np.frombuffer(self.buf, np.uint8)
            off = self.pos - self.base
        return off

    def unpack(self, fmt: struct.Struct | str) -> tuple:
        fmt = struct.Struct(fmt) if isinstance(fmt, str) else fmt
        off = self.need(fmt.size)
        self.pos += fmt.size
        return fmt.unpack_from(self.buf, off)

    def skip(self, n: int, what: str) -> None:
        self.fits(n, what)
        self.pos += n

    def text(self, what: str, cap: int = MAX_NAME_BYTES) -> str:
        """A string of at most ``cap`` bytes, as UTF-8 text."""
        (n,) = self.unpack(_U64)
        self.fits(n, f"{what} of {n} bytes")
        if n > cap:
            raise self.fail(f"{what} of {n} bytes is over the {cap}-byte cap")
        off = self.need(n, f"{what} of {n} bytes")
        self.pos += n
        raw = bytes(self.buf[off : off + n])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} {raw[:40]!r} is not UTF-8") from None

    def skip_strings(self, count: int) -> None:
        """An array's strings, walked by their length prefixes (compiled), their bytes neither kept nor
        decoded; a window is sized by the bytes the array's strings have taken so far."""
        start, total = self.pos, count
        while count:
            seen = total - count
            hint = FIRST_STRINGS_WINDOW
            if seen >= STRINGS_MEASURED:
                hint = int(count * (self.pos - start) / seen * STRINGS_SHARE) + AHEAD
            off = self.need(8, f"an array of {count} strings", hint=hint)
            off, count, bad = _walk_strings(self.codes, off, count, self.size - self.base)
            self.pos = self.base + int(off)
            if bad:
                raise self.fail(f"a string of {int(bad)} bytes needs {int(bad)} bytes but only "
                                f"{self.size - self.pos - 8} remain in the file")

    def skip_value(self, kind: int, depth: int = 0) -> None:
        """A metadata value the scan does not keep."""
        if kind == STRING:
            (n,) = self.unpack(_U64)
            self.skip(n, f"a string of {n} bytes")
        elif kind == ARRAY:
            item, count = self.unpack(_U32)[0], self.unpack(_U64)[0]
            if item in SCALAR:
                self.skip(SCALAR[item] * count, f"an array of {count} items")
            elif item == STRING:
                self.fits(8 * count, f"an array of {count} items")
                self.skip_strings(count)
            elif item == ARRAY and depth < MAX_DEPTH:
                self.fits(12 * count, f"an array of {count} items")
                for _ in range(count):
                    self.skip_value(ARRAY, depth + 1)
            else:
                raise self.fail(f"malformed GGUF header (array of metadata type {item} not allowed here)")
        else:
            self.skip(SCALAR[kind], "a value")


def parse_header(size: int, path: str, window: tuple[object, int], fetch: Fetch | None = None) -> GgufHeader:
    """The header of a ``size``-byte GGUF file from ``window`` (a buffer and the offset of its first byte:
    the bytes at hand, or the whole file's map) and, for bytes outside it, ``fetch``; HeaderError names
    what is wrong."""
    cur = _Cursor(fetch or _nothing_more, size, path)
    cur.buf, cur.base = memoryview(window[0]).cast("B"), window[1]
    cur.codes = np.frombuffer(cur.buf, np.uint8)
    off = cur.need(min(24, size))
    version, n_tensors, n_kv = check_prefix(bytes(cur.buf[off : off + 24]), size, path)
    cur.pos = 24
    # the counts under the names GGUFReader gives them: a local file's revision hashes the metadata, and
    # stays what it was when GGUFReader parsed the header
    metadata: dict[str, object] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors, "GGUF.kv_count": n_kv}
    seen = set(metadata)
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = cur.text("a metadata key")
        (kind,) = cur.unpack(_U32)
        if key in seen:
            raise cur.fail(f"metadata key {key!r} appears twice")
        seen.add(key)
        if key == "general.alignment":
            alignment = _alignment(cur, kind)
            metadata[key] = alignment
        elif kind in FORMATS:
            metadata[key] = cur.unpack(FORMATS[kind])[0]
        elif kind == STRING:
            (n,) = _U64.unpack_from(cur.buf, cur.need(8))
            if n <= MAX_KEPT_STRING:
                metadata[key] = cur.text(f"the value of {key}", MAX_KEPT_STRING)
            else:
                cur.skip_value(kind)
        elif kind == ARRAY:
            cur.skip_value(kind)
        else:
            raise cur.fail(f"malformed GGUF header (unknown metadata type {kind})")
    cur.ahead = 96 * n_tensors  # a name, 2-4 dims, type and offset each
    table = [_tensor_record(cur) for _ in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    return GgufHeader(data_start, metadata, _tensors(cur, table, data_start, alignment))


def _alignment(cur: _Cursor, kind: int) -> int:
    """``general.alignment``: a uint32 power of two, as llama.cpp requires."""
    if kind != UINT32:
        raise cur.fail(f"general.alignment has metadata type {kind}, not uint32")
    (value,) = cur.unpack(_U32)
    if value == 0 or value & (value - 1):
        raise cur.fail(f"general.alignment {value} is not a power of two")
    return value


def _tensor_record(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    """(name, dims in GGUF order, type id, offset) of one tensor-table entry."""
    name = cur.text("a tensor name")
    (dims,) = cur.unpack(_U32)
    if dims > MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {dims} dimensions")
    shape = cur.unpack(f"<{dims}Q")
    kind, offset = cur.unpack(_TYPE_OFFSET)
    return name, shape, kind, offset


def _tensors(cur: _Cursor, table: list, data_start: int, alignment: int) -> dict[str, TensorInfo]:
    """TensorInfo records from the table, each checked as llama.cpp's loader checks it; the file must hold
    every tensor's bytes before any is read."""
    out: dict[str, TensorInfo] = {}
    expected = 0
    for name, dims, kind, offset in table:
        if name in out:
            raise cur.fail(f"tensor {name!r} appears twice in the tensor table")
        if kind not in GGML_TYPES:
            raise cur.fail(f"tensor {name!r} has unknown GGML type {kind}")
        dtype, block, type_size = GGML_TYPES[kind]
        numel = 1
        for d in dims:
            numel *= d
            if d >= 1 << 63 or numel >= 1 << 63:
                raise cur.fail(f"tensor {name!r} has impossible dimensions {list(dims)}")
        if (dims[0] if dims else 1) % block:
            raise cur.fail(f"tensor {name!r}: rows of {dims[0] if dims else 1} weights are not whole {dtype} "
                           f"blocks of {block}")
        nbytes = numel // block * type_size
        if offset != expected:
            raise cur.fail(f"tensor {name!r} has data offset {offset}, expected {expected} (tensors lie end to end "
                           f"at alignment {alignment})")
        expected += -(-nbytes // alignment) * alignment
        start = data_start + offset
        if start + nbytes > cur.size:
            raise cur.fail(f"tensor {name!r} claims {nbytes} bytes, ending at byte {start + nbytes}, past the end "
                           f"of the {cur.size}-byte file (truncated)")
        out[name] = TensorInfo(name, dtype, tuple(reversed(dims)), cur.path, start, start + nbytes)
    return out


def _nothing_more(pos: int, n: int, hint: int) -> tuple[object, int]:
    raise AssertionError(f"bytes {pos}-{pos + n} are outside the whole file's window")


def header_end(data: bytes, size: int | None = None) -> int:
    """Offset where tensor data starts, from the first bytes of a file of ``size`` bytes (default: the data
    given is the whole file). Raises NeedMore when they are not enough, HeaderError if malformed."""

    def more(pos: int, n: int, hint: int) -> tuple[bytes, int]:
        raise NeedMore(max(2 * len(data), pos + n))

    return parse_header(len(data) if size is None else size, "GGUF header", (data, 0), more).data_start
