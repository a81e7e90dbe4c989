"""Kernel-level checks: one launch over many irregular segments, fp8 inputs, per-head statistics, and
parity between the CPU and Triton backends on a whole scan (Triton's interpreter without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.kernels.triton import BLOCK_COLS, BLOCK_ROWS, TILES, launch, tile_table
from lineage_scanner.measure.parts import head_views
from lineage_scanner.run.scan import scan_strict

CPU = get_backend("cpu")


@pytest.fixture(scope="module")
def triton_backend():
    return get_backend("triton")


def test_tile_table_covers_every_element_once():
    """Every element of every segment is read by exactly one program, and each segment's column-sum area
    is its own."""
    tall = BLOCK_ROWS * TILES
    lengths = np.array([0, 1, 4096, 4097, 3 * tall * 100 + 7, 0, 5, (tall + 3) * 130, 130])
    cols = np.array([0, 0, 0, 0, 0, 0, 0, 130, 130])
    table = tile_table(lengths, cols)
    covered = np.zeros(lengths.sum(), dtype=int)
    for start, length, width, row, col, _ in table.rows:
        r, c = np.meshgrid(row + np.arange(tall), col + np.arange(BLOCK_COLS), indexing="ij")
        index = r * width + c
        index = index[(c < width) & (index < length)]
        covered[start + index] += 1
    assert (covered == 1).all()
    assert table.per_segment.tolist() == [0, 1, 1, 1, 5, 0, 1, 2 * 3, 1 * 3]  # row programs x strips
    areas = [(a, a + size) for a, size in zip(table.colsum_at, [0] * 7 + [2 * 4 * 130, 1 * 4 * 130]) if a >= 0]
    assert areas == [(0, 1040), (1040, 1560)] and table.colsum_size == 1560


def test_launch_validates_its_inputs():
    x = torch.zeros(10)
    with pytest.raises(ValueError, match="do not tile"):
        launch(x, [4, 5])
    with pytest.raises(ValueError, match="flat and contiguous"):
        launch(x.reshape(2, 5), [10])
    with pytest.raises(TypeError, match="kernel reads"):
        launch(x.to(torch.int32), [10])
    with pytest.raises(ValueError, match="whole rows"):
        launch(x, [10], [3])


def test_one_launch_over_irregular_segments(triton_backend):
    gen = torch.Generator().manual_seed(3)
    sizes = [0, 1, 2, 4095, 4096, 4097, 10_001, 1, 0, 777]
    tensors = [(torch.randn(n, generator=gen) * (i + 1) + i).to(torch.bfloat16) for i, n in enumerate(sizes)]
    got = triton_backend.partials(tensors)
    for t, row in zip(tensors, got):
        m, ref = Moments.from_partial(row), t.to(torch.float64).numpy()
        assert m.count == ref.size
        if ref.size > 1:
            assert m.std == pytest.approx(ref.std(ddof=1), rel=1e-6)
        if ref.size:
            assert (m.min, m.max) == (ref.min(), ref.max())


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_inputs(triton_backend, dtype):
    t = (torch.randn(5000) * 2).to(dtype)
    ref = t.to(torch.float64).numpy()
    for backend in (CPU, triton_backend):
        m = Moments.from_partial(backend.partials([t])[0])
        assert m.std == pytest.approx(ref.std(ddof=1), rel=1e-6) and m.absmax == np.abs(ref).max()


def test_nonfinite_in_a_batch_is_counted_per_segment(triton_backend):
    a, b = torch.randn(9000), torch.randn(100)
    a[[5, 4500, 8999]] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    rows = [Moments.from_partial(r) for r in triton_backend.partials([a.half(), b.half()])]
    assert [r.nonfinite for r in rows] == [3, 0] and rows[0].count == 8997


def test_per_head_statistics_agree_between_backends(triton_backend):
    q = (torch.randn(8 * 64, 256) * torch.linspace(0.5, 2.0, 8).repeat_interleave(64)[:, None]).to(torch.bfloat16)
    heads = head_views(q, 64)
    cpu = [Moments.from_partial(r) for r in CPU.partials(heads)]
    gpu = [Moments.from_partial(r) for r in triton_backend.partials(heads)]
    for h, c, g in zip(heads, cpu, gpu):
        ref = h.to(torch.float64).numpy()
        assert c.std == pytest.approx(ref.std(ddof=1), rel=1e-7)  # float32 powers, float64 sums: ~1e-9 here
        assert g.std == pytest.approx(ref.std(ddof=1), rel=1e-6)
    merged = sum(gpu[1:], gpu[0])
    assert merged.std == pytest.approx(q.to(torch.float64).std().item(), rel=1e-6)


@pytest.mark.slow
def test_scan_parity_cpu_vs_triton(zoo_by_name, triton_backend):
    source = zoo_by_name["qwen2-a-pruned"].path  # biases, norms and weights: several segment sizes
    _, cpu = scan_strict(source, CPU, set())
    _, gpu = scan_strict(source, triton_backend, set())
    assert [(s.layer, s.role) for s in cpu.layers] == [(s.layer, s.role) for s in gpu.layers]
    for c, g in zip(cpu.layers, gpu.layers):
        assert c.moments.count == g.moments.count
        assert g.moments.std == pytest.approx(c.moments.std, rel=1e-6)
        assert (g.moments.min, g.moments.max) == (c.moments.min, c.moments.max)


def test_auto_picks_cpu_without_cuda():
    assert torch.cuda.is_available() or get_backend("auto").name == "cpu"


def test_triton_without_a_gpu_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from lineage_scanner.cli.main import main
    from tests.helpers import write_llama

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("TRITON_INTERPRET")
    code = main(["scan", str(write_llama(tmp_path / "m")), "--backend", "triton", "--db", str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert code == 1 and err == "Error: the triton backend needs a CUDA GPU (or TRITON_INTERPRET=1 to emulate one)\n"


def test_cli_scan_with_the_triton_backend(tmp_path, capsys):
    from lineage_scanner.cli.main import main
    from lineage_scanner.store.store import Store
    from tests.helpers import write_llama

    model = write_llama(tmp_path / "m", n_layers=2)
    assert main(["scan", str(model), "--backend", "triton", "--db", str(tmp_path / "t"), "-q"]) == 0
    assert main(["scan", str(model), "--backend", "cpu", "--db", str(tmp_path / "c"), "-q"]) == 0
    query = "SELECT layer, role, numel, std FROM layers ORDER BY layer, role"
    gpu = Store(tmp_path / "t").connect().execute(query).fetchall()
    cpu = Store(tmp_path / "c").connect().execute(query).fetchall()
    assert [r[:3] for r in gpu] == [r[:3] for r in cpu]
    assert [g[3] for g in gpu] == pytest.approx([c[3] for c in cpu], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(96, 130), (7, 5), (1, 1), (33, 2)])
def test_column_sums_match_float64(dtype, shape):
    from lineage_scanner.measure.kernels.cpu import moments_and_columns

    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(4)) * 0.02 + 0.01).to(dtype)
    ref = x.double().numpy()
    for axis in (0, 1):  # per input column of [out, in], per input row of Conv1D's [in, out]
        powers = moments_and_columns(x, axis)[1]
        for k in range(1, 5):
            # each float32 power is within 3 roundings (1.8e-7) of its value, and float32 sums hold at most
            # TILE_ROWS of them: within 2.5e-7 of Σ|x|^k
            scale = (np.abs(ref) ** k).sum(axis=1 - axis)
            assert (np.abs(powers[k - 1] - (ref**k).sum(axis=1 - axis)) <= 2.5e-7 * scale).all()
    segment = x.narrow(1, 1, shape[1] - 1) if shape[1] > 1 else x  # a strided view, as a column split gives
    np.testing.assert_allclose(moments_and_columns(segment, 0)[1][0], segment.double().numpy().sum(axis=1), rtol=1e-7,
                               atol=1e-15)


def test_fused_column_pass_gives_the_same_moments_as_the_plain_one():
    from lineage_scanner.measure.kernels.cpu import moments_and_columns

    x = (torch.randn(300, 160, generator=torch.Generator().manual_seed(5)) * 0.02).to(torch.bfloat16)
    partial, powers = moments_and_columns(x, 1)
    fused, plain = Moments.from_partial(partial), Moments.from_partial(CPU.partials([x])[0])
    # rows of 160 here, of kernels.cpu.WIDTH there: other float32 groupings, the same statistics
    assert (fused.count, fused.min, fused.max) == (plain.count, plain.min, plain.max)
    assert fused.std == pytest.approx(plain.std, rel=1e-8)
    assert fused.kurtosis == pytest.approx(plain.kurtosis, rel=1e-7)
    np.testing.assert_allclose(powers[0], x.double().numpy().sum(axis=0), rtol=1e-7, atol=1e-15)


def test_triton_column_sums_come_from_the_same_launch(triton_backend):
    """Q/K/V matrices of awkward shapes (columns not a multiple of the strip, rows not of the program) in
    one launch: moments and per-input-column x..x⁴ sums both match float64."""
    gen = torch.Generator().manual_seed(6)
    shapes = [(300, 130), (7, 5), (1, 1), (257, 64), (2, 200)]
    mats = [(torch.randn(*s, generator=gen) * 0.02 + 0.01).to(torch.bfloat16) for s in shapes]
    for m, (partial, powers) in zip(mats, triton_backend.partials_with_columns(mats, 1)):
        ref = m.double().numpy()
        got = Moments.from_partial(partial)
        assert got.count == ref.size and (got.min, got.max) == (ref.min(), ref.max())
        if ref.size > 1:
            assert got.std == pytest.approx(ref.std(ddof=1), rel=1e-6)
        for k in range(1, 5):
            scale = (np.abs(ref) ** k).sum(axis=0)
            assert (np.abs(powers[k - 1] - (ref**k).sum(axis=0)) <= 1e-6 * scale).all()
