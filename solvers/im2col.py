"""im2col / col2im: turn convolution into one matrix product.

Caffe unrolls every kernel-sized patch of an image into a column, so that a
convolution is ``weights (M, C*K) @ columns (C*K, P)``. Here the columns of
the whole batch sit side by side: ``im2col`` returns a matrix of shape
``(C * prod(kernel), N * prod(out_spatial))`` whose row index is Caffe's
``(c, k_0, k_1, ...)`` and whose column index is ``(n, o_0, o_1, ...)``. One
matmul then convolves the batch. Any number of spatial axes works (Caffe's
N-d convolution); 2-D is the common case.

The patches are read through a strided view of the (zero-padded) input, so
the only copy is the one into the column matrix. ``col2im`` is the adjoint:
it adds each column entry back to the pixel it came from, one strided add
per kernel offset.
"""
import itertools
import math

from solvers.backend import get_array_module

PHASE_MAX_ADD = 8192   # col2im adds by phase where one offset's add moves at most this many values


def conv_out_size(size, kernel, pad, stride, dilation):
    """Output length along one axis, as Caffe's conv_layer computes it (floor)."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def out_shape(spatial, kernel, pad, stride, dilation):
    return tuple(conv_out_size(s, k, p, st, d)
                 for s, k, p, st, d in zip(spatial, kernel, pad, stride, dilation))


def pad_input(x, pad, out=None):
    """Zero-pad the spatial axes (all but the first two) of ``x``.

    ``out`` may be a buffer of the padded shape kept from an earlier call:
    its border is zero already (only the interior is ever written), so only
    the interior is copied.
    """
    if not any(pad):
        return x
    xp = get_array_module(x)
    shape = x.shape[:2] + tuple(s + 2 * p for s, p in zip(x.shape[2:], pad))
    if out is None or out.shape != shape:
        out = xp.zeros(shape, dtype=x.dtype)
    inner = (slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, x.shape[2:]))
    out[inner] = x
    return out


def _patch_view(xpad, kernel, stride, dilation, out_spatial):
    """Strided view of shape (N, C, *kernel, *out_spatial) into the padded input."""
    s = xpad.strides
    sp = s[2:]
    shape = xpad.shape[:2] + tuple(kernel) + tuple(out_spatial)
    strides = s[:2] + tuple(d * t for d, t in zip(dilation, sp)) + tuple(st * t for st, t in zip(stride, sp))
    return strided_view(xpad, shape, strides)


def strided_view(a, shape, strides):
    """A read-only as_strided view (CuPy's as_strided has no ``writeable`` flag)."""
    xp = get_array_module(a)
    if xp.__name__ == "numpy":
        return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def im2col(x, kernel, pad, stride, dilation, out=None, batch_last=False, scratch=None, per_image=False):
    """Columns of a batch ``x`` (N, C, *spatial): a (C*prod(kernel), N*prod(out)) matrix.

    ``out`` is an optional buffer kept across calls. A layer that wants to
    keep the padded input too calls ``pad_input`` itself and passes pad 0.

    ``per_image=True`` returns instead one column matrix per image, a
    (N, C*prod(kernel), prod(out)) array: a batched matmul then writes the
    convolution straight into an (N, M, pixels) top, with no transpose.

    ``batch_last=True`` orders the columns (o_0, o_1, ..., n) instead of
    (n, o_0, ...), as ``col2im`` accepts them. The input is first copied,
    padded, into a (C, *padded, N) array (``scratch``, shape
    ``im2col_scratch_shape``, may be kept by the caller; its border must
    stay zero, only the interior is written). Every column block
    (c, k..., o_0) is then one contiguous run of prod(o_1...) * N values in
    that array, so the copy into the column matrix moves long runs instead
    of one short image row at a time: much faster when the output rows are
    short (a small feature map).
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    nd = len(kernel)
    osp = out_shape(x.shape[2:], kernel, pad, stride, dilation)
    rows = c
    for k in kernel:
        rows *= k
    cols = n
    for o in osp:
        cols *= o
    shape = (n, rows, cols // n) if per_image else (rows, cols)
    if out is None or out.shape != shape or out.dtype != x.dtype:
        out = xp.empty(shape, dtype=x.dtype)
    if per_image:
        out.reshape((n, c) + tuple(kernel) + tuple(osp))[...] = _patch_view(
            pad_input(x, pad), kernel, stride, dilation, osp)
        return out
    if batch_last:
        shape = im2col_scratch_shape(x.shape, pad)
        if scratch is None or scratch.shape != shape or scratch.dtype != x.dtype:
            scratch = xp.zeros(shape, dtype=x.dtype)
        inner = (slice(None),) + tuple(slice(p, p + s) for p, s in zip(pad, x.shape[2:])) + (slice(None),)
        scratch[inner] = x.transpose(tuple(range(1, nd + 2)) + (0,))
        s = scratch.strides
        sp = s[1:1 + nd]
        view = strided_view(scratch, (c,) + tuple(kernel) + tuple(osp) + (n,),
                            (s[0],) + tuple(d * t for d, t in zip(dilation, sp))
                            + tuple(st * t for st, t in zip(stride, sp)) + (s[-1],))
        out.reshape((c,) + tuple(kernel) + tuple(osp) + (n,))[...] = view
        return out
    view = _patch_view(pad_input(x, pad), kernel, stride, dilation, osp)
    # (N, C, K..., O...) -> (C, K..., N, O...)
    order = (1,) + tuple(range(2, 2 + nd)) + (0,) + tuple(range(2 + nd, 2 + 2 * nd))
    out.reshape((c,) + tuple(kernel) + (n,) + osp)[...] = view.transpose(order)
    return out


def im2col_scratch_shape(x_shape, pad):
    """Shape of ``im2col``'s batch-last input copy: (C, *padded spatial, N)."""
    return (x_shape[1],) + tuple(s + 2 * p for s, p in zip(x_shape[2:], pad)) + (x_shape[0],)


def col2im(col, x_shape, kernel, pad, stride, dilation, out=None, scratch=None, batch_last=False,
           per_image=False):
    """Adjoint of ``im2col``: sum the column matrix back into an (N, C, *spatial) array.

    Overlapping patches add up; entries that came from the zero padding are
    dropped. The sums run in a padded scratch array laid out like the column
    blocks, so every add is a plain strided slice; one transposing copy then
    writes (overwrites) ``out``.

    The adds go one kernel offset at a time (each moves every column block's
    values for that offset), or -- for a stride larger than 1 without
    dilation -- one *phase* at a time: kernel offset a = q * stride + r lands
    on padded position stride * (o + q) + r, so seen as (positions / stride,
    stride) the offsets q * stride .. q * stride + stride - 1 go in one add.
    That is prod(ceil(kernel / stride)) adds instead of prod(kernel): 4
    instead of 3,969 for FCN's 63x63, stride 32 Deconvolution. Each phase
    add gathers with long strides, so it is used only where the offset adds
    are small (``PHASE_MAX_ADD``) and their number is what costs.

    ``batch_last=True`` says the columns are ordered (o_0, o_1, ..., n)
    instead of (n, o_0, ...). That order is faster here (each add runs over
    long contiguous rows); a convolution's backward pass can produce it at
    the cost of one small transpose. ``scratch`` (shape
    ``col2im_scratch_shape``) may be kept by the caller across calls.

    ``per_image=True`` takes ``im2col(..., per_image=True)``'s layout, an
    (N, C*prod(kernel), pixels) array; the sums then run in (N, C, *padded)
    order and need no transpose at the end.
    """
    xp = get_array_module(col)
    n, c = x_shape[:2]
    spatial = tuple(x_shape[2:])
    nd = len(spatial)
    kernel = tuple(kernel)
    osp = out_shape(spatial, kernel, pad, stride, dilation)
    acc_shape = col2im_scratch_shape(x_shape, kernel, pad, stride, dilation, batch_last, per_image)
    if scratch is None or scratch.shape != acc_shape or scratch.dtype != col.dtype:
        scratch = xp.empty(acc_shape, dtype=col.dtype)
    scratch[...] = 0
    # blocks: (lead..., kernel..., out..., tail...), the scratch (lead..., padded..., tail...)
    if per_image:
        blocks, lead, tail = col.reshape((n, c) + kernel + osp), 2, 0
    elif batch_last:
        blocks, lead, tail = col.reshape((c,) + kernel + osp + (n,)), 1, 1
    else:
        blocks = col.reshape((c,) + kernel + (n,) + osp)
        blocks = blocks.transpose((0, nd + 1) + tuple(range(1, nd + 1)) + tuple(range(nd + 2, 2 * nd + 2)))
        lead, tail = 2, 0
    L, T = (slice(None),) * lead, (slice(None),) * tail
    if _by_phase(x_shape, kernel, pad, stride, dilation):
        _add_by_phase(scratch, blocks, kernel, stride, osp, lead, tail)
    else:
        for offs in itertools.product(*[range(k) for k in kernel]):
            target = L + tuple(slice(o * d, o * d + st * (m - 1) + 1, st)
                               for o, d, st, m in zip(offs, dilation, stride, osp)) + T
            scratch[target] += blocks[L + offs]
    if out is None or out.shape != tuple(x_shape):
        out = xp.empty(tuple(x_shape), dtype=col.dtype)
    inner = tuple(slice(p, p + s) for p, s in zip(pad, spatial))
    if per_image:  # already (N, C, *spatial)
        out[...] = scratch[(slice(None), slice(None)) + inner]
    elif batch_last:  # (C, *spatial, N) -> (N, C, *spatial)
        out[...] = scratch[(slice(None),) + inner + (slice(None),)].transpose(
            (nd + 1, 0) + tuple(range(1, nd + 1)))
    else:  # (C, N, *spatial) -> (N, C, *spatial)
        out[...] = xp.swapaxes(scratch[(slice(None), slice(None)) + inner], 0, 1)
    return out


def _by_phase(x_shape, kernel, pad, stride, dilation):
    """Whether col2im adds by phase: it needs dilation 1 and fewer phases than offsets, and it
    pays only where each offset's add is small (then the per-add cost dominates); for big
    maps the offset adds, reading whole rows, move memory faster."""
    if any(d != 1 for d in dilation) or all(s == 1 for s in stride):
        return False
    phases = offsets = 1
    for k, s in zip(kernel, stride):
        phases *= -(-k // s)
        offsets *= k
    per_offset = x_shape[0] * x_shape[1] * math.prod(out_shape(x_shape[2:], kernel, pad, stride, dilation))
    return phases < offsets and per_offset <= PHASE_MAX_ADD


def _add_by_phase(scratch, blocks, kernel, stride, osp, lead, tail):
    """col2im's adds one phase at a time (see ``col2im``); the scratch extents are multiples of stride."""
    nd = len(kernel)
    L, T = (slice(None),) * lead, (slice(None),) * tail
    split = scratch.shape[:lead]
    for e, s in zip(scratch.shape[lead:lead + nd], stride):
        split += (e // s, s)
    acc = scratch.reshape(split + scratch.shape[lead + nd:])
    # (lead, R..., O..., tail) -> (lead, O_0, R_0, O_1, R_1, ..., tail)
    order = tuple(range(lead))
    for i in range(nd):
        order += (lead + nd + i, lead + i)
    order += tuple(range(lead + 2 * nd, lead + 2 * nd + tail))
    for qs in itertools.product(*[range(-(-k // s)) for k, s in zip(kernel, stride)]):
        rs = [min(k, (q + 1) * s) - q * s for q, k, s in zip(qs, kernel, stride)]
        src = blocks[L + tuple(slice(q * s, q * s + r) for q, s, r in zip(qs, stride, rs))]
        target = L
        for q, r, m in zip(qs, rs, osp):
            target += (slice(q, q + m), slice(0, r))
        acc[target + T] += src.transpose(order)


def col2im_scratch_shape(x_shape, kernel, pad, stride, dilation, batch_last=False, per_image=False):
    """Shape of col2im's padded sum buffer: (C, N, *padded), (C, *padded, N) or (N, C, *padded).

    Adding by phase, each padded extent is rounded up to a multiple of the
    stride that holds every phase's block."""
    n, c = x_shape[:2]
    padded = tuple(s + 2 * p for s, p in zip(x_shape[2:], pad))
    if _by_phase(x_shape, kernel, pad, stride, dilation):
        osp = out_shape(x_shape[2:], kernel, pad, stride, dilation)
        padded = tuple(-(-max(e, (o + -(-k // s) - 1) * s) // s) * s
                       for e, o, k, s in zip(padded, osp, kernel, stride))
    if per_image:
        return (n, c) + padded
    return (c,) + padded + (n,) if batch_last else (c, n) + padded
