"""A ``.gguf`` file of a Hub commit, read by HTTP range requests (:class:`HubGguf`).

The transport, model info and the safetensors range reader live in their own modules (``hub_http``,
``hub_info``, ``hub_safetensors``); this module keeps the GGUF reader.
"""

from __future__ import annotations

import numpy as np

from lineage_scanner.errors import HeaderError
from lineage_scanner.readers.base import TensorInfo
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.hub_safetensors import HEADER_PROBE
from lineage_scanner.readers.hub_urls import file_size, file_url


class HubGguf:
    """A ``.gguf`` file of a Hub commit. The header is fetched (walked to its end), then written with each
    needed tensor's bytes into a sparse local file that :class:`GgufFile` parses and dequantizes: the
    disk holds only what was fetched."""

    format = "gguf"

    def __init__(self, client: HubClient, repo_id: str, sha: str, filename: str):
        import tempfile

        from lineage_scanner.readers.gguf_file import GgufFile, check_prefix
        from lineage_scanner.readers.gguf_header import NeedMore, header_end

        self.path = f"{client.source}/{filename}"
        self.client = client
        self._url = file_url(repo_id, sha, filename)
        data, headers = client.get(self._url, 0, HEADER_PROBE - 1)
        size = file_size(self.path, headers, data)
        check_prefix(data[:24], size, self.path)
        while True:
            try:
                end = header_end(data, size)
                break
            except NeedMore as more:
                if more.at_least > size:
                    raise HeaderError(self.path, "header runs past the end of the file") from None
                data += client.get(self._url, len(data), min(size, more.at_least) - 1)[0]
            except (ValueError, KeyError) as exc:
                raise HeaderError(self.path, f"malformed GGUF header ({exc})") from None
        self._dir = tempfile.TemporaryDirectory(prefix="lineage-gguf-")
        self._local = f"{self._dir.name}/{filename.rpartition('/')[2]}"
        with open(self._local, "wb") as f:
            f.write(data[:end])
            f.truncate(size)  # sparse: unfetched ranges take no disk
        try:
            self._gguf = GgufFile(self._local)
        except HeaderError as exc:
            raise HeaderError(self.path, exc.problem) from None
        self.metadata = self._gguf.metadata

    def tensors(self) -> dict[str, TensorInfo]:
        return self._gguf.tensors()

    def prefetch(self, names: list[str]) -> None:
        """Tensors are fetched as they are read."""

    def _fetch(self, name: str) -> None:
        info = self._gguf.tensors()[name]
        body, _ = self.client.get(self._url, info.start, info.end - 1)
        with open(self._local, "r+b") as f:
            f.seek(info.start)
            f.write(body)

    def read(self, name: str) -> np.ndarray:
        self._fetch(name)
        return self._gguf.read(name)

    @property
    def stream_over(self) -> int:
        return self._gguf.stream_over

    def read_blocks(self, name: str):
        """The tensor fetched whole into the sparse file, then decoded by blocks of rows from there."""
        self._fetch(name)
        return self._gguf.read_blocks(name)

    def read_runs(self, name: str, starts, run: int) -> np.ndarray:
        """Quantized blocks decode whole: a GGUF sample costs a full read of the tensor."""
        self._fetch(name)
        return self._gguf.read_runs(name, starts, run)

    def release(self, name: str) -> None:
        """Nothing held: the sparse file's pages are clean page cache."""

    def fingerprint(self) -> bytes:
        return self._gguf.fingerprint()

    @property
    def bytes_read(self) -> int:
        return self.client.bytes_read

    def close(self) -> None:
        self._gguf.close()
        self._dir.cleanup()
