"""Helpers the test modules share (``from tests.helpers import ...``); conftest.py holds only fixtures and the
test session's environment."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from lineage_scanner.lineage.null import synthetic
from lineage_scanner.lineage.verdict import Verdict, decide

ROOT = Path(__file__).resolve().parents[1]
BACKEND_NAMES = ["cpu", "triton"]


def judge(a, b) -> Verdict:
    """A verdict against the built-in synthetic null at the pair's depths (no store needed)."""
    return decide(a, b, synthetic(a.n_layers or 0, b.n_layers or 0))


def unrelated_by_chance(verdict: Verdict | dict) -> bool:
    """Whether a pair trained apart got the verdict the design gives it: "unrelated", or "inconclusive" with no
    channel saying "related". "unrelated" needs every weight channel's exact-null p >= 1e-3, and the keys
    (a store's, a verification's) are random per run, so about one unrelated pair in a few hundred is left
    inconclusive by a chance agreement: a test that demanded "unrelated" of one pair would fail that often."""
    if isinstance(verdict, dict):
        return verdict["verdict"] == "unrelated" or (
            verdict["verdict"] == "inconclusive" and all(c["says"] != "related" for c in verdict["channels"]))
    return verdict.verdict == "unrelated" or (
        verdict.verdict == "inconclusive" and all(c.says != "related" for c in verdict.channels))


def llama_config(n_layers: int = 2, hidden: int = 64, heads: int = 4, kv: int = 2) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": n_layers,
    }


def write_llama(
    directory: Path,
    n_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv: int = 2,
    seed: int = 0,
    dtype=torch.bfloat16,
) -> Path:
    """A tiny llama-style checkpoint directory with config.json."""
    gen = torch.Generator().manual_seed(seed)
    hd = hidden // heads
    tensors = {}
    for i in range(n_layers):
        p = f"model.layers.{i}.self_attn."
        for role, rows in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd), ("o", hidden)):
            tensors[p + f"{role}_proj.weight"] = (torch.randn(rows, hidden, generator=gen) * (0.02 * (i + 1))).to(dtype)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(llama_config(n_layers, hidden, heads, kv)))
    return directory


#: A CLI command in a subprocess, reporting its exit code, its wall time and its peak RSS as stderr's last line.
#: The peak is the process's own (VmHWM): getrusage's ru_maxrss keeps, across exec, the high-water mark of
#: the process it was forked from, here the test's, often larger than what is measured.
CLI = """
import json, re, sys, time
from lineage_scanner.cli.main import main
started = time.monotonic()
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    rss = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) << 10
print(json.dumps({"code": code, "seconds": time.monotonic() - started, "rss": rss}), file=sys.stderr)
"""


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``lineage ARGS`` started in a subprocess under :data:`CLI` (finish it with :func:`cli_report`)."""
    return subprocess.Popen([sys.executable, "-c", CLI, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def cli_report(process: subprocess.Popen, timeout: float = 300) -> tuple[dict, list[str], str]:
    """A :func:`start_cli` process's (exit code, seconds and peak RSS; its ``Error:`` lines; its stdout)."""
    out, err = process.communicate(timeout=timeout)
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err[-3000:]
    return json.loads(lines[-1]), [line for line in lines[:-1] if line.startswith("Error:")], out


def run_cli_process(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[dict, list[str], str]:
    return cli_report(start_cli(*args, env=env), timeout)


def raw_safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    """Write a safetensors file byte by byte, so tests can make it lie."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def crashing_worker(rules: str) -> type:
    """A Ray scan worker that dies abruptly (``os._exit``, as a crash or the OOM killer would end it) on a
    unit holding a source that contains SUBSTRING: ``"MARKER_FILE:SUBSTRING"`` once (it creates MARKER_FILE,
    which every later attempt sees), ``"always:SUBSTRING"`` every time, and with ``":written"`` after it
    has scanned the unit and written it to the store, not before; rules are joined by commas. Hand it to
    ``RayExecutor(worker=...)``. Defined in a function, the class travels to Ray's workers by value."""
    from lineage_scanner.run.ray import ScanWorker

    parsed = []
    for rule in filter(None, rules.split(",")):
        marker, _, rest = rule.partition(":")
        needle, _, phase = rest.partition(":")
        parsed.append((marker, needle, phase))

    def die(unit, phase: str) -> None:
        for source in unit.sources:
            for marker, needle, when in parsed:
                if when == phase and needle in source and (marker == "always" or not os.path.exists(marker)):
                    if marker != "always":
                        Path(marker).touch()
                    os._exit(13)

    class CrashingWorker(ScanWorker):
        def scan(self, unit, *args, **kwargs):
            die(unit, "")
            result = super().scan(unit, *args, **kwargs)
            die(unit, "written")
            return result

    return CrashingWorker


def zoo_key() -> str:
    """A digest of everything the demo zoo's bytes depend on: the source of every module of the package that
    :func:`lineage_scanner.demo.zoo.build_zoo` imports (with its packages' ``__init__``), and the versions of
    the libraries that write the files."""
    import grimp

    graph = grimp.build_graph("lineage_scanner", cache_dir=None)
    modules = {"lineage_scanner.demo.zoo", *graph.find_upstream_modules("lineage_scanner.demo.zoo")}
    modules |= {m.rsplit(".", k)[0] for m in modules for k in range(1, m.count(".") + 1)}
    digest = hashlib.sha256()
    for module in sorted(modules):
        path = ROOT / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        digest.update(module.encode() + b"\0" + path.read_bytes())
    for dist in ("numpy", "torch", "safetensors", "gguf", "ml_dtypes"):
        digest.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    return digest.hexdigest()[:16]


def cached_zoo(target: Path, cache: Path) -> list:
    """The demo zoo, copied to ``target`` from a build kept under ``cache`` for this :func:`zoo_key` (built
    there first when missing: into a temporary directory, renamed into place, so two sessions building
    at once both end with a whole zoo). Tests get a copy, so none can change the cached one."""
    from lineage_scanner.demo.zoo import build_zoo, read_truth

    built = cache / f"zoo-{zoo_key()}"
    if not (built / "lineage.csv").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        build_zoo(fresh / "zoo")
        try:
            (fresh / "zoo").rename(built)
        except OSError:  # another session put its zoo in place first: the same bytes
            pass
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(built, target, dirs_exist_ok=True)
    return read_truth(target / "lineage.csv")

