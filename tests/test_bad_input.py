"""Every bad input: one line naming the file and the problem, exit code 1, and the batch goes on."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from lineage_scanner.cli.main import main
from lineage_scanner.store.store import Store
from tests.helpers import llama_config, raw_safetensors, write_llama


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    return lines[0]


def valid_header(n: int = 4):
    return {"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}


CASES = {
    "truncated": (lambda p: p.write_bytes(b"\x10\x00"), "truncated"),
    "header_past_end": (lambda p: raw_safetensors(p, valid_header(), length=10_000), "runs past the end"),
    "header_over_cap": (lambda p: raw_safetensors(p, valid_header(), length=2**40), "exceeds"),
    "not_an_object": (lambda p: raw_safetensors(p, [1, 2, 3]), "not an object"),
    "not_json": (lambda p: raw_safetensors(p, b"{nope"), "not valid JSON"),
    "not_utf8": (lambda p: raw_safetensors(p, b'{"\xff": 1}'), "not valid UTF-8"),
    "overlap": (
        lambda p: raw_safetensors(
            p,
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
        ),
        "overlaps",
    ),
    "past_end": (lambda p: raw_safetensors(p, valid_header(), bytes(8)), "truncated file"),
    "shape_mismatch": (
        lambda p: raw_safetensors(p, {"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "needs 6 bytes",
    ),
    "unknown_dtype": (
        lambda p: raw_safetensors(p, {"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
        "unknown dtype",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_safetensors(tmp_path, capsys, case):
    make, expected = CASES[case]
    path = tmp_path / "model.safetensors"
    make(path)
    code, _, err = run_cli(capsys, "scan", str(path), "--db", str(tmp_path / "db"), "-q")
    line = one_error(err)
    assert code == 1
    assert str(path) in line and expected in line, line
    errors = Store(tmp_path / "db").connect().execute("SELECT status, error FROM errors").fetchall()
    assert errors == [("bad_header", line.removeprefix("Error: "))]


def test_nan_inside_a_tensor_is_reported(tmp_path, capsys):
    model = write_llama(tmp_path / "m")
    path = model / "model.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(path)
    tensors["model.layers.1.self_attn.k_proj.weight"][3, 5] = float("nan")
    save_file(tensors, path)
    code, _, err = run_cli(capsys, "scan", str(model), "--db", str(tmp_path / "db"), "-q")
    line = one_error(err)
    assert code == 1
    assert str(path) in line and "model.layers.1.self_attn.k_proj.weight" in line and "1 NaN/Inf" in line


@pytest.mark.parametrize(
    "content,expected",
    [
        (None, "config.json missing"),
        ("{broken", "malformed JSON"),
        ("[1]", "not an object"),
        ('{"num_hidden_layers": -3}', "positive integer"),
    ],
)
def test_bad_config(tmp_path, capsys, content, expected):
    model = write_llama(tmp_path / "m")
    config = model / "config.json"
    if content is None:
        config.unlink()
    else:
        config.write_text(content)
    code, _, err = run_cli(capsys, "scan", str(model), "--db", str(tmp_path / "db"), "-q")
    line = one_error(err)
    assert code == 1 and expected in line and "config" in line


def test_empty_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "scan", str(tmp_path / "empty"), "--db", str(tmp_path / "db"), "-q")
    assert code == 1 and one_error(err) == f"Error: {tmp_path / 'empty'}: empty directory"


def test_missing_path(tmp_path, capsys):
    code, _, err = run_cli(capsys, "scan", str(tmp_path / "nope"), "--db", str(tmp_path / "db"), "-q")
    assert code == 1 and "no such file or directory" in one_error(err)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickle_is_refused_not_loaded(tmp_path, capsys, name):
    # A payload that would run code if unpickled: it must never be opened as a pickle.
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / name).write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    (tmp_path / "m" / "config.json").write_text(json.dumps(llama_config()))
    for target in (tmp_path / "m", tmp_path / "m" / name):
        code, _, err = run_cli(capsys, "scan", str(target), "--db", str(tmp_path / "db"), "-q")
        assert code == 1 and "pickle-based weights are refused" in one_error(err)
    assert not (tmp_path / "pwned").exists()


def test_gguf_bad_magic(tmp_path, capsys):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGML" + struct.pack("<IQQ", 3, 0, 0))
    code, _, err = run_cli(capsys, "scan", str(path), "--db", str(tmp_path / "db"), "-q")
    line = one_error(err)
    assert code == 1 and str(path) in line and "bad magic" in line


def test_gguf_lying_counts(tmp_path, capsys):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1) + bytes(64))
    code, _, err = run_cli(capsys, "scan", str(path), "--db", str(tmp_path / "db"), "-q")
    assert code == 1 and "more than a" in one_error(err)


def test_no_attention_is_unsupported(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"encoder.weight": torch.ones(4, 4)}, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = run_cli(capsys, "scan", str(d), "--db", str(tmp_path / "db"), "-q")
    assert code == 1 and "no attention projections found" in one_error(err)
    status = Store(tmp_path / "db").connect().execute("SELECT status FROM errors").fetchall()
    assert status == [("unsupported",)]


def test_one_bad_model_does_not_stop_the_batch(tmp_path, capsys):
    good_a, good_b = write_llama(tmp_path / "a", seed=1), write_llama(tmp_path / "b", seed=2)
    bad = raw_safetensors(tmp_path / "bad.safetensors", [1])
    code, _, err = run_cli(capsys, "scan", str(good_a), str(bad), str(good_b), "--db", str(tmp_path / "db"), "-q")
    assert code == 1
    assert one_error(err).startswith(f"Error: {bad}:")
    con = Store(tmp_path / "db").connect()
    assert sorted(r[0] for r in con.execute("SELECT model FROM signatures").fetchall()) == ["a", "b"]
    assert con.execute("SELECT model, status FROM errors").fetchall() == [("bad.safetensors", "bad_header")]


def test_index_naming_a_missing_shard(tmp_path, capsys, zoo_by_name):
    import shutil

    model = shutil.copytree(zoo_by_name["phi3-a"].path, tmp_path / "phi3")
    (model / "model-00002-of-00002.safetensors").unlink()
    code, _, err = run_cli(capsys, "scan", str(model), "--db", str(tmp_path / "db"), "-q")
    line = one_error(err)
    assert code == 1 and "model.safetensors.index.json" in line
    assert "names shard model-00002-of-00002.safetensors which does not exist" in line


def test_truncated_gguf(tmp_path, capsys):
    from gguf import GGMLQuantizationType

    from tests.test_gguf import write_gguf

    path = tmp_path / "cut.gguf"
    write_gguf(path, GGMLQuantizationType.Q8_0)
    path.write_bytes(path.read_bytes()[:-1000])
    code, _, err = run_cli(capsys, "scan", str(path), "--db", str(tmp_path / "db"), "-q")
    line = one_error(err)
    assert code == 1 and str(path) in line and "truncated" in line


@pytest.mark.parametrize("text,declared", [
    ("---\nbase_model: acme/a\n---\nprose", ["acme/a"]),
    ("---\r\nbase_model:\r\n- acme/a\r\n- acme/b\r\n---\r\n", ["acme/a", "acme/b"]),  # a merge, CRLF
    ("---\nbase_model: [unclosed\n---\n", []),  # broken YAML declares nothing
    ("---\n- just a list\n---\n", []),
    ("no front matter\n---\nbase_model: acme/a\n---\n", []),
    ("---\nbase_model: acme/a\n" + "x" * (1 << 17), []),  # never closed within the bytes read
])
def test_model_card_front_matter(tmp_path, text, declared):
    from lineage_scanner.readers.open import declared_bases

    (tmp_path / "README.md").write_text(text)
    assert declared_bases(tmp_path) == declared
