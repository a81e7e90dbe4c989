"""What evidence nobody can forge or scrub costs: the circuit sketches in a scan, and deep verification.

Two attention-only checkpoints of one shape (bf16, llama layout: a base and a continued-training child,
written once under --dir), scanned into a store; then, in this process:

- a scan of each under its store key (moments, value sketch, circuit sketches and, where they fit, the
  circuits' Gram), against the moments alone of the same tensors (the work every scan must do);
- ``lineage compare --verify``'s work: both models read again under a fresh key (every attention value,
  8x the stored sketch's positions, every residual pair, the Gram on the layers 2 GB holds, a SHA-256 of
  all values), against the stored-evidence verdict.

    python bench/verify_cost.py --shape 8b     # Llama-3-8B attention: 32 layers, 4096 wide, 8 KV heads
    python bench/verify_cost.py --shape small  # a quick check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import best_seconds  # noqa: E402
from lineage_scanner.demo.derive import drift  # noqa: E402
from lineage_scanner.demo.writers import write_hf  # noqa: E402
from lineage_scanner.lineage.generator import base_model  # noqa: E402
from lineage_scanner.measure.kernels import get_backend  # noqa: E402
from lineage_scanner.run.batch import ScanConfig, run_batch  # noqa: E402
from lineage_scanner.run.scan import scan_strict  # noqa: E402
from lineage_scanner.run.verify import judge  # noqa: E402
from lineage_scanner.store.key import store_key  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402

SHAPES = {"8b": dict(n_layers=32, hidden=4096, n_heads=32, n_kv_heads=8),
          "1b": dict(n_layers=16, hidden=2048, n_heads=32, n_kv_heads=8),
          "small": dict(n_layers=8, hidden=512, n_heads=8, n_kv_heads=2)}


def checkpoints(out: Path, shape: str) -> list[str]:
    """The base and its child, written once (attention and norms only: what a scan reads)."""
    names = [out / f"{shape}-base", out / f"{shape}-child"]
    if not all((p / "config.json").is_file() for p in names):
        kw = SHAPES[shape]
        base = base_model(names[0].name, "llama", 1, kw["n_layers"], hidden=kw["hidden"], n_heads=kw["n_heads"],
                          n_kv_heads=kw["n_kv_heads"], mlp=False)
        write_hf(base, names[0])
        write_hf(drift(base, names[1].name, 2, 0.3, 0.05), names[1])
    return [str(p) for p in names]


def moments_only(path: str) -> float:
    """Seconds for the moments alone (what a scan computed before the circuit sketches), best of two."""
    from lineage_scanner.layouts.arch import from_config
    from lineage_scanner.layouts.resolve import resolve
    from lineage_scanner.readers.open import open_local

    best = float("inf")
    for _ in range(2):
        opened = open_local(path)
        started = time.perf_counter()
        facts = from_config(opened.config, opened.format, opened.source)
        tensors = opened.reader.tensors()
        layout = resolve(facts.spec, tensors, facts.shape, opened.config, facts.n_layers, opened.source)
        backend = get_backend("cpu")
        for name in {p.tensor for p in layout.parts}:
            backend.partials([opened.reader.read(name)])
            opened.reader.release(name)
        best = min(best, time.perf_counter() - started)
        opened.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="8b")
    parser.add_argument("--dir", default="bench/data/verify")
    args = parser.parse_args()
    paths = checkpoints(Path(args.dir), args.shape)
    store = Store(Path(args.dir) / f"db-{args.shape}")
    summary = run_batch(paths, store, progress=False, config=ScanConfig("cpu", force=True))  # and warm up
    key, backend = store_key(store), get_backend("cpu")
    scan_s = sum(best_seconds(lambda p=p: scan_strict(p, backend, set(), sketch_key=key), 2) for p in paths) / 2
    bare = sum(moments_only(p) for p in paths) / len(paths)
    sigs = {s.model: s for s in store.signatures()}
    a, b = (sigs[Path(p).name] for p in paths)
    judge(a, b, store, "cpu", "never")  # the null cached, scipy imported
    stored_s = best_seconds(lambda: judge(a, b, store, "cpu", "never"), 3)
    stored = judge(a, b, store, "cpu", "never")
    started = time.perf_counter()
    verified = judge(a, b, store, "cpu", "always")
    verify_s = time.perf_counter() - started
    ver = verified.verification
    gb = summary.bytes_read / len(paths) / 1e9
    print(f"shape {args.shape}: {SHAPES[args.shape]}; attention {gb:.2f} GB per model")
    print(f"scan with sketches and circuits: {scan_s:.2f} s per model; moments alone {bare:.2f} s "
          f"({scan_s / bare:.2f}x)")
    print(f"stored-evidence verdict: {stored_s:.2f} s -> {stored.verdict} ({stored.kind})")
    print(f"deep verification: {verify_s:.1f} s, {ver['bytes_read'] / 1e9:.2f} GB read, "
          f"{ver['values_per_matrix']} values per matrix -> {verified.verdict} ({verified.kind}); "
          f"{verify_s / stored_s:.0f}x the stored verdict, {verify_s / scan_s:.1f}x one model's scan")


if __name__ == "__main__":
    main()
