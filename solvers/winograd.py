"""Stride-1 convolution by Winograd's minimal filtering F(m x m, r x r).

im2col + GEMM spends r*r multiply-adds per output value and input channel,
and OpenBLAS already runs that product near the core's peak, so a faster
convolution needs fewer multiplications. Winograd's F(m x m, r x r) (Lavin
and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) makes
each m x m block of outputs from an n x n input tile (n = m + r - 1) with
n*n products instead of m*m*r*r: the tiles and the filters are transformed
by small fixed matrices, multiplied as n*n independent
(K x C) @ (C x tiles) products, and the results folded back to m x m.
F(2x2, 3x3) spends 16 products where im2col spends 36.

The matrices come from the Toom-Cook construction over the points 0, 1, -1,
2, -2, ... and infinity, exactly, in fractions. The numbers differ from
Caffe's im2col sums only in rounding (checked against float64 direct sums
in the tests). The work goes a band of tile rows at a time, so the
transformed tiles stay a few MB however large the image.

Layout: the images of a batch lie side by side along each row of one
zero-bordered (C, rows, N * width + r - 1) array, each image's width a
whole number of tiles, so a band of tile rows is long rows of tiles whatever
the batch (13x13 images alone make rows of 7 tiles, too short for NumPy's
loops). A tile that straddles two images gives outputs nobody reads.
"""
import math
import os
from fractions import Fraction

import numpy as np

from solvers.scratch import scratch

# CAFFE_WINOGRAD=0 turns it off: every convolution then sums im2col columns, as Caffe does.
ENABLED = os.environ.get("CAFFE_WINOGRAD", "1") != "0"
# Where it pays on a CPU (measured with bench/winograd.py): both channel counts per group at
# least MIN_CHANNELS (the transforms are memory-bound, the saving is in the product), and
# at least MIN_PIXELS output pixels per pass, or MIN_PIXELS_KEPT where the transformed
# filters are kept between passes (a TEST net: the weights do not change between forwards).
MIN_CHANNELS = 32
MIN_PIXELS = 512
MIN_PIXELS_KEPT = 256
BAND_BYTES = 8 << 20   # transformed tiles (or products) of one band of tile rows...
BAND_COLUMNS = 512     # ...but at least this many tiles, so each product stays efficient


def _polynomial(roots):
    """Coefficients, lowest power first, of the product of (x - root) over ``roots``."""
    coef = [Fraction(1)]
    for root in roots:
        shifted = [Fraction(0)] + coef                 # x * p(x)
        coef = [s - root * c for s, c in zip(shifted, coef + [Fraction(0)])]
    return coef


def _transpose(matrix):
    return [list(column) for column in zip(*matrix)]


def _combine(matrix, src, out, tmp):
    """out[a] = sum over j of matrix[a][j] * src[j]: each row of a small matrix applied to
    whole arrays, zero terms skipped, +-1 as additions; ``tmp`` is a work array like out[0]."""
    for a, row in enumerate(matrix):
        terms = [(float(c), src[j]) for j, c in enumerate(row) if c]
        o = out[a]
        (c0, s0), rest = terms[0], terms[1:]
        if rest and c0 == 1 and abs(rest[0][0]) == 1:
            c1, s1 = rest.pop(0)
            (np.add if c1 == 1 else np.subtract)(s0, s1, out=o)
        elif rest and c0 == -1 and rest[0][0] == 1:
            np.subtract(rest.pop(0)[1], s0, out=o)
        elif c0 == 1:
            o[...] = s0
        else:
            np.multiply(s0, c0, out=o)
        for c, s in rest:
            if c == 1:
                o += s
            elif c == -1:
                o -= s
            else:
                np.multiply(s, c, out=tmp)
                o += tmp


