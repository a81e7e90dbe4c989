"""GGUF at speed: the compiled block decoders against the ``gguf`` package's numpy path, and a whole scan.

    python bench/gguf_scan.py [--rows 4096] [--cols 4096] [--layers 16]

1. Per type, one [rows, cols] tensor of random blocks (fp16 scales kept finite), in this process, best
   of 3: the numpy path (``gguf.quants.dequantize`` of the whole tensor, then the CPU backend's fused
   moments and column sums, which is what the reader did before) against the compiled path the scan
   takes now (``GgufFile.read_blocks``: blocks of rows decoded by ``readers.ggml_quants`` and measured
   while cache-hot). Weights per second and the ratio.
2. A Q4_K_M-like llama checkpoint (``--layers`` layers of hidden 2048, GQA 512, attn_v in Q6_K, the rest
   Q4_K, F32 norms) scanned by ``lineage scan`` as a whole process, next to the same model cut to one
   layer: wall time and peak RSS of each; the difference in peak RSS is the memory the weights cost
   (the rest, imports and compiled kernels, is the same for any model), set against the largest
   attention tensor in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import best_seconds  # noqa: E402

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


def random_blocks(qtype_name: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """[rows, bytes per row] of random blocks; every byte below 0x3C, so each fp16 scale is finite."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype_name]]
    return np.random.default_rng(seed).integers(0, 0x3C, (rows, cols // block * type_size), dtype=np.uint8)


def per_type(rows: int, cols: int, tmp: Path) -> list[tuple[str, float, float]]:
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize

    from lineage_scanner.measure.kernels.cpu import moments_and_columns
    from lineage_scanner.readers.gguf_file import GgufFile

    out = []
    for name in TYPES:
        qtype = GGMLQuantizationType[name]
        data = random_blocks(name, rows, cols)
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
        out.append((name, best_seconds(numpy_path, 3), best_seconds(compiled_path, 3)))
        reader.close()
    return out


def write_model(path: Path, layers: int) -> int:
    """A Q4_K_M-like llama GGUF; returns the bytes of its largest attention tensor in float32."""
    from gguf import GGMLQuantizationType, GGUFWriter

    hidden, heads, kv_heads = 2048, 16, 4
    kv = hidden // heads * kv_heads
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_embedding_length(hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        for name, rows, qtype in (("attn_q", hidden, "Q4_K"), ("attn_k", kv, "Q4_K"), ("attn_v", kv, "Q6_K"),
                                  ("attn_output", hidden, "Q4_K")):
            writer.add_tensor(f"blk.{i}.{name}.weight", random_blocks(qtype, rows, hidden, seed=i),
                              raw_dtype=GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hidden * hidden * 4


SCAN = """
import json, time
def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
from lineage_scanner.cli.main import main
import numba  # what every scan imports; the added RSS is the scan's own
base = vm("VmRSS")
t = time.perf_counter()
code = main(["scan", PATH, "--db", DB, "--quiet"])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t, "peak": vm("VmHWM"), "base": base}))
"""


def whole_scan(model: Path, db: Path) -> dict:
    started = time.perf_counter()
    code = SCAN.replace("PATH", repr(str(model))).replace("DB", repr(str(db)))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = per_type(args.rows, args.cols, tmp)
        weights = args.rows * args.cols
        print(f"| type | gguf numpy path M weights/s | compiled M weights/s | ratio |  ({args.rows}x{args.cols})")
        print("| --- | ---: | ---: | ---: |")
        for name, slow, fast in results:
            print(f"| {name} | {weights / slow / 1e6:.1f} | {weights / fast / 1e6:.0f} | {slow / fast:.0f}x |")
        model, small = tmp / "model-Q4_K_M.gguf", tmp / "one-layer.gguf"
        largest = write_model(model, args.layers)
        write_model(small, 1)
        whole_scan(model, tmp / "warm-db")  # page cache and compiled kernels, as a nightly worker has them
        big, one = whole_scan(model, tmp / "db"), whole_scan(small, tmp / "db-1")
        added = big["peak"] - one["peak"]
        print(f"\nwhole `lineage scan`, {model.stat().st_size / 1e6:.0f} MB Q4_K_M-like GGUF ({args.layers} layers): "
              f"{big['process_seconds']:.2f} s process ({big['seconds']:.2f} s in main()), "
              f"peak RSS {big['peak']:.0f} MB; one layer: {one['process_seconds']:.2f} s ({one['seconds']:.2f} s), "
              f"{one['peak']:.0f} MB")
        rate = (args.layers - 1) / args.layers * model.stat().st_size / max(big["seconds"] - one["seconds"], 1e-9)
        print(f"memory the weights cost: {added:.0f} MB = {added * 2**20 / largest:.2f}x the largest attention tensor "
              f"in float32 ({largest / 2**20:.0f} MB); the extra layers scan at {rate / 1e6:.0f} MB/s of quantized "
              f"attention")

if __name__ == "__main__":
    main()
