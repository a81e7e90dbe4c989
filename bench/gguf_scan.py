"""GGUF at decode speed: a real-shaped checkpoint's header and whole scan, against the gguf package's path.

    python bench/gguf_scan.py [--runs 3] [--data bench/data] [--latency 0.02] [--types]

The checkpoint is :func:`lineage_scanner.testing.gguf_files.write_checkpoint` at Qwen2.5-1.5B's shapes
(28 layers, hidden 1536, 12 heads, 2 KV heads, MLP 8960): 151,936 tokens with their token types and
151,387 merges in the header (Qwen's GGUFs carry no scores), every tensor in llama.cpp's Q4_K_M mix, the
attention random blocks and the rest zeros; ~1 GB, generated once into ``--data``.

1. Whole processes, page cache warm (each command runs once first), median of ``--runs`` alternating runs,
   wall time and peak RSS from wait4: ``lineage scan FILE`` against the gguf package's path on the same
   file (``GGUFReader``, then ``gguf.quants.dequantize`` and a float64 std of every attention tensor).
2. The header: ``GgufFile`` (the scan's one-pass parse) in a fresh process, its first parse and the best
   of 5 more, after numba's start (timed apart: the first compiled call of any process pays it, and a
   scan makes one anyway), against the ``gguf`` package's ``GGUFReader``, once, in this process.
3. The same header over the Hub stand-in (``HubGguf``): bytes and requests it costs, against its size;
   then whole scans over the stand-in with ``--latency`` per answer, best of 2: the read-ahead (a layer's
   small tensors in one request, several in flight) against one request per tensor in turn.
4. With ``--types``: per quantization type, one 4096 x 4096 tensor of random blocks, in this process, best
   of 3: ``gguf.quants.dequantize`` then the CPU backend's moments against ``GgufFile.read_blocks``
   (the compiled decoders) measured the same way; millions of weights per second.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch import compare, lineage, table  # noqa: E402
from timing import best_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]

GGUF_PACKAGE = """
import sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
reader = GGUFReader(sys.argv[1])
stds = [dequantize(t.data, t.tensor_type).std(ddof=1, dtype=np.float64) for t in reader.tensors if ".attn_" in t.name]
"""


def checkpoint(data: Path) -> Path:
    """The checkpoint, written by a process of its own: this one stays small, since a child's peak RSS as
    wait4 reports it starts from its parent's at the fork."""
    path = data / "qwen2.5-1.5b-shaped-Q4_K_M.gguf"
    if not path.is_file():
        data.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from lineage_scanner.testing."
                        "gguf_files import write_checkpoint; write_checkpoint(Path(sys.argv[1]), everything=True)",
                        str(path.with_suffix(".tmp"))], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        path.with_suffix(".tmp").rename(path)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s")
    return path


FRESH_PARSE = """
import json, sys, time
import numpy as np
from lineage_scanner.readers.gguf_file import GgufFile
from lineage_scanner.readers.gguf_header import _walk_strings
started = time.perf_counter()
_walk_strings(np.zeros(8, np.uint8), 0, 0, 8)  # numba's start: what the first compiled call of a process pays
numba_start = time.perf_counter() - started
times = []
for _ in range(6):
    started = time.perf_counter()
    GgufFile(sys.argv[1]).close()
    times.append(time.perf_counter() - started)
print(json.dumps({"numba": numba_start, "first": times[0], "best": min(times[1:])}))
"""


