"""The Parquet store and its DuckDB views: append-only, atomic files, skip on re-scan, --force."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from scanner.scan import scan_sources
from scanner.store import SIGNATURES_SCHEMA, Store
from tests.conftest import write_llama


def test_scan_skip_force_and_views(tmp_path):
    store = Store(tmp_path / "db")
    model = write_llama(tmp_path / "tiny", n_layers=3)
    first = scan_sources([str(model)], store, progress=False)
    assert [s.status for s in first.scanned] == ["ok"] and not first.skipped
    again = scan_sources([str(model)], store, progress=False)
    assert not again.scanned and again.skipped == [("tiny", first.scanned[0].revision)]
    forced = scan_sources([str(model)], store, force=True, progress=False)
    assert len(forced.scanned) == 1
    con = store.connect()
    assert con.execute("SELECT count(*) FROM scans").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM signatures").fetchone()[0] == 1
    # the layers view follows the newest scan only: 3 layers x (q, k, v, o, attn_norm)
    assert con.execute("SELECT count(*) FROM layers").fetchone()[0] == 15
    newest = con.execute("SELECT scan_id FROM signatures").fetchone()[0]
    assert newest == forced.scanned[0].scan_id
    row = con.execute(
        "SELECT n_layers, n_heads, n_kv_heads, head_dim, dtype, params, len(curves.q), "
        "array_length(embedding) FROM signatures"
    ).fetchone()
    assert row == (3, 4, 2, 16, "BF16", sum(t.numel() for t in load_file(model / "model.safetensors").values()), 3, 128)


def test_layers_match_torch_std(tmp_path):
    store = Store(tmp_path / "db")
    model = write_llama(tmp_path / "tiny", n_layers=2)
    scan_sources([str(model)], store, progress=False)
    tensors = load_file(model / "model.safetensors")
    rows = store.connect().execute("SELECT layer, role, std, numel FROM layers WHERE role = 'k'").fetchall()
    for layer, _, std, numel in rows:
        w = tensors[f"model.layers.{layer}.self_attn.k_proj.weight"].to(torch.float64)
        assert numel == w.numel()
        assert abs(std / w.std().item() - 1) < 1e-6


def test_changed_weights_are_rescanned(tmp_path):
    store = Store(tmp_path / "db")
    model = write_llama(tmp_path / "tiny")
    scan_sources([str(model)], store, progress=False)
    tensors = load_file(model / "model.safetensors")
    tensors = {k: v * 1.5 for k, v in tensors.items()}
    save_file(tensors, model / "model.safetensors")
    second = scan_sources([str(model)], store, progress=False)
    assert len(second.scanned) == 1, "same header, different weights must be a new revision"
    assert store.connect().execute("SELECT count(*) FROM signatures").fetchone()[0] == 2


def test_files_are_written_atomically_with_the_schema(tmp_path):
    store = Store(tmp_path / "db")
    scan_sources([str(write_llama(tmp_path / "tiny"))], store, progress=False)
    files = list(Path(tmp_path / "db").rglob("*"))
    assert not [f for f in files if f.name.startswith(".") or f.suffix == ".tmp"]
    sig_files = list((tmp_path / "db" / "signatures").glob("*.parquet"))
    assert len(sig_files) == 1 and pq.read_schema(sig_files[0]).equals(SIGNATURES_SCHEMA, check_metadata=False)


def test_empty_store_has_typed_empty_views(tmp_path):
    con = Store(tmp_path / "nothing").connect()
    for view in ("signatures", "layers", "errors", "scans"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == 0


def test_every_way_of_naming_a_checkpoint_gives_the_same_curves(tmp_path, zoo_by_name):
    from kernels import get_backend
    from scanner.scan import scan_strict

    backend = get_backend("cpu")
    sharded = Path(zoo_by_name["phi3-a"].path)
    _, by_dir = scan_strict(str(sharded), backend, set())
    _, by_index = scan_strict(str(sharded / "model.safetensors.index.json"), backend, set())
    assert by_dir.curves == by_index.curves and by_dir.family == "phi3"
    single = Path(zoo_by_name["llama-a"].path)
    _, a = scan_strict(str(single), backend, set())
    _, b = scan_strict(str(single / "model.safetensors"), backend, set())
    assert a.curves == b.curves and (a.model, b.model) == ("llama-a", "model")
    assert a.declared_base == [] and scan_strict(zoo_by_name["llama-a-ft"].path, backend, set())[1].declared_base == [
        "llama-a"
    ]


def test_old_schema_files_stay_readable(tmp_path):
    """A store written before std_se and declared_relation existed still reads, beside new files."""
    store = Store(tmp_path / "db")
    scan_sources([str(write_llama(tmp_path / "old", seed=1))], store, progress=False)
    for table, dropped in (("signatures", ["declared_relation"]), ("layers", ["std_se"])):
        for f in (tmp_path / "db" / table).glob("*.parquet"):
            pq.write_table(pq.read_table(f).drop_columns(dropped), f)
    scan_sources([str(write_llama(tmp_path / "new", seed=2))], store, progress=False)
    con = store.connect()
    rows = con.execute("SELECT model, declared_relation FROM signatures ORDER BY model").fetchall()
    assert rows == [("new", None), ("old", None)]
    se = con.execute("SELECT model, count(std_se) FROM layers GROUP BY model ORDER BY model").fetchall()
    assert se == [("new", 10), ("old", 0)]
