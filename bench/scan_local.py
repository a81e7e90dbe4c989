"""Benchmark: `lineage scan` of a local bf16 checkpoint (>= 1 GB) against the naive seed-method reference.

Naive reference: ``safetensors.torch.load_file`` of the whole state dict, then ``torch.std`` of each
attention matrix (recent safetensors releases memory-map inside load_file, so it no longer reads the whole
file); "eager" reads the whole file into memory first, as load_file used to. Each method runs in a fresh
subprocess of this same run (so peak RSS is each one's own), on a warm page cache and on a cold one (pages
evicted with posix_fadvise). Reported: wall time of the work (imports excluded, the same for all; median
of 3 runs), peak RSS, and RSS added by the work over the post-import baseline.
"sampled" is the same scan with ``--sample-error 0.01`` (stratified runs, each std within 1% relative
standard error, not exact).

    python bench/scan_local.py [--dir bench/data/llama-1b] [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

WORK = {
    "naive": """
import torch
from safetensors.torch import load_file
t0 = time.perf_counter()
sd = load_file(PATH)
stds = [sd[k].std().item() for k in sd if k.endswith(ATTENTION)]
""",
    "eager": """
import torch
from safetensors.torch import load
t0 = time.perf_counter()
with open(PATH, "rb") as f:
    sd = load(f.read())
stds = [sd[k].std().item() for k in sd if k.endswith(ATTENTION)]
""",
    "lineage": """
from lineage_scanner.run.batch import ScanConfig, run_batch
from lineage_scanner.store.store import Store
from lineage_scanner.measure.kernels.cpu import CpuBackend
import numpy, shutil
CpuBackend().partials([numpy.zeros(4096, numpy.uint16).view("V2")])  # compiled-kernel load (bf16), as a warm CLI has
shutil.rmtree(DB, ignore_errors=True)
t0 = time.perf_counter()
report = run_batch([MODEL], Store(DB), progress=False)
assert not report.failed, report.failed[0].error
""",
}
# the same scan with --sample-error 0.01: estimates (relative std error <= 1%), not exact statistics
WORK["sampled"] = WORK["lineage"].replace("from lineage_scanner.measure.kernels.cpu import CpuBackend",
                                          "from lineage_scanner.measure.kernels.cpu import CpuBackend\n"
                                          "from lineage_scanner.measure.sampling import SamplePlan").replace(
    "progress=False)", "progress=False, config=ScanConfig(sample=SamplePlan(target_se=0.01)))")
PRELUDE = """import time, json
ATTENTION = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
def vm(field):  # per-process figures from /proc (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
"""
EPILOGUE = """
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_rss_mb": vm("VmHWM"), "base_rss_mb": BASE}))
"""


REPEATS = 3


def make_checkpoint(directory: Path, layers: int) -> Path:
    import torch
    from safetensors.torch import save_file


    path = directory / "model.safetensors"
    if path.is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    hidden, heads, kv, inter, vocab = 2048, 16, 8, 5632, 32000
    hd = hidden // heads
    gen = torch.Generator().manual_seed(0)
    tensors = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen).mul_(0.02).bfloat16()}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (heads * hd, hidden), "self_attn.k_proj": (kv * hd, hidden),
                  "self_attn.v_proj": (kv * hd, hidden), "self_attn.o_proj": (hidden, heads * hd),
                  "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
        for name, shape in shapes.items():
            tensors[p + name + ".weight"] = torch.randn(shape, generator=gen).mul_(0.02 * (1 + i / layers)).bfloat16()
        tensors[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    save_file(tensors, path)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
        "num_attention_heads": heads, "num_key_value_heads": kv, "num_hidden_layers": layers,
        "intermediate_size": inter, "vocab_size": vocab}))
    return directory


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def run(kind: str, model: Path, db: Path) -> dict:
    head, body = WORK[kind].split("t0 = time.perf_counter()", 1)
    code = (PRELUDE + f"PATH = {str(model / 'model.safetensors')!r}\nMODEL = {str(model)!r}\nDB = {str(db)!r}\n"
            + head + "BASE = vm('VmRSS')\nt0 = time.perf_counter()"
            + body + EPILOGUE)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="bench/data/llama-1b")
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    model = make_checkpoint(Path(args.dir), args.layers)
    weights = model / "model.safetensors"
    db = Path(args.dir).parent / "bench-db"
    print(f"checkpoint: {weights} ({weights.stat().st_size / 1e9:.2f} GB bf16), cpus: {os.cpu_count()}")
    rows = {}
    for cache in ("warm", "cold"):
        for kind in ("naive", "eager", "lineage", "sampled"):
            runs = []
            for _ in range(REPEATS):
                (warm if cache == "warm" else evict)(weights)
                runs.append(run(kind, model, db))
            runs.sort(key=lambda r: r["seconds"])
            rows[(cache, kind)] = runs[REPEATS // 2]  # the median run
    print(f"{'cache':5} {'method':8} {'seconds':>8} {'peak RSS MB':>12} {'added RSS MB':>13}")
    for (cache, kind), r in rows.items():
        added = r["peak_rss_mb"] - r["base_rss_mb"]
        print(f"{cache:5} {kind:8} {r['seconds']:8.3f} {r['peak_rss_mb']:12.0f} {added:13.0f}")
    for cache in ("warm", "cold"):
        for ref, mine in (("naive", "lineage"), ("eager", "lineage"), ("naive", "sampled")):
            n, s = rows[(cache, ref)], rows[(cache, mine)]
            print(f"{cache}: {mine} vs {ref}: {n['seconds'] / s['seconds']:.1f}x faster; peak RSS ratio "
                  f"{s['peak_rss_mb'] / n['peak_rss_mb']:.2f}, added-RSS ratio "
                  f"{(s['peak_rss_mb'] - s['base_rss_mb']) / (n['peak_rss_mb'] - n['base_rss_mb']):.3f}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
