"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3).

im2col + GEMM spends 9 multiply-adds per output value and input channel,
and OpenBLAS already runs that product near the core's peak, so a faster
3x3 convolution needs fewer multiplications. Winograd's F(2x2, 3x3) (Lavin
and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) makes
each 2x2 block of outputs from a 4x4 input tile with 16 products instead
of 36: the tiles and the filters are transformed by small fixed matrices
(additions and halvings only), multiplied as 16 independent
(K x C) @ (C x tiles) products, and the 4x4 results folded back to 2x2.

The numbers differ from Caffe's im2col sums only in rounding (a relative
error around 1e-7 in float32, checked against float64 in the tests).
The work goes a band of tile rows at a time, so the transformed tiles stay
a few MB however large the image.
"""
import os

import numpy as np

from solvers.scratch import scratch

# CAFFE_WINOGRAD=0 turns it off: every convolution then sums im2col columns, as Caffe does.
ENABLED = os.environ.get("CAFFE_WINOGRAD", "1") != "0"
# Where it pays on a CPU (measured with bench/winograd.py): both channel counts at least
# MIN_CHANNELS (the transforms are memory-bound, the saving is in the product), and at
# least MIN_PIXELS output pixels per pass, or MIN_PIXELS_KEPT where the transformed filters
# are kept between passes (a TEST net: the weights do not change between forwards).
MIN_CHANNELS = 32
MIN_PIXELS = 512
MIN_PIXELS_KEPT = 128
BAND_BYTES = 8 << 20   # transformed tiles (or products) of one band of tile rows...
BAND_COLUMNS = 512     # ...but at least this many tiles, so each product stays efficient


def padded_shape(x_shape, pad):
    """(C, H', N * W' + 2) of the zero-bordered input conv3x3 reads: the images side by side
    along each row, each with ``pad`` (ph, pw) on every side, plus one more zero row
    (column) where the output extent is odd, so every 2x2 tile is whole; 2 more zero
    columns at the end make the tiles of a row an equal number per image."""
    n, c, h, w = x_shape
    oh, ow = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
    return (c, 2 * (-(-oh // 2)) + 2, n * (2 * (-(-ow // 2)) + 2) + 2)


def pad_into(x, pad, xpad):
    """``xpad`` (a work array of ``padded_shape``) = ``x`` (N, C, H, W) laid out as described there.

    Side by side, a band of tile rows is long rows of tiles whatever the batch
    (13x13 images make rows of 7 tiles each, too short for NumPy's loops).
    """
    n, _, h, w = x.shape
    (top, left), bottom, right = pad, pad[0] + h, pad[1] + w
    images = xpad[:, :, :-2].reshape(xpad.shape[0], xpad.shape[1], n, -1)
    xpad[:, :top] = 0
    xpad[:, bottom:] = 0
    xpad[:, top:bottom, -2:] = 0
    images[:, top:bottom, :, :left] = 0
    images[:, top:bottom, :, right:] = 0
    images[:, top:bottom, :, left:right] = x.transpose(1, 2, 0, 3)
    return xpad


def transform_filter(w, out):
    """U = G g G^T for every (output, input) channel pair: ``w`` (K, C, 3, 3) -> ``out`` (16, K, C).

    G's rows are g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2, applied along
    the kernel's rows and then its columns. The nine taps are first laid out
    as nine contiguous rows, so every step is a long vector operation.
    """
    kc = w.shape[0] * w.shape[1]
    taps = scratch(w, "wino_taps", (9, kc))
    taps[...] = w.reshape(kc, 9).T
    half = scratch(w, "wino_half", (12, kc))        # G applied along the kernel's rows
    tmp = scratch(w, "wino_tmp", (kc,))
    for j in range(3):
        _g_rows(taps[j], taps[3 + j], taps[6 + j], half[j::3], tmp)
    u = out.reshape(16, kc)
    for a in range(4):
        _g_rows(half[3 * a], half[3 * a + 1], half[3 * a + 2], u[4 * a: 4 * a + 4], tmp)
    return out


def _g_rows(g0, g1, g2, out, tmp):
    """out[0..3] = g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2."""
    np.add(g0, g2, out=tmp)
    tmp *= 0.5
    out[0] = g0
    np.multiply(g1, 0.5, out=out[1])
    np.subtract(tmp, out[1], out=out[2])
    out[1] += tmp
    out[3] = g2


def flipped_transposed(w, out, group=1):
    """The filters of the input gradient: ``w`` (K, C/G, 3, 3) rotated 180 degrees with each
    group's input and output channels swapped, as ``out`` (C, K/G, 3, 3)."""
    k, cg = w.shape[:2]
    kg = k // group
    out.reshape(group, cg, kg, 3, 3)[...] = w.reshape(group, kg, cg, 3, 3)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return out


def conv3x3(xpad, u, y, bias=None, group=1):
    """``y`` (N, K, OH, OW) = the 3x3 stride-1 correlation of the input with the filters.

    ``xpad`` is the input as ``pad_into`` leaves it, ``u`` (16, K, C / group)
    the transformed filters; ``bias`` (K,) is added when given. ``y`` is
    written, not added to.
    """
    c, hp, width = xpad.shape
    n, k = y.shape[:2]
    th, tiles = (hp - 2) // 2, (width - 2) // 2     # tile rows; tiles per row, tw + 1 per image
    per_row = 16 * max(c, k) * tiles * xpad.itemsize
    band = min(th, max(1, BAND_BYTES // per_row, -(-BAND_COLUMNS // tiles)))
    ug = u.reshape(16, group, k // group, c // group)
    for i0 in range(0, th, band):
        rb = min(band, th - i0)
        p = rb * tiles
        v = _input_tiles(xpad, i0, rb, tiles)
        m = scratch(xpad, "wino_m", (16, k, p))
        np.matmul(ug, v.reshape(16, group, c // group, p), out=m.reshape(16, group, k // group, p))
        _output_tiles(m.reshape(4, 4, k, rb, tiles), y, i0, bias)


def _input_tiles(xpad, i0, rb, tiles):
    """V = B^T d B for the tiles of tile rows i0 .. i0 + rb: (4, 4, C, rb, tiles).

    B^T's rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3, applied along rows, then columns.
    """
    c, _, width = xpad.shape
    top = 2 * i0
    t = scratch(xpad, "wino_t", (4, c, rb, width))
    _bt_rows([xpad[:, top + r: top + r + 2 * rb: 2] for r in range(4)], t)
    v = scratch(xpad, "wino_v", (4, 4, c, rb, tiles))
    for a in range(4):
        _bt_rows([t[a][..., s: s + 2 * tiles: 2] for s in range(4)], v[a])
    return v


def _bt_rows(d, out):
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def _output_tiles(m, y, i0, bias):
    """Y = A^T M A for a band, into ``y``'s rows 2*i0 ...; A^T's rows: m0 + m1 + m2, m1 - m2 - m3.
    Each image's last tile of a row straddles into the next image and is dropped."""
    k, rb, tiles = m.shape[2:]
    n, _, oh, ow = y.shape
    q = scratch(m, "wino_q", (2, 4, k, rb, tiles))
    _at_rows(m, q)
    out = scratch(m, "wino_o", (2, k, rb, tiles))
    for r in range(2):
        _at_rows(q[r], out)
        rows = min(rb, (oh - 2 * i0 - r + 1) // 2)
        if rows <= 0:
            continue
        for s in range(2):
            cols = (ow - s + 1) // 2
            src = out[s].reshape(k, rb, n, -1)[:, :rows, :, :cols].transpose(2, 0, 1, 3)
            dst = y[:, :, 2 * i0 + r: 2 * (i0 + rows) + r - 1: 2, s: s + 2 * cols - 1: 2]
            if bias is None:
                dst[...] = src
            else:
                np.add(src, bias[:, None, None], out=dst)


def pad_output(dy, xpad_shape, out):
    """``out`` (K, 2 * tile rows, 2 * tiles per row) = the output gradient ``dy`` (N, K, OH, OW) in
    the tiles of an input laid out as ``xpad_shape``; zero where no output is (an odd extent's
    extra row or column, and each image's straddling tile)."""
    n, _, oh, ow = dy.shape
    images = out.reshape(out.shape[0], out.shape[1], n, -1)
    out[:, oh:] = 0
    images[:, :oh, :, ow:] = 0
    images[:, :oh, :, :ow] = dy.transpose(1, 2, 0, 3)
    return out


def output_gradient_shape(k, xpad_shape):
    """The shape ``pad_output`` fills for ``k`` outputs and an input laid out as ``xpad_shape``."""
    _, hp, width = xpad_shape
    return (k, hp - 2, width - 2)


def filter_gradient(xpad, dypad, dw, group=1):
    """``dw`` (K, C/G, 3, 3) += the filters' gradient, the adjoint of ``conv3x3``.

    For Y = A^T [U . V] A per tile, dU = sum over tiles of (A dY A^T) . V, a
    (K x tiles) @ (tiles x C) product for each of the 16 tile positions, and
    dW = G^T dU G. ``xpad`` is the input as ``pad_into`` left it, ``dypad``
    the output gradient as ``pad_output`` left it.
    """
    c, hp, width = xpad.shape
    k = dypad.shape[0]
    cg, kg = c // group, k // group
    th, tiles = (hp - 2) // 2, (width - 2) // 2
    per_row = 16 * max(c, k) * tiles * xpad.itemsize
    band = min(th, max(1, BAND_BYTES // per_row, -(-BAND_COLUMNS // tiles)))
    du = scratch(xpad, "wino_du", (16, group, kg, cg))
    for i0 in range(0, th, band):
        rb = min(band, th - i0)
        p = rb * tiles
        v = _input_tiles(xpad, i0, rb, tiles).reshape(16, group, cg, p).transpose(0, 1, 3, 2)
        e = _gradient_tiles(dypad, i0, rb).reshape(16, group, kg, p)
        if i0 == 0:
            np.matmul(e, v, out=du)
        else:
            du += np.matmul(e, v, out=scratch(xpad, "wino_du_band", du.shape))
    kc = k * cg
    half = scratch(xpad, "wino_half", (4, 3, kc))        # G^T applied along the tiles' columns
    tmp = scratch(xpad, "wino_tmp", (kc,))
    rows = du.reshape(4, 4, kc)
    for a in range(4):
        _gt_rows(rows[a], half[a], tmp)
    taps = scratch(xpad, "wino_taps", (3, 3, kc))       # then along their rows
    for j in range(3):
        _gt_rows(half[:, j], taps[:, j], tmp)
    dw += taps.reshape(9, kc).T.reshape(dw.shape)


def _gradient_tiles(dypad, i0, rb):
    """A dY A^T for the tiles of tile rows i0 .. i0 + rb: (4, 4, K, rb, tiles).
    A's rows: y0, y0 + y1, y0 - y1, -y1, applied along rows, then columns."""
    k, _, width = dypad.shape
    top = 2 * i0
    t = scratch(dypad, "wino_et", (4, k, rb, width))
    _a_rows(dypad[:, top: top + 2 * rb: 2], dypad[:, top + 1: top + 2 * rb: 2], t)
    e = scratch(dypad, "wino_e", (4, 4, k, rb, width // 2))
    for a in range(4):
        _a_rows(t[a][..., 0::2], t[a][..., 1::2], e[a])
    return e


def _a_rows(y0, y1, out):
    out[0] = y0
    np.add(y0, y1, out=out[1])
    np.subtract(y0, y1, out=out[2])
    np.negative(y1, out=out[3])


def _gt_rows(x, out, tmp):
    """out[0..2] = x0 + (x1 + x2) / 2, (x1 - x2) / 2, x3 + (x1 + x2) / 2."""
    np.add(x[1], x[2], out=tmp)
    tmp *= 0.5
    np.subtract(x[1], x[2], out=out[1])
    out[1] *= 0.5
    np.add(x[0], tmp, out=out[0])
    np.add(x[3], tmp, out=out[2])


def _at_rows(m, out):
    np.add(m[0], m[1], out=out[0])
    out[0] += m[2]
    np.subtract(m[1], m[2], out=out[1])
    out[1] -= m[3]