def header(path: Path) -> None:
    """The header parse in a fresh process (numba's start apart), against GGUFReader in this one."""
    import json

    from gguf import GGUFReader

    from lineage_scanner.readers.gguf_file import GgufFile

    out = subprocess.run([sys.executable, "-c", FRESH_PARSE, str(path)], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    fresh = json.loads(out.strip().splitlines()[-1])
    started = time.perf_counter()
    GGUFReader(path)
    theirs = time.perf_counter() - started
    reader = GgufFile(path)
    print(f"\n| header ({reader.header.data_start / 1e6:.1f} MB, {len(reader.tensors())} tensors) | seconds |\n"
          f"| --- | ---: |\n| GgufFile, first parse of a fresh process | {fresh['first']:.3f} |\n"
          f"| GgufFile, best of the next 5 | {fresh['best']:.3f} |\n"
          f"| (numba's start, before: paid once by the first compiled call of any scan) | {fresh['numba']:.2f} |\n"
          f"| GGUFReader | {theirs:.2f} |\nGGUFReader / first parse: {theirs / fresh['first']:.0f}x")
    reader.close()


def hub_header(path: Path) -> None:
    from lineage_scanner.readers.hub_gguf import HubGguf
    from lineage_scanner.readers.hub_http import HubClient
    from lineage_scanner.testing.gguf_files import QWEN25_1_5B
    from lineage_scanner.testing.hub_server import HubStandIn, Repo

    with HubStandIn([Repo("bench/gguf", path.parent)]) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        reader = HubGguf(HubClient("hf://bench/gguf"), "bench/gguf", "main", path.name)
        size, types = reader.header.data_start, 4 * QWEN25_1_5B.vocab
        print(f"\nover the Hub stand-in: the {size / 1e6:.2f} MB header ({types / 1e6:.2f} MB of it token types, "
              f"skipped unfetched) cost {hub.bytes_served[path.name] / 1e6:.2f} MB in {hub.requests[path.name]} "
              "range requests")
        reader.close()


def hub_scan(path: Path, latency: float) -> None:
    """The whole file scanned over the stand-in, each answer delayed by ``latency``: with read-ahead (the
    scan's way) and one request per tensor in turn (``prefetch`` off), best of 2, in this process."""
    from lineage_scanner.measure.kernels import get_backend
    from lineage_scanner.readers.hub_gguf import HubGguf
    from lineage_scanner.run.scan import scan_strict
    from lineage_scanner.testing.hub_server import HubStandIn, Repo

    with tempfile.TemporaryDirectory() as repo, HubStandIn([Repo("bench/gguf", Path(repo))], latency_s=latency) as hub:
        os.symlink(path, Path(repo) / path.name)
        os.environ["HF_ENDPOINT"] = hub.endpoint
        backend = get_backend("cpu")
        scan_strict("hf://bench/gguf", backend, set())  # the stand-in hashes the file once; kernels load
        print(f"\n| over the stand-in, {latency * 1e3:.0f} ms per answer | requests | seconds |\n| --- | ---: | ---: |")
        prefetch = HubGguf.prefetch
        for name in ("read-ahead", "one request per tensor"):
            HubGguf.prefetch = prefetch if name == "read-ahead" else lambda self, names: None
            hub.reset_counts()
            seconds = best_seconds(lambda: scan_strict("hf://bench/gguf", backend, set()), 2)
            print(f"| {name} | {hub.requests[path.name] // 2} | {seconds:.2f} |")
        HubGguf.prefetch = prefetch


def per_type(tmp: Path) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize

    from lineage_scanner.measure.kernels.cpu import moments_and_columns
    from lineage_scanner.readers.gguf_file import GgufFile
    from lineage_scanner.testing.gguf_files import random_blocks

    rows = cols = 4096
    print(f"\n| type | gguf numpy path M weights/s | compiled M weights/s | ratio |  ({rows}x{cols})")
    print("| --- | ---: | ---: | ---: |")
    for name in TYPES:
        qtype = GGMLQuantizationType[name]
        data = random_blocks(name, rows, cols, np.random.default_rng(0))
        path = tmp / f"{name}.gguf"
        writer = GGUFWriter(str(path), "llama")
        writer.add_tensor("blk.0.attn_q.weight", data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        reader = GgufFile(path)

        def numpy_path(data=data, qtype=qtype):
            moments_and_columns(dequantize(data, qtype).reshape(rows, cols), 1)

        def compiled_path(reader=reader):
            for _, block in reader.read_blocks("blk.0.attn_q.weight"):
                moments_and_columns(block, 1)

        compiled_path()  # compile (or load the cached kernels) before timing
        slow, fast = best_seconds(numpy_path, 3), best_seconds(compiled_path, 3)
        print(f"| {name} | {rows * cols / slow / 1e6:.1f} | {rows * cols / fast / 1e6:.0f} | {slow / fast:.1f}x |")
        reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--types", action="store_true", help="also the per-type decoder table")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the stand-in delays each answer")
    args = parser.parse_args()
    path = checkpoint(args.data)
    # whole processes first, while this one is small (see checkpoint)
    rows = compare({"gguf package (GGUFReader + dequantize + std)": [sys.executable, "-c", GGUF_PACKAGE, str(path)],
                    "`lineage scan`": lineage("scan", str(path), "--db", "db", "-q")}, args.runs)
    table(f"whole processes, {path.name} ({path.stat().st_size / 1e9:.2f} GB), median of {args.runs}", rows,
          "gguf package (GGUFReader + dequantize + std)")
    header(path)
    hub_header(path)
    hub_scan(path, args.latency)
    if args.types:
        with tempfile.TemporaryDirectory() as tmp:
            per_type(Path(tmp))


if __name__ == "__main__":
    main()
