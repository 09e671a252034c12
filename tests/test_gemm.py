"""solvers.gemm: out += a @ b in row blocks, as one product would give it."""
import numpy as np
import pytest

from solvers import gemm


@pytest.mark.parametrize("block_bytes", [1, 100, 1 << 20])   # one row per block, a few rows, all at once
def test_add_matmul_adds_into_existing_values(monkeypatch, block_bytes):
    monkeypatch.setattr(gemm, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 7, 5)).astype(np.float32)
    col = rng.standard_normal((2, 9, 5)).astype(np.float32)   # b given as a transposed view
    out = rng.standard_normal((2, 7, 9)).astype(np.float32)
    want = out.astype(np.float64) + np.matmul(a.astype(np.float64), col.transpose(0, 2, 1))
    before = out.ctypes.data
    gemm.add_matmul(a, col.transpose(0, 2, 1), out)
    assert out.ctypes.data == before
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_add_matmul_last_column_goes_to_its_own_target(monkeypatch):
    monkeypatch.setattr(gemm, "BLOCK_BYTES", 64)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    out, bias = np.ones((6, 4), np.float32), np.full(6, 2.0, np.float32)
    gemm.add_matmul(a, b, out, last_column=bias)
    np.testing.assert_allclose(out, 1 + a @ b[:, :4], rtol=1e-5)
    np.testing.assert_allclose(bias, 2 + a @ b[:, 4], rtol=1e-5)
    dropped = np.zeros((6, 4), np.float32)
    gemm.add_matmul(a, b, dropped)          # no target for the last column: it is dropped
    np.testing.assert_allclose(dropped, a @ b[:, :4], rtol=1e-5)


def test_add_matmul_sum_adds_every_image():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 2, 4, 6)).astype(np.float32)
    b = rng.standard_normal((3, 2, 6, 5)).astype(np.float32)
    out = np.zeros((2, 4, 5), np.float32)
    gemm.add_matmul_sum(a, b, out)
    np.testing.assert_allclose(out, np.matmul(a, b).sum(axis=0), rtol=1e-5, atol=1e-6)


def _assert_product(out, a, b, rtol):
    """out equals a @ b in float64 to rtol of the product's scale (a sum of K rounded terms)."""
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("m,k,r", [
    (10, 300, 1100),    # skinny: batch 10, the weights (1100, 300) fed in 512-row blocks
    (2, 600, 513),      # a last block of one row
    (1, 300, 1100),     # one row: gemv, the plain product
    (200, 64, 300),     # not skinny
])
def test_matmul_into_inner_product_forward(dtype, rtol, m, k, r):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((r, k)).astype(dtype)          # (N, K): y = x @ W.T, a transposed view
    out = np.full((m, r), np.nan, dtype)
    before = out.ctypes.data
    gemm.matmul_into(x, w.T, out)
    assert out.ctypes.data == before
    _assert_product(out, x, w.T, rtol)


def test_matmul_into_skinny_path_is_taken_and_blocked(monkeypatch):
    monkeypatch.setattr(gemm, "SKINNY_MIN_BIG", 1)
    monkeypatch.setattr(gemm, "BIG_ROWS", 3)                # 7 weight rows: blocks of 3, 3, 1
    calls = []
    real = np.matmul
    monkeypatch.setattr(gemm.np, "matmul", lambda a, b, out: calls.append(a.shape) or real(a, b, out=out))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    w = rng.standard_normal((7, 5)).astype(np.float32)
    out = np.zeros((2, 7), np.float32)
    gemm.matmul_into(x, w.T, out)
    assert calls == [(3, 5), (3, 5), (1, 5)]
    _assert_product(out, x, w.T, 1e-5)


@pytest.mark.parametrize("big", [1, 1 << 30])   # the skinny path taken for any size, or never
def test_matmul_into_every_orientation_and_view(monkeypatch, big):
    monkeypatch.setattr(gemm, "SKINNY_MIN_BIG", big)
    monkeypatch.setattr(gemm, "BIG_ROWS", 4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4, 9)).astype(np.float32)[:, 1, :]      # (6, 9), rows strided
    w = rng.standard_normal((11, 9)).astype(np.float32)
    wt = np.ascontiguousarray(w.T)
    dy = rng.standard_normal((6, 22)).astype(np.float32)[:, ::2]         # (6, 11), columns strided
    cases = [(x, w.T), (x, wt), (dy, w), (dy, wt.T), (w, x.T), (x, w[:, ::-1].T)]
    for a, b in cases:
        full = np.full((a.shape[0], 2 * b.shape[1]), np.nan, np.float32)
        out = full[:, ::2]                                                # out itself a strided view
        gemm.matmul_into(a, b, out)
        _assert_product(out, a, b, 1e-5)
        assert np.isnan(full[:, 1::2]).all()                              # nothing else written


def test_weights_matmul_blocks_rows_of_big_weights(monkeypatch):
    """A convolution over few pixels: out = W @ col, W's rows in blocks of BIG_ROWS."""
    monkeypatch.setattr(gemm, "SKINNY_MIN_BIG", 1)
    monkeypatch.setattr(gemm, "BIG_ROWS", 3)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((7, 11)).astype(np.float32)
    col = rng.standard_normal((11, 4)).astype(np.float32)
    calls = []
    real = np.matmul
    monkeypatch.setattr(gemm.np, "matmul", lambda a, b, out: (calls.append(a.shape[0]), real(a, b, out=out)))
    out = np.full((7, 4), np.nan, np.float32)
    gemm.weights_matmul(w, col, out)
    assert calls == [3, 3, 1]
    want = w.astype(np.float64) @ col
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6 * np.abs(want).max())
    calls.clear()
    gemm.weights_matmul(w, col[:, :1], out[:, :1])       # one column: a plain gemv
    assert calls == [7]
    np.testing.assert_allclose(out[:, 0], want[:, 0], rtol=0, atol=1e-6 * np.abs(want).max())
