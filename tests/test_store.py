"""The Parquet store and its DuckDB views: append-only, atomic files, skip on re-scan, --force."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from lineage_scanner.run.batch import ScanConfig, run_batch
from lineage_scanner.store.schema import arrow_schema
from lineage_scanner.store.store import Store
from tests.helpers import write_llama


def test_scan_skip_force_and_views(tmp_path):
    store = Store(tmp_path / "db")
    model = write_llama(tmp_path / "tiny", n_layers=3)
    first = run_batch([str(model)], store, progress=False)
    assert [s.status for s in first.records] == ["ok"] and not first.skipped
    again = run_batch([str(model)], store, progress=False)
    assert not again.records and again.skipped == [("tiny", first.records[0].revision)]
    forced = run_batch([str(model)], store, config=ScanConfig(force=True), progress=False)
    assert len(forced.records) == 1
    con = store.connect()
    assert con.execute("SELECT count(*) FROM scans").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM signatures").fetchone()[0] == 1
    # the layers view follows the newest scan only: 3 layers x (q, k, v, o, attn_norm)
    assert con.execute("SELECT count(*) FROM layers").fetchone()[0] == 15
    newest = con.execute("SELECT scan_id FROM signatures").fetchone()[0]
    assert newest == forced.records[0].scan_id
    row = con.execute(
        "SELECT n_layers, n_heads, n_kv_heads, head_dim, dtype, params, len(curves.q), "
        "array_length(embedding) FROM signatures"
    ).fetchone()
    assert row == (3, 4, 2, 16, "BF16", sum(t.numel() for t in load_file(model / "model.safetensors").values()), 3, 128)


def test_layers_match_torch_std(tmp_path):
    store = Store(tmp_path / "db")
    model = write_llama(tmp_path / "tiny", n_layers=2)
    run_batch([str(model)], store, progress=False)
    tensors = load_file(model / "model.safetensors")
    rows = store.connect().execute("SELECT layer, role, std, numel FROM layers WHERE role = 'k'").fetchall()
    for layer, _, std, numel in rows:
        w = tensors[f"model.layers.{layer}.self_attn.k_proj.weight"].to(torch.float64)
        assert numel == w.numel()
        assert abs(std / w.std().item() - 1) < 1e-6


def test_changed_weights_are_rescanned(tmp_path):
    store = Store(tmp_path / "db")
    model = write_llama(tmp_path / "tiny")
    run_batch([str(model)], store, progress=False)
    tensors = load_file(model / "model.safetensors")
    tensors = {k: v * 1.5 for k, v in tensors.items()}
    save_file(tensors, model / "model.safetensors")
    second = run_batch([str(model)], store, progress=False)
    assert len(second.records) == 1, "same header, different weights must be a new revision"
    assert store.connect().execute("SELECT count(*) FROM signatures").fetchone()[0] == 2


def test_files_are_written_atomically_with_the_schema(tmp_path):
    store = Store(tmp_path / "db")
    run_batch([str(write_llama(tmp_path / "tiny"))], store, progress=False)
    files = list(Path(tmp_path / "db").rglob("*"))
    assert not [f for f in files if f.name.startswith(".") or f.suffix == ".tmp"]
    sig_files = list((tmp_path / "db" / "signatures").glob("*.parquet"))
    assert len(sig_files) == 1 and pq.read_schema(sig_files[0]).equals(arrow_schema("signatures"), check_metadata=False)


def test_empty_store_has_typed_empty_views(tmp_path):
    con = Store(tmp_path / "nothing").connect()
    for view in ("signatures", "layers", "errors", "scans"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == 0


def test_every_way_of_naming_a_checkpoint_gives_the_same_curves(tmp_path, zoo_by_name):
    from lineage_scanner.measure.kernels import get_backend
    from lineage_scanner.run.scan import scan_strict

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
    """A store written before std_se, declared_relation, the folded kurtosis and the copy digests existed
    still reads, beside new files, and its signatures still score against new ones on the features both
    have."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tests.helpers import judge

    store = Store(tmp_path / "db")
    run_batch([str(write_llama(tmp_path / "old", n_layers=4, seed=1))], store, progress=False)
    schema_8 = ["files", "weights_digest", "content_digest", "identical_to"]
    dropped_columns = (("signatures", ["declared_relation", *schema_8]), ("layers", ["std_se", "folded_kurtosis"]))
    for table, dropped in dropped_columns:
        for f in (tmp_path / "db" / table).glob("*.parquet"):
            data = pq.read_table(f).drop_columns(dropped)
            if table == "signatures":  # schema 4's invariants struct: no fkurt_* fields
                inv = data.column("invariants").combine_chunks()
                keep = [k for k in range(inv.type.num_fields) if not inv.type.field(k).name.startswith("fkurt")]
                old = pa.StructArray.from_arrays([pc.struct_field(inv, [k]) for k in keep],
                                                 [inv.type.field(k).name for k in keep])
                data = data.set_column(data.schema.get_field_index("invariants"), "invariants", old)
            pq.write_table(data, f)
    assert store.digests() == {} and store.load("old").files == []  # schema 7: no digests, no file list
    run_batch([str(write_llama(tmp_path / "new", n_layers=4, seed=2))], store, progress=False)
    con = store.connect()
    rows = con.execute("SELECT model, declared_relation, invariants.fkurt_q IS NULL FROM signatures ORDER BY model")
    assert rows.fetchall() == [("new", None, False), ("old", None, True)]
    se = con.execute("SELECT model, count(std_se), count(folded_kurtosis) FROM layers GROUP BY model ORDER BY model")
    assert se.fetchall() == [("new", 20, 12), ("old", 0, 0)]
    old_sig, new_sig = store.load("old"), store.load("new")
    assert "fkurt_q" not in old_sig.invariants and "fkurt_q" in new_sig.invariants
    shared = judge(old_sig, new_sig).evidence.features  # scored on what both stores hold
    assert "qk" in shared and not any(f.startswith("fkurt") for f in shared)


def test_a_units_commit_is_decided_once(tmp_path):
    """A worker's unit appears only if its commit wins over the driver giving up on it (the job's state
    answers both in turn); a refused commit leaves nothing, and a unit committed by a worker lost half way
    through publishing is finished by the driver."""
    from lineage_scanner.measure.kernels import get_backend
    from lineage_scanner.run.ray import JobState
    from lineage_scanner.run.scan import scan_strict
    from lineage_scanner.store.rows import layer_table, signature_table

    state = JobState({})
    assert state.first_visit(("org/a", "1")) and not state.first_visit(("org/a", "1"))
    state.forget(["org/a"])  # its worker was lost: the retry opens it again
    assert state.first_visit(("org/a", "1"))
    assert state.commit("u1") and state.abandon("u1") == "committed"
    assert state.abandon("u2") == "abandoned" and not state.commit("u2")
    _, sig = scan_strict(str(write_llama(tmp_path / "tiny")), get_backend("cpu"), set())
    store = Store(tmp_path / "db")
    assert store.write([sig], "u2", commit=lambda: state.commit("u2")) == 0
    assert store.written("u2") is None and not [p for p in (tmp_path / "db").rglob("*") if p.is_file()]
    store.data.stage("layers", "u3", layer_table([sig]))
    store.data.stage("signatures", "u3", signature_table([sig]))
    store.data.publish("layers", "u3")  # the worker died here
    store.publish("u3")
    assert [s.model for s in store.written("u3")] == ["tiny"]
    assert store.connect().execute("SELECT count(*) FROM layers").fetchone()[0] == 10
    assert not [p for p in (tmp_path / "db").rglob(".*")]
