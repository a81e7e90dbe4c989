"""Local files that change under the scan: a checkpoint truncated while it is read is an error row for that
model (never SIGBUS for the process and its batch), a file written between its digest and a read is one
too, and an edit of any byte (same size, mtime set back) is a new revision, never "already stored"."""

from __future__ import annotations

import os
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from lineage_scanner.errors import ChangedError
from lineage_scanner.readers.open import open_local
from lineage_scanner.store.store import Store
from tests.helpers import cli_report, run_cli_process, start_cli, write_llama
from tests.test_gguf import write_gguf


def rows(db: Path) -> dict[str, tuple[str, str | None]]:
    with Store(db).connect() as con:
        found = con.execute("SELECT model, status, error FROM scans ORDER BY scanned_at").fetchall()
    return {m: (s, e) for m, s, e in found}


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # an fd closed between listing and reading it
        return False


@pytest.mark.slow
def test_a_checkpoint_truncated_mid_scan_is_an_error_row_and_the_batch_lands(tmp_path):
    """A 500 MB checkpoint cut to half its size as soon as the scanning process opens it: before, the next
    touch of a lost page of its memory map was SIGBUS (exit 135, nothing written); now it is one error line,
    exit 1, a ``changed`` row, and the good models on either side of it are stored."""
    first, last = write_llama(tmp_path / "good-a", seed=1), write_llama(tmp_path / "good-b", seed=2)
    victim = write_llama(tmp_path / "victim", n_layers=6, hidden=4096, heads=32, kv=8)
    weights = (victim / "model.safetensors").resolve()
    size = weights.stat().st_size
    assert size > 450 << 20
    db = tmp_path / "db"
    process = start_cli("scan", str(first), str(victim), str(last), "--db", str(db), "-q")
    deadline = time.monotonic() + 60
    while not holds_open(process.pid, weights):
        assert process.poll() is None and time.monotonic() < deadline, "the scan never opened the checkpoint"
        time.sleep(0.001)
    os.truncate(weights, size // 2)
    report, errors, _ = cli_report(process, timeout=120)
    assert report["code"] == 1, report
    assert len(errors) == 1 and errors[0].startswith(f"Error: {victim}") and "while it was scanned" in errors[0]
    assert report["seconds"] < 60 and report["rss"] < 600 << 20, report  # never the whole 500 MB file held
    found = rows(db)
    assert found["good-a"][0] == found["good-b"][0] == "ok"
    assert found["victim"][0] == "changed" and "\n" not in found["victim"][1]


def test_a_file_written_between_its_digest_and_a_read_is_refused(tmp_path):
    """Same size, same mtime: the bytes hashed for the revision are no longer the bytes a read would
    measure, and the read says so instead of measuring them."""
    model = write_llama(tmp_path / "m")
    weights = model / "model.safetensors"
    with closing(open_local(model)) as opened:
        name = "model.layers.1.self_attn.q_proj.weight"
        info = opened.reader.tensors()[name]
        stat = weights.stat()
        with open(weights, "r+b") as f:
            f.seek(info.start)
            f.write(bytes(16))
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        with pytest.raises(ChangedError, match="contents changed while it was scanned"):
            opened.reader.read(name)


def test_a_gguf_truncated_after_it_is_opened_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, GGMLQuantizationType.F16)
    with closing(open_local(path)) as opened:
        os.truncate(path, path.stat().st_size // 2)
        name = list(opened.reader.tensors())[-1]
        with pytest.raises(ChangedError, match="while it was scanned"):
            opened.reader.read(name)


def test_an_edit_in_place_with_the_mtime_set_back_is_a_new_revision(tmp_path):
    """761,811 bytes of one matrix rewritten where no fixed sample looks (its middle), the file's size and
    mtime as they were: the revision hashes every byte, so the next scan stores a new signature."""
    model = write_llama(tmp_path / "m", n_layers=2, hidden=1024, heads=8, kv=8)
    weights = model / "model.safetensors"
    db = str(tmp_path / "db")
    report, errors, _ = run_cli_process("scan", str(model), "--db", db, "-q")
    assert report["code"] == 0 and not errors
    with closing(open_local(model)) as opened:
        info = opened.reader.tensors()["model.layers.1.self_attn.v_proj.weight"]
        before = opened.revision
    stat = weights.stat()
    middle = info.start + (info.nbytes - 761_811) // 2
    with open(weights, "r+b") as f:
        f.seek(middle)
        values = np.frombuffer(f.read(761_810), np.uint16).copy()
        f.seek(middle)
        f.write((values ^ 0x8000).tobytes())  # every sign flipped: the std stays, the sketch does not
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    with closing(open_local(model)) as opened:
        assert opened.revision != before
    report, errors, out = run_cli_process("scan", str(model), "--db", db, "-q", "--json")
    assert report["code"] == 0 and not errors and "already" not in out
    with Store(db).connect() as con:
        assert con.execute("SELECT count(DISTINCT revision) FROM signatures WHERE model = 'm'").fetchone()[0] == 2


def test_the_revision_is_content_addressed_and_ignores_the_files_times(tmp_path):
    a, b = write_llama(tmp_path / "a", seed=3), write_llama(tmp_path / "b", seed=3)
    os.utime(b / "model.safetensors", ns=(0, 0))
    with closing(open_local(a)) as ra, closing(open_local(b)) as rb:
        assert ra.revision == rb.revision and len(ra.revision) == 64
