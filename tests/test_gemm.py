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
