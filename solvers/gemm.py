"""Accumulating matrix products: Caffe's ``caffe_cpu_gemm`` with beta = 1.

A parameter gradient is *added* to the param diff (Caffe accumulates over
iter_size, shared weights and the images of a batch). NumPy's ``matmul`` can
only overwrite its ``out``, so ``diff += a @ b`` makes a temporary the size of
the weights -- 400 MB for FCN's fc6 -- and a second pass over it. Here the
product is formed a block of rows at a time in a small reused buffer and added
into its rows of the diff while the block is still in cache: the weights are
written once, and no weight-sized array is ever allocated.
"""
import math
import threading

import numpy as np

from solvers.backend import get_array_module

BLOCK_BYTES = 4 << 20   # one block of product rows; stays in the last-level cache
_pool = threading.local()


def _block(shape, dtype):
    """A reused per-thread work array of ``shape`` (contents arbitrary)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buf = getattr(_pool, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _pool.buf = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def add_matmul(a, b, out, last_column=None):
    """``out += a @ b`` without a temporary of ``out``'s size.

    ``a`` (..., M, K) and ``b`` (..., K, R) with the same leading (group)
    axes as ``out`` (..., M, R'); views of any strides (a transposed view goes
    to BLAS as a transposed operand, not copied). ``R' == R``, or ``R' == R - 1``
    and ``last_column`` (M,) takes the product's last column (a bias folded
    into the product as a column of ones, no groups) or is dropped when None.
    """
    xp = get_array_module(out)
    if xp is not np:   # a device array module has its own memory pool
        prod = xp.matmul(a, b)
        out += prod[..., :out.shape[-1]]
        if last_column is not None:
            last_column += prod[..., -1].reshape(last_column.shape)
        return
    lead, (m, r) = a.shape[:-2], (a.shape[-2], b.shape[-1])
    row_bytes = math.prod(lead) * r * a.dtype.itemsize
    rows = max(1, min(m, BLOCK_BYTES // max(row_bytes, 1)))
    for lo in range(0, m, rows):
        hi = min(m, lo + rows)
        block = _block(lead + (hi - lo, r), out.dtype)
        np.matmul(a[..., lo:hi, :], b, out=block)
        out[..., lo:hi, :] += block[..., :out.shape[-1]]
        if last_column is not None:
            last_column[lo:hi] += block[..., -1].reshape(hi - lo)


def add_matmul_sum(a, b, out, last_column=None):
    """``out += sum over n of a[n] @ b[n]`` (the images of a batch), as add_matmul per image.

    ``a`` (N, ..., M, K), ``b`` (N, ..., K, R). One product per image straight
    into the diff's rows, as Caffe's backward loops over the batch: a batched
    product summed afterwards would hold N weight-sized products at once.
    """
    for n in range(a.shape[0]):
        add_matmul(a[n], b[n], out, last_column)
