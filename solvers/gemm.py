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
SKINNY = 128            # a product with at most this many rows is skinny
BIG_ROWS = 512          # rows of a skinny product's weights per BLAS call
SKINNY_MIN_BIG = 1 << 18   # weight elements; below this the plain product is as fast
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
    """``out += sum over n of a[n] @ b[n]`` (the images of a batch).

    ``a`` (N, ..., M, K), ``b`` (N, ..., K, R). Products of small weights go a
    few images at a time into one block and are summed there (one BLAS call
    for many images: LeNet's conv1 is 20 x 26); products of big weights go one
    image at a time straight into the diff's rows, as Caffe's backward loops
    over the batch -- a batched product summed afterwards would hold several
    weight-sized products at once.
    """
    xp = get_array_module(out)
    n = a.shape[0]
    shape = a.shape[1:-1] + b.shape[-1:]
    per_image = math.prod(shape) * a.dtype.itemsize
    k = min(n, BLOCK_BYTES // max(per_image, 1))
    if k < 2:
        for i in range(n):
            add_matmul(a[i], b[i], out, last_column)
        return
    width = out.shape[-1]
    for lo in range(0, n, k):
        hi = min(n, lo + k)
        if xp is np:
            block = _block((hi - lo,) + shape, out.dtype)
            np.matmul(a[lo:hi], b[lo:hi], out=block)
        else:
            block = xp.matmul(a[lo:hi], b[lo:hi])
        summed = block.sum(axis=0)
        out += summed[..., :width]
        if last_column is not None:
            last_column += summed[..., -1].reshape(last_column.shape)


def matmul_into(a, b, out):
    """``out = a @ b`` for 2-D ``a`` (M, K), ``b`` (K, R), views of any strides.

    Caffe's InnerProduct at a small batch is a skinny product: few rows (the
    batch) times the weights. OpenBLAS is up to 1.7x faster on it when the
    weights are the row-major left operand, fed 512 rows at a time (measured
    on this project's 2-core machine: ``x @ W.T`` for fc6 at batch 10,
    37 -> 22 ms on one thread); so when ``out`` has few rows and ``b`` is a
    transposed view of row-major weights, ``out.T = b.T @ a.T`` is formed so
    (``weights_matmul``) into a small scratch and copied back. Blocking rows
    of the product leaves each dot product's terms as they were. One row
    (gemv), small weights, or weights already row-major in ``b``
    (``dx = dy @ W``) take one plain ``matmul``, as fast there.
    """
    xp = get_array_module(a, b, out)
    m, r = out.shape
    if xp is not np or m >= r or not _skinny(b.T, m):
        xp.matmul(a, b, out=out)
        return
    work = _block((r, m), out.dtype)
    weights_matmul(b.T, np.ascontiguousarray(a.T), work)
    out[...] = work.T


def weights_matmul(w, x, out):
    """``out = w @ x`` for row-major weights ``w`` (M, K) and ``x`` (K, R); when ``x`` has few
    columns (a convolution over a few pixels, FCN's fc6: 9) and the weights are big, 512
    rows of the weights at a time (see ``matmul_into``), else one plain product."""
    xp = get_array_module(w, x, out)
    if xp is not np or not _skinny(w, x.shape[1]):
        xp.matmul(w, x, out=out)
        return
    for lo in range(0, w.shape[0], BIG_ROWS):
        np.matmul(w[lo:lo + BIG_ROWS], x, out=out[lo:lo + BIG_ROWS])


def _skinny(w, columns):
    """Whether ``w @ x`` with ``columns`` columns in x goes faster in row blocks of ``w``."""
    return 1 < columns <= SKINNY and w.size >= SKINNY_MIN_BIG and w.strides[1] == w.itemsize
