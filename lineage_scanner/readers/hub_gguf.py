"""GGUF files of a Hub commit, read by HTTP range requests: the header's needed bytes, then the needed
tensors in bounded blocks.

The header is parsed as a local file's is (:func:`lineage_scanner.readers.gguf_header.parse_header`), its
windows fetched by range as the walk reaches them: the first HEADER_PROBE bytes, then each window sized by
what the walk expects (an array of strings by the bytes its strings have taken so far), so arrays of
fixed-size items (scores, token types) are skipped unfetched and little past a string array is fetched.
The file's size is the one the Hub's Content-Range states, and the tensor table is checked against it
before any tensor is read: a tensor claiming more bytes than the file holds is an error with nothing
allocated. Small tensors are fetched ahead of the measurement, neighbours in one request
(:class:`lineage_scanner.readers.read_ahead.ReadAhead`, READ_AHEAD_BYTES at most); a larger one in blocks of
at most FETCH_BYTES (one fetched ahead while the previous is decoded), so memory grows with bytes that
arrive, never with a length a header claims.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lineage_scanner.errors import RemoteError
from lineage_scanner.readers.base import TensorInfo
from lineage_scanner.readers.gguf_file import GgufTensors
from lineage_scanner.readers.gguf_header import parse_header
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.hub_safetensors import HEADER_PROBE
from lineage_scanner.readers.hub_urls import file_size, file_url
from lineage_scanner.readers.read_ahead import ReadAhead

#: The most one request of tensor bytes asks for (one unit larger than this is fetched in such pieces).
FETCH_BYTES = 16 << 20
#: The most one request of header bytes asks for.
HEADER_WINDOW = 16 << 20
#: Tensor bytes fetched ahead of the reader (and not yet released) at most.
READ_AHEAD_BYTES = 64 << 20


class HubGguf(GgufTensors):
    """A ``.gguf`` file of a Hub commit."""

    def __init__(self, client: HubClient, repo_id: str, sha: str, filename: str):
        self.path = f"{client.source}/{filename}"
        self.client = client
        self._url = file_url(repo_id, sha, filename)
        probe, headers = client.get(self._url, 0, HEADER_PROBE - 1)
        size = file_size(self.path, headers, probe)

        def window(pos: int, n: int, hint: int) -> tuple[bytes, int]:
            return self._get(pos, min(size - pos, max(n, min(hint, HEADER_WINDOW)))), pos

        self.header = parse_header(size, self.path, (probe, 0), window)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gguf-range")
        self._ahead = ReadAhead(lambda start, end: self._get(start, end - start), READ_AHEAD_BYTES, FETCH_BYTES)

    def prefetch(self, names: list[str]) -> None:
        """Start fetching ``names``, neighbours in one request, while earlier ones are measured."""
        infos = self.header.tensors
        self._ahead.plan([(n, infos[n].start, infos[n].end) for n in names if infos[n].nbytes <= self.stream_over])

    def _get(self, start: int, n: int) -> bytearray:
        """Bytes [start, start + n) of the file, in requests of at most FETCH_BYTES; a body shorter than the
        file's stated size promises is an error."""
        body = bytearray()
        for at in range(start, start + n, FETCH_BYTES):
            end = min(start + n, at + FETCH_BYTES)
            chunk, _ = self.client.get(self._url, at, end - 1)
            if len(chunk) != end - at:
                raise RemoteError(self.path, f"the file ends at byte {at + len(chunk)}, before byte {end} that its "
                                             "stated size includes")
            if n <= FETCH_BYTES:
                return chunk
            body += chunk
        return body

    def _spans(self, info: TensorInfo, unit_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        """The tensor from its prefetched range, or else in blocks of whole units of at most FETCH_BYTES (or
        one unit), the next fetched while this one is decoded and measured."""
        fetched = self._ahead.take(info.name, info.start)
        if fetched is not None:
            body, offset = fetched
            yield 0, np.frombuffer(body, np.uint8, info.nbytes, offset)
            return
        step = max(1, FETCH_BYTES // unit_bytes) * unit_bytes
        starts = list(range(info.start, info.end, step))

        def fetch(k: int):
            return self._pool.submit(self._get, starts[k], min(step, info.end - starts[k]))

        ahead = fetch(0)
        for k, start in enumerate(starts):
            body = ahead.result()
            ahead = fetch(k + 1) if k + 1 < len(starts) else None
            yield (start - info.start) // unit_bytes, np.frombuffer(body, np.uint8)
            del body

    def release(self, name: str) -> None:
        """A prefetched range is dropped once all its tensors are measured (blocks go as they are)."""
        self._ahead.release(name)

    def fingerprint(self) -> bytes:
        return self.header_digest().digest()

    @property
    def bytes_read(self) -> int:
        return self.client.bytes_read

    def close(self) -> None:
        self._ahead.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
