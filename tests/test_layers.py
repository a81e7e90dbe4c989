"""The package's layers follow the data flow (import-linter contracts in pyproject.toml), and the commands
analysts use most start without the scanning stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numba", "ray", "matplotlib", "pyarrow")


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    contracts = (ROOT / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    assert contracts >= 5 and f"{contracts} kept, 0 broken" in done.stdout


def _modules_after(argv: list[str], tmp_path) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running ``lineage ARGV``."""
    code = ("import sys, json\nfrom lineage_scanner.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_help_and_sql_import_no_scanning_stack(tmp_path):
    assert not _modules_after(["--help"], tmp_path) & {*HEAVY, "duckdb", "numpy"}
    assert not _modules_after(["sql", "select 1", "--db", str(tmp_path / "db")], tmp_path) & {*HEAVY, "numpy"}


@pytest.mark.slow
def test_compare_of_stored_ids_imports_no_scanning_stack(zoo, tmp_path):
    from lineage_scanner.run.batch import run_batch
    from lineage_scanner.store.store import Store

    store = Store(tmp_path / "db")
    run_batch([e.path for e in zoo[:2]], store, progress=False)
    # a first compare fills the synthetic null's disk cache; the second is what an analyst's repeat costs
    _modules_after(["compare", zoo[0].model, zoo[1].model, "--db", str(tmp_path / "db")], tmp_path)
    loaded = _modules_after(["compare", zoo[0].model, zoo[1].model, "--db", str(tmp_path / "db")], tmp_path)
    assert not loaded & {"torch", "numba", "ray", "matplotlib"}


def test_a_cpu_scan_imports_no_torch(zoo, tmp_path):
    """Safetensors (bf16) and GGUF are read as numpy views and measured by the numba kernels: without a GPU
    a scan never pays torch's import (2.5 s here); only packed quantized formats (GPTQ, AWQ, ...) do."""
    if Path("/dev/nvidiactl").exists():
        pytest.skip("a GPU machine picks the Triton backend, which runs on torch")
    plain = [e for e in zoo if e.relation == "base"][0]
    gguf = [e for e in zoo if e.relation == "quantized" and any(Path(e.path).glob("*.gguf"))][0]
    loaded = _modules_after(["scan", plain.path, gguf.path, "--db", str(tmp_path / "db"), "-q"], tmp_path)
    assert "numba" in loaded and not loaded & {"torch", "triton", "ml_dtypes"}