def _combine_2d(matrix, src, out, like):
    """out[a, b] = sum over i, j of matrix[a][i] matrix[b][j] src[i, j]: ``src`` (p, p, X) -> ``out``
    (q, q, X) for a (q x p) ``matrix``, along the first axis, then the second."""
    q, p, x = len(matrix), len(matrix[0]), src.shape[-1]
    half = scratch(like, "wino_half", (q, p, x))
    tmp = scratch(like, "wino_tmp", (x,))
    for j in range(p):
        _combine(matrix, src[:, j], half[:, j], tmp)
    for a in range(q):
        _combine(matrix, half[a], out[a], tmp)
    return out


class Winograd:
    """F(m x m, r x r): its matrices, and convolution, input and filter gradients with them.

    Along one axis, y = AT [(G g) * (BT d)] correlates n inputs d with r taps
    g into m outputs; in 2-D each matrix is applied along rows, then columns.
    """

    def __init__(self, m, r):
        self.m, self.r, self.n = m, r, m + r - 1
        points = [Fraction(0)]
        for k in range(1, self.n):
            points += [Fraction(k), Fraction(-k)]
        points = points[:self.n - 1]
        others = [[q for q in points if q != p] for p in points]
        self.AT = [[p ** i for p in points] + [int(i == m - 1)] for i in range(m)]
        self.G = [[p ** k / math.prod(p - q for q in rest) for k in range(r)]
                  for p, rest in zip(points, others)] + [[0] * (r - 1) + [1]]
        self.BT = [_polynomial(rest) + [0] for rest in others] + [_polynomial(points)]
        self.A, self.GT = _transpose(self.AT), _transpose(self.G)   # for the gradients

    def __repr__(self):
        return "F(%dx%d, %dx%d)" % (self.m, self.m, self.r, self.r)

    # -- layout ---------------------------------------------------------------------------

    def padded_shape(self, x_shape, pad):
        """(C, H', N * W' + r - 1) of the zero-bordered input ``conv`` reads (see the module's
        docstring): each image with ``pad`` (ph, pw) on every side, and zeros to a whole
        number of tiles."""
        n, c, h, w = x_shape
        m, r = self.m, self.r
        th, tw = -(-(h + 2 * pad[0] - r + 1) // m), -(-(w + 2 * pad[1] - r + 1) // m)
        return (c, m * th + r - 1, n * m * (tw + -(-(r - 1) // m)) + r - 1)

    def pad_into(self, x, pad, xpad):
        """``xpad`` (a work array of ``padded_shape``) = ``x`` (N, C, H, W) in that layout."""
        images = self._images(xpad, x.shape[0])
        (top, left), bottom, right = pad, pad[0] + x.shape[2], pad[1] + x.shape[3]
        xpad[:, :top] = 0
        xpad[:, bottom:] = 0
        xpad[:, top:bottom, xpad.shape[2] - self.r + 1:] = 0
        images[:, top:bottom, :, :left] = 0
        images[:, top:bottom, :, right:] = 0
        images[:, top:bottom, :, left:right] = x.transpose(1, 2, 0, 3)
        return xpad

    def _images(self, a, n):
        """(C, rows, N, width per image) view of a padded array, its last r - 1 columns left out."""
        inner = a[:, :, :a.shape[2] - self.r + 1]
        return inner.reshape(a.shape[0], a.shape[1], n, -1)

    def output_gradient_shape(self, k, xpad_shape):
        """The shape ``pad_output`` fills for ``k`` outputs and an input laid out as ``xpad_shape``."""
        _, hp, width = xpad_shape
        return (k, hp - self.r + 1, width - self.r + 1)

    def pad_output(self, dy, out):
        """``out`` (a work array of ``output_gradient_shape``) = the output gradient ``dy``
        (N, K, OH, OW) where its outputs lie in the tiles, zero elsewhere (rows and columns
        past a map's end, the straddling tiles)."""
        n, _, oh, ow = dy.shape
        images = out.reshape(out.shape[0], out.shape[1], n, -1)
        out[:, oh:] = 0
        images[:, :oh, :, ow:] = 0
        images[:, :oh, :, :ow] = dy.transpose(1, 2, 0, 3)
        return out

    # -- filters --------------------------------------------------------------------------

    def transform_filter(self, w, out):
        """U = G g G^T for every (output, input) channel pair: ``w`` (K, C, r, r) -> ``out``
        (n*n, K, C). The taps are first laid out as r*r contiguous rows, so every step is a
        long vector operation."""
        r, n = self.r, self.n
        kc = w.shape[0] * w.shape[1]
        taps = scratch(w, "wino_taps", (r, r, kc))
        taps.reshape(r * r, kc)[...] = w.reshape(kc, r * r).T
        _combine_2d(self.G, taps, out.reshape(n, n, kc), w)
        return out

    def flipped_transposed(self, w, out, group=1):
        """The filters of the input gradient: ``w`` (K, C/G, r, r) rotated 180 degrees with each
        group's input and output channels swapped, as ``out`` (C, K/G, r, r)."""
        k, cg, r = w.shape[0], w.shape[1], self.r
        kg = k // group
        out.reshape(group, cg, kg, r, r)[...] = (w.reshape(group, kg, cg, r, r)[..., ::-1, ::-1]
                                                 .transpose(0, 2, 1, 3, 4))
        return out

    # -- passes ---------------------------------------------------------------------------

    def _bands(self, xpad, k):
        """(first tile row, tile rows, tiles per row) of each band of the work over ``xpad`` with
        ``k`` outputs: about BAND_BYTES of transformed tiles, at least BAND_COLUMNS tiles."""
        c, hp, width = xpad.shape
        th, tiles = (hp - self.r + 1) // self.m, (width - self.r + 1) // self.m
        per_row = self.n * self.n * max(c, k) * tiles * xpad.itemsize
        band = min(th, max(1, BAND_BYTES // per_row, -(-BAND_COLUMNS // tiles)))
        for i0 in range(0, th, band):
            yield i0, min(band, th - i0), tiles

    def conv(self, xpad, u, y, bias=None, group=1):
        """``y`` (N, K, OH, OW) = the stride-1 correlation of the input with the filters.

        ``xpad`` is the input as ``pad_into`` leaves it, ``u`` (n*n, K, C / group)
        the transformed filters; ``bias`` (K,) is added when given. ``y`` is
        written, not added to.
        """
        c, k, nn = xpad.shape[0], y.shape[1], self.n * self.n
        ug = u.reshape(nn, group, k // group, c // group)
        for i0, rb, tiles in self._bands(xpad, k):
            p = rb * tiles
            v = self._input_tiles(xpad, i0, rb, tiles)
            mm = scratch(xpad, "wino_m", (nn, k, p))
            np.matmul(ug, v.reshape(nn, group, c // group, p), out=mm.reshape(nn, group, k // group, p))
            self._output_tiles(mm.reshape(self.n, self.n, k, rb, tiles), y, i0, bias)

    def filter_gradient(self, xpad, dypad, dw, group=1):
        """``dw`` (K, C/G, r, r) += the filters' gradient, the adjoint of ``conv``.

        For Y = AT [U . V] A per tile, dU = sum over tiles of (A dY AT) . V, a
        (K x tiles) @ (tiles x C) product for each of the n*n tile positions,
        and dW = GT dU G. ``xpad`` is the input as ``pad_into`` left it,
        ``dypad`` the output gradient as ``pad_output`` left it.
        """
        c, k, nn, r = xpad.shape[0], dypad.shape[0], self.n * self.n, self.r
        cg, kg = c // group, k // group
        du = scratch(xpad, "wino_du", (nn, group, kg, cg))
        for i0, rb, tiles in self._bands(xpad, k):
            p = rb * tiles
            v = self._input_tiles(xpad, i0, rb, tiles).reshape(nn, group, cg, p).transpose(0, 1, 3, 2)
            e = self._gradient_tiles(dypad, i0, rb).reshape(nn, group, kg, p)
            if i0 == 0:
                np.matmul(e, v, out=du)
            else:
                du += np.matmul(e, v, out=scratch(xpad, "wino_du_band", du.shape))
        kc = k * cg
        taps = _combine_2d(self.GT, du.reshape(self.n, self.n, kc), scratch(xpad, "wino_taps", (r, r, kc)), xpad)
        dw += taps.reshape(r * r, kc).T.reshape(dw.shape)

    def _input_tiles(self, xpad, i0, rb, tiles):
        """V = BT d B for the tiles of tile rows i0 .. i0 + rb: (n, n, C, rb, tiles)."""
        c, _, width = xpad.shape
        m, n = self.m, self.n
        top = m * i0
        t = scratch(xpad, "wino_t", (n, c, rb, width))
        _combine(self.BT, [xpad[:, top + a: top + a + m * rb: m] for a in range(n)], t,
                 scratch(xpad, "wino_t_tmp", t.shape[1:]))
        v = scratch(xpad, "wino_v", (n, n, c, rb, tiles))
        tmp = scratch(xpad, "wino_v_tmp", v.shape[2:])
        for a in range(n):
            _combine(self.BT, [t[a][..., s: s + m * tiles: m] for s in range(n)], v[a], tmp)
        return v

    def _gradient_tiles(self, dypad, i0, rb):
        """A dY AT for the tiles of tile rows i0 .. i0 + rb: (n, n, K, rb, tiles)."""
        k, _, width = dypad.shape
        m, n = self.m, self.n
        top = m * i0
        t = scratch(dypad, "wino_et", (n, k, rb, width))
        _combine(self.A, [dypad[:, top + a: top + m * rb: m] for a in range(m)], t,
                 scratch(dypad, "wino_et_tmp", t.shape[1:]))
        e = scratch(dypad, "wino_e", (n, n, k, rb, width // m))
        tmp = scratch(dypad, "wino_e_tmp", e.shape[2:])
        for a in range(n):
            _combine(self.A, [t[a][..., s::m] for s in range(m)], e[a], tmp)
        return e

    def _output_tiles(self, mm, y, i0, bias):
        """Y = AT M A for a band, into ``y``'s rows m*i0 ...; the straddling tiles dropped."""
        k, rb, tiles = mm.shape[2:]
        n, _, oh, ow = y.shape
        m = self.m
        q = scratch(mm, "wino_q", (m, self.n, k, rb, tiles))
        _combine(self.AT, mm, q, scratch(mm, "wino_q_tmp", q.shape[1:]))
        out = scratch(mm, "wino_o", (m, k, rb, tiles))
        tmp = scratch(mm, "wino_o_tmp", out.shape[1:])
        for r_ in range(m):
            _combine(self.AT, q[r_], out, tmp)
            rows = min(rb, (oh - m * i0 - r_ + m - 1) // m)
            if rows <= 0:
                continue
            for s in range(m):
                cols = (ow - s + m - 1) // m
                src = out[s].reshape(k, rb, n, -1)[:, :rows, :, :cols].transpose(2, 0, 1, 3)
                dst = y[:, :, m * i0 + r_: m * (i0 + rows - 1) + r_ + 1: m, s: s + m * (cols - 1) + 1: m]
                if bias is None:
                    dst[...] = src
                else:
                    np.add(src, bias[:, None, None], out=dst)


# The layers use F(2x2, 3x3). Measured and not used (bench/winograd.py --transforms): F(4x4, 3x3)
# is 10-18 % faster only on large maps, slower on 13x13 and 14x14, with 20x the rounding;
# F(2x2, 5x5) is slower than im2col on the zoo's 5x5 layers (AlexNet's conv2 1.12x, GoogLeNet's
# 1.45-2.2x): their 32-48 input channels leave the 6x6 tiles' transforms the larger cost.
F2x3 = Winograd(2, 3)
