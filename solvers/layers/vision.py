"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, LRN, SPP, Crop.

Convolution is im2col plus one matrix product per group over the whole
batch (see ``solvers.im2col``), or Winograd's F(2x2, 3x3) for 3x3 stride-1
layers big enough for it to pay (``solvers.winograd``); pooling works on strided window views of the
input. What backward needs from forward (convolution columns, pooling
winners) and index arrays are kept across calls and rebuilt only when a
bottom changes shape; temporaries that die with the call live in one scratch
pool shared by every layer (``_scratch``). None of these layers runs in place.
"""
import math
import weakref

import numpy as np

from solvers.backend import get_array_module
from solvers.blob import Blob
from solvers.fillers import fill
from solvers.gemm import BLOCK_BYTES, add_matmul, add_matmul_sum, weights_matmul
from solvers.im2col import (col2im, col2im_scratch_shape, im2col, im2col_scratch_shape, out_shape, pad_input,
                            strided_view)
from solvers.layer import Layer, register_layer
from solvers.scratch import scratch as _scratch
from solvers import winograd

FLT_MIN = float(np.finfo(np.float32).tiny)


def _fold(reduce, views, out):
    """``out`` = reduce(views[0], views[1], ...) pairwise, written in place (one view: a copy)."""
    if len(views) == 1:
        out[...] = views[0]
        return
    reduce(views[0], views[1], out=out)
    for v in views[2:]:
        reduce(out, v, out=out)


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


_PASS_BYTES = 2 << 20   # scratch-only work (columns not kept, pooling planes) runs in passes of about this size
_KEEP_BYTES = 32 << 20  # per-image columns up to this size are kept from forward for backward; bigger ones
                        # are made again in backward (as Caffe does), so big images cost one shared buffer


class _ColumnStore:
    """Where a convolution keeps its column matrices from forward to backward.

    Two layers that run at different times may use one store: a solver's
    train net and its test net do, once ``Net.share_with`` has paired their
    layers (``share_work_memory``). Whoever writes a bottom's columns takes
    them over; a layer whose columns were taken recomputes them in backward.
    """

    def __init__(self):
        self.shared = False
        self._entries = {}   # bottom index -> [flat buffer, weakref to the last writer, its shape]

    def take(self, layer, i, like, shape):
        """An array of ``shape`` for bottom ``i``'s columns, and whether its contents are
        other than what ``layer`` last left there as this shape (a new buffer, or another writer)."""
        xp = get_array_module(like)
        size = math.prod(shape)
        entry = self._entries.get(i)
        if entry is None or entry[0].size < size or entry[0].dtype != like.dtype \
                or get_array_module(entry[0]) is not xp:
            entry = self._entries[i] = [xp.empty(size, dtype=like.dtype), None, None]
        fresh = not self.holds(layer, i) or entry[2] != shape
        entry[1], entry[2] = weakref.ref(layer), shape
        return entry[0][:size].reshape(shape), fresh

    def holds(self, layer, i):
        """Whether ``layer`` wrote bottom ``i``'s columns last."""
        entry = self._entries.get(i)
        return entry is not None and entry[1] is not None and entry[1]() is layer


# ---------------------------------------------------------------------------
# Convolution geometry, shared by Convolution, Deconvolution and Im2col
# ---------------------------------------------------------------------------

def _spatial_values(layer, param, name, n, default):
    """Read kernel_size/pad/stride/dilation: 0, 1 or n repeated values, or the _h/_w pair."""
    short = name.split("_")[0]  # kernel_size -> kernel_h / kernel_w
    has_h = name != "dilation" and param.HasField(short + "_h")
    has_w = name != "dilation" and param.HasField(short + "_w")
    values = list(getattr(param, name))
    if has_h or has_w:
        if n != 2:
            raise layer.error("%s_h/%s_w can only be used for 2-D convolution, this bottom has %d "
                              "spatial axes" % (short, short, n))
        if values:
            raise layer.error("give either %s or %s_h/%s_w, not both" % (name, short, short))
        return (getattr(param, short + "_h"), getattr(param, short + "_w"))
    if not values:
        if default is None:
            raise layer.error("kernel_size (or kernel_h and kernel_w) is required")
        return (default,) * n
    if len(values) == 1:
        return (values[0],) * n
    if len(values) != n:
        raise layer.error("%s has %d values; give 1 or one per spatial axis (%d)" % (name, len(values), n))
    return tuple(values)


class _ConvGeometry:
    """What Caffe's BaseConvolutionLayer reads from convolution_param."""

    def __init__(self, layer, bottom_blob):
        p = layer.layer_param.convolution_param
        self.channel_axis = bottom_blob.canonical_axis(p.axis)
        self.num_spatial = bottom_blob.num_axes - self.channel_axis - 1
        if self.num_spatial < 0:
            raise layer.error("axis %d leaves no channel axis in bottom of shape %s"
                              % (p.axis, _shape_str(bottom_blob.shape)))
        n = self.num_spatial
        self.kernel = _spatial_values(layer, p, "kernel_size", n, None)
        self.stride = _spatial_values(layer, p, "stride", n, 1)
        self.pad = _spatial_values(layer, p, "pad", n, 0)
        self.dilation = _spatial_values(layer, p, "dilation", n, 1)
        for what, vals in (("kernel size", self.kernel), ("stride", self.stride),
                           ("dilation", self.dilation)):
            if any(v <= 0 for v in vals):
                raise layer.error("%s must be positive, got %s" % (what, vals))
        self.channels = bottom_blob.shape[self.channel_axis]
        self.kernel_count = int(np.prod(self.kernel))

    def split(self, layer, blob):
        """(num, channels, spatial) of a bottom, checked against the set-up shape."""
        if blob.num_axes != self.channel_axis + 1 + self.num_spatial:
            raise layer.error("bottom number of axes may not change (set up with %d, got shape %s)"
                              % (self.channel_axis + 1 + self.num_spatial, _shape_str(blob.shape)))
        if blob.shape[self.channel_axis] != self.channels:
            raise layer.error("bottom has %d channels, the layer was set up for %d (shape %s)"
                              % (blob.shape[self.channel_axis], self.channels, _shape_str(blob.shape)))
        num = blob.count_range(0, self.channel_axis)
        return num, tuple(blob.shape[self.channel_axis + 1:])


class _BaseConvolution(Layer):
    """Caffe's BaseConvolutionLayer: parameters, weights and the shared reshape."""

    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    reverse = False  # Deconvolution swaps the roles of input and output channels

    def layer_setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.geo = g = _ConvGeometry(self, bottom[0])
        self.num_output = p.num_output
        if self.num_output <= 0:
            raise self.error("num_output must be positive")
        self.group = p.group
        if self.group <= 0 or g.channels % self.group:
            raise self.error("input channels (%d) must be a multiple of group (%d)" % (g.channels, self.group))
        if self.num_output % self.group:
            raise self.error("num_output (%d) must be a multiple of group (%d)" % (self.num_output, self.group))
        if self.reverse:
            out_ch, in_ch = g.channels, self.num_output
        else:
            out_ch, in_ch = self.num_output, g.channels
        shapes = [(out_ch, in_ch // self.group) + tuple(g.kernel)]
        if p.bias_term:
            shapes.append((self.num_output,))
        if len(self.layer_param.blobs):
            self._load_blobs(shapes)
        else:
            self.blobs = [Blob(s) for s in shapes]
            fill(self.blobs[0], p.weight_filler)
            if p.bias_term:
                fill(self.blobs[1], p.bias_filler)
        self.param_propagate_down = [True] * len(self.blobs)
        from netspec import caffe_pb2
        # Whether forward keeps what backward needs: not in a TEST net, nor where the
        # Net never runs this layer backward (it sets this False); a backward call
        # turns it back on.
        self.need_backward = self.phase == caffe_pb2.TRAIN
        self.column_store = _ColumnStore()
        self._key = None

    def share_work_memory(self, other):
        """Keep columns in ``other``'s store (a layer of the same type, run at other times)."""
        if type(other) is type(self) and other is not self:
            self.column_store = other.column_store
            self.column_store.shared = True

    def _load_blobs(self, shapes):
        """Weights embedded in the layer's ``blobs`` replace the fillers."""
        protos = self.layer_param.blobs
        if len(protos) != len(shapes):
            raise self.error("layer carries %d parameter blobs, expected %d (weights%s)"
                             % (len(protos), len(shapes), " and bias" if len(shapes) > 1 else ""))
        self.blobs = []
        for j, (proto, shape) in enumerate(zip(protos, shapes)):
            b = Blob()
            b.from_proto(proto, name="layer %r blob %d" % (self.name, j))
            if b.count != int(np.prod(shape)):
                raise self.error("parameter blob %d has shape %s, expected %s"
                                 % (j, _shape_str(b.shape), _shape_str(shape)))
            b.reshape(shape)
            self.blobs.append(b)

    def reshape(self, bottom, top):
        g = self.geo
        num, spatial = g.split(self, bottom[0])
        for b in bottom[1:]:
            if b.shape != bottom[0].shape:
                raise self.error("all bottoms must have the same shape: %s vs %s"
                                 % (_shape_str(bottom[0].shape), _shape_str(b.shape)))
        if self.reverse:
            out_sp = tuple(st * (s - 1) + d * (k - 1) + 1 - 2 * p for s, k, p, st, d in
                           zip(spatial, g.kernel, g.pad, g.stride, g.dilation))
        else:
            out_sp = out_shape(spatial, g.kernel, g.pad, g.stride, g.dilation)
        if any(o <= 0 for o in out_sp):
            raise self.error("kernel %s with pad %s, stride %s, dilation %s gives an empty output "
                             "for a bottom of shape %s" % (g.kernel, g.pad, g.stride, g.dilation,
                                                           _shape_str(bottom[0].shape)))
        top_shape = tuple(bottom[0].shape[:g.channel_axis]) + (self.num_output,) + out_sp
        for t in top:
            t.reshape(top_shape)
        key = (num, spatial)
        if key != self._key:
            self._key = key
            self.num, self.in_spatial, self.out_spatial = num, spatial, out_sp
            self._buffers = {}
            self._kept = set()   # bottoms whose columns the last forward left in the column store

    def _buffer(self, like, name, shape):
        """A zeroed work array of ``like``'s dtype, kept until the bottom shape changes."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != like.dtype:
            buf = self._buffers[name] = get_array_module(like).zeros(tuple(shape), dtype=like.dtype)
        return buf


@register_layer("Convolution")
class ConvolutionLayer(_BaseConvolution):
    """y = W * x + b, one (group-batched) matmul over im2col columns of the whole batch.

    Weights (num_output, channels/group, *kernel), bias (num_output,).
    The column matrix of each bottom is kept from forward for backward in
    the layer's ``column_store`` (Caffe recomputes it; the bottom data has
    not changed in between; per-image columns bigger than ``_KEEP_BYTES`` are
    made again in backward, a few images at a time, as Caffe does), unless
    ``need_backward`` is False (a TEST net):
    then forward writes it to the shared scratch, or to the store it shares
    with the train net's layer, and a backward recomputes it.
    3x3 stride-1 layers with enough channels and pixels go by Winograd
    instead (``_winograd``), forward and backward, and make no columns
    unless a backward falls back to im2col.
    """

    def _layout(self):
        """Column layout for this shape (all give the same numbers; they differ in speed).

        ``"per_image"`` (N, C*K, pixels), one matmul per image straight into
        the (N, M, pixels) top, for large output maps: im2col copies whole
        image rows and no transpose follows. Its weight gradient sums N
        per-image products, an (N, M, C*K) temporary, so only while M <=
        pixels (no bigger than the columns themselves). ``"batch_last"``
        (C*K, pixels * N) for small maps: im2col then copies runs of a whole
        map times the batch instead of short image rows, and the transpose of
        the product back to (N, M, pixels) is small -- but not for a grouped
        (depthwise) layer with a stride, whose cost is the im2col itself, and
        that im2col is strided runs (MobileNet's conv4_2/dw: 3.3 -> 0.6 ms at
        batch 2). Otherwise
        ``"batch_first"`` (C*K, N * pixels).
        """
        pixels = 1
        for o in self.out_spatial:
            pixels *= o
        if pixels <= 256 and (self.group == 1 or max(self.geo.stride) == 1):
            return "batch_last"
        return "per_image" if self.num_output // self.group <= pixels else "batch_first"

    def _column_shape(self, layout, n):
        """(N, C*K [+1 row of ones], pixels) per image, else (C*K, N * pixels)."""
        rows = self.geo.channels * self.geo.kernel_count
        npix = math.prod(self.out_spatial)
        if layout == "per_image":
            return (n, rows + self._fold_bias(), npix)
        return (rows, n * npix)

    def _columns(self, xp, x, i, layout, keep):
        """im2col of ``x`` (bottom ``i``, or some of its images) in ``layout``: into the
        column store when ``keep`` (for backward) or when the store is shared anyway,
        else into the shared scratch.

        Per-image columns of a layer without groups carry an extra row of ones
        (the bias rides in the product, see ``_forward_per_image``).
        """
        g = self.geo
        n, c = x.shape[:2]
        rows = c * g.kernel_count
        shape = self._column_shape(layout, n)
        if keep or self.column_store.shared:
            col, fresh = self.column_store.take(self, i, x, shape)
        else:
            col, fresh = _scratch(x, 0, shape), True
        if layout == "per_image" and self._fold_bias() and fresh:
            col[:, rows:] = 1
        # Padded copies keep their zero border, so they are the layer's own (one per pass size).
        nopad = (0,) * g.num_spatial
        if layout == "batch_last":  # the input transposed to (C, *padded, N), then contiguous runs
            shape = im2col_scratch_shape(x.shape, g.pad)
            xt = self._buffer(x, "xt%d" % n, shape) if any(g.pad) else _scratch(x, 2, shape)
            im2col(x, g.kernel, g.pad, g.stride, g.dilation, out=col, batch_last=True, scratch=xt)
        else:
            if any(g.pad):
                padded = (n, c) + tuple(s + 2 * p for s, p in zip(self.in_spatial, g.pad))
                x = pad_input(x, g.pad, self._buffer(x, "xpad%d" % n, padded))
            if layout == "per_image":
                im2col(x, g.kernel, nopad, g.stride, g.dilation, out=col[:, :rows], per_image=True)
            else:
                im2col(x, g.kernel, nopad, g.stride, g.dilation, out=col)
        if keep:
            self._kept.add(i)
        else:
            self._kept.discard(i)
        return col

    def _backward_columns(self, xp, bottom_blob, i, layout):
        """The columns forward made of bottom ``i``; recomputed (and kept from now on) if
        forward did not keep them or another layer has taken them since."""
        x = bottom_blob.data.reshape((self.num, self.geo.channels) + self.in_spatial)
        if i in self._kept and self.column_store.holds(self, i):
            return self.column_store.take(self, i, x, self._column_shape(layout, self.num))[0]
        self.need_backward = True
        return self._columns(xp, x, i, layout, keep=True)

    def _keeps_columns(self, layout, itemsize):
        """Whether forward keeps the columns for backward: always in the batch layouts (their
        products must see the batch at once); per image, while the batch's columns are at
        most _KEEP_BYTES -- else backward makes them again a few images at a time."""
        return layout != "per_image" or math.prod(self._column_shape(layout, self.num)) * itemsize <= _KEEP_BYTES

    def _per_image_backward(self, xp, dy, bottom_blob, i, w, need_x):
        """Backward in the per-image layout: with the columns forward kept (made again if it
        did not keep them), or, where they are too big to keep, made again a few images at a
        time (scratch-sized passes; the weight gradient sums the passes)."""
        n, c = self.num, self.geo.channels
        x = bottom_blob.data.reshape((n, c) + self.in_spatial)
        dx = bottom_blob.diff.reshape(x.shape) if need_x else None
        if self._keeps_columns("per_image", x.dtype.itemsize):   # kept, or made again and kept from now on
            self._backward_per_image(xp, dy, self._backward_columns(xp, bottom_blob, i, "per_image"), w, dx)
        else:
            step = self._images_per_pass(x.dtype.itemsize)
            for lo in range(0, n, step):
                col = self._columns(xp, x[lo:lo + step], i, "per_image", keep=False)
                self._backward_per_image(xp, dy[lo:lo + step], col, w, None if dx is None else dx[lo:lo + step])
        if need_x:
            self._kept.discard(i)   # the input gradient's columns overwrote them

    def _images_per_pass(self, itemsize):
        """Images per pass for per-image columns not kept: passes of at most ~_PASS_BYTES."""
        image_bytes = math.prod(self._column_shape("per_image", 1)) * itemsize
        passes = max(1, -(-self.num * image_bytes // _PASS_BYTES))
        return -(-self.num // passes)

    def forward(self, bottom, top):
        """Columns kept for backward cover the batch. Per-image columns not kept are made
        a few images at a time: the product is one matmul per image either way, so the
        numbers are the same. (The other layouts multiply the batch's columns at once;
        a product over fewer columns could round differently, so they make no passes.)"""
        xp = self.xp_of(bottom[0])
        g = self.geo
        n, m = self.num, self.num_output
        f = self._winograd(xp, bottom[0].data, n * math.prod(self.out_spatial))
        if f:
            for i, (b, t) in enumerate(zip(bottom, top)):
                self._winograd_forward(f, b, t)
                self._kept.discard(i)   # no columns made: a backward makes them
            return
        w = self.blobs[0].data.reshape(self.group, m // self.group, -1)
        layout = self._layout()
        keep = self.need_backward and self._keeps_columns(layout, bottom[0].data.dtype.itemsize)
        step = n if keep or layout != "per_image" else self._images_per_pass(bottom[0].data.dtype.itemsize)
        for i, (b, t) in enumerate(zip(bottom, top)):
            x = b.data.reshape((n, g.channels) + self.in_spatial)
            y = t.data.reshape(n, m, -1)
            for lo in range(0, n, step):
                col = self._columns(xp, x[lo:lo + step], i, layout, keep)
                self._forward_columns(xp, col, w, y[lo:lo + step], layout)

    def _winograd(self, xp, a, pixels, backward=False):
        """The Winograd transform (``solvers.winograd``) this pass (forward, or backward) goes by,
        or None for im2col: F(2x2, 3x3) for a 3x3 kernel, stride 1, no dilation (and pads of
        at most 2 for the input gradient), NumPy floats, and enough channels per group and
        output ``pixels`` for it to pay."""
        g = self.geo
        if not winograd.ENABLED or xp is not np or a.dtype not in (np.float32, np.float64):
            return None
        f = winograd.F2x3
        if (g.num_spatial != 2 or tuple(g.kernel) != (3, 3) or g.stride != (1, 1) or g.dilation != (1, 1)
                or (backward and max(g.pad) >= f.r)):
            return None
        if min(g.channels, self.num_output) < winograd.MIN_CHANNELS * self.group:
            return None
        if pixels < (winograd.MIN_PIXELS if self.need_backward else winograd.MIN_PIXELS_KEPT):
            return None
        return f

    def _winograd_input(self, f, b):
        """Bottom ``b``'s data laid out for ``f`` (``Winograd.pad_into``) in the shared scratch."""
        x = b.data.reshape((self.num, self.geo.channels) + self.in_spatial)
        return f.pad_into(x, self.geo.pad, _scratch(x, "wino_x", f.padded_shape(x.shape, self.geo.pad)))

    def _winograd_forward(self, f, b, t):
        bias = self.blobs[1].data if len(self.blobs) > 1 else None
        f.conv(self._winograd_input(f, b), self._winograd_filters(f),
               t.data.reshape((self.num, self.num_output) + self.out_spatial), bias, self.group)

    def _winograd_backward(self, f, t, b, down):
        """The bias, filter and (``down``) input gradients, the filters' and the input's by Winograd:
        dW as the adjoint of the forward's tiles, dx as dy correlated with the filters rotated 180
        degrees (each group's channels swapped), with pad r - 1 - pad."""
        g, n, m = self.geo, self.num, self.num_output
        dy = t.diff.reshape((n, m) + self.out_spatial)
        if len(self.blobs) > 1 and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=(0, 2, 3))
        if self.param_propagate_down[0]:
            xpad = self._winograd_input(f, b)
            dypad = f.pad_output(dy, _scratch(dy, "wino_dy", f.output_gradient_shape(m, xpad.shape)))
            f.filter_gradient(xpad, dypad, self.blobs[0].diff, self.group)
        if down:
            pad = tuple(f.r - 1 - p for p in g.pad)
            dypad = f.pad_into(dy, pad, _scratch(dy, "wino_x", f.padded_shape(dy.shape, pad)))
            f.conv(dypad, self._winograd_filters(f, flipped=True),
                   b.diff.reshape((n, g.channels) + self.in_spatial), group=self.group)

    def _winograd_filters(self, f, flipped=False):
        """The transformed filters (of the input gradient's filters when ``flipped``). In a net
        that runs no backward they are kept, with a copy of the weights they came from, and
        made again only when the weights change; in training they are made every pass."""
        w = self.blobs[0].data
        k, c = w.shape[:2]   # c: input channels per group
        nn = f.n * f.n
        if flipped:
            shape = (c * self.group, k // self.group)
            wf = f.flipped_transposed(w, _scratch(w, "wino_wf", shape + (f.r, f.r)), self.group)
            return f.transform_filter(wf, _scratch(w, "wino_u", (nn,) + shape))
        if self.need_backward:
            self._wino_kept = None
            return f.transform_filter(w, _scratch(w, "wino_u", (nn, k, c)))
        kept = getattr(self, "_wino_kept", None)
        if kept is None or kept[0].shape != w.shape or kept[0].dtype != w.dtype or not np.array_equal(kept[0], w):
            kept = self._wino_kept = (w.copy(), f.transform_filter(w, np.empty((nn, k, c), w.dtype)))
        return kept[1]

    def _forward_columns(self, xp, col, w, y, layout):
        """y (N, M, pixels) from the columns of its N images."""
        if layout == "per_image":
            self._forward_per_image(xp, col, w, y)
            return
        G, m = self.group, self.num_output
        n, npix = y.shape[0], col.shape[1]
        y_mat = _scratch(col, 1, (m, npix))
        if G == 1:   # few pixels (FCN's fc6 is 9) go a block of weight rows at a time
            weights_matmul(w[0], col, y_mat)
        else:
            xp.matmul(w, col.reshape(G, -1, npix), out=y_mat.reshape(G, m // G, npix))
        if layout == "batch_last":  # (M, pixels, N) -> (N, M, pixels)
            y_mat = y_mat.reshape(m, -1, n).transpose(2, 0, 1)
        else:  # (M, N, pixels) -> (N, M, pixels)
            y_mat = y_mat.reshape(m, n, -1).transpose(1, 0, 2)
        if len(self.blobs) > 1:  # the bias rides along with the transposing copy
            xp.add(y_mat, self.blobs[1].data[:, None], out=y)
        else:
            y[...] = y_mat

    def _forward_per_image(self, xp, col, w, y):
        """Per-image columns (N, C*K, pixels): one matmul per image, straight into the top.

        Without groups the bias rides in the product too: the column buffer has
        an extra row of ones and the weights an extra column holding the bias,
        which saves a pass over the top (and gives the bias gradient in backward's
        weight product).
        """
        g, G = self.geo, self.group
        n, m = y.shape[0], self.num_output
        rows = g.channels * g.kernel_count
        npix = y.shape[2]
        if self._fold_bias():
            w_aug = self._buffer(w, "w_bias", (m, rows + 1))
            w_aug[:, :rows] = w[0]
            w_aug[:, rows] = self.blobs[1].data
            xp.matmul(w_aug, col, out=y)
        else:  # (G, M/G, CK/G) @ (N, G, CK/G, pixels) -> (N, G, M/G, pixels)
            xp.matmul(w, col.reshape(n, G, -1, npix), out=y.reshape(n, G, m // G, npix))
            if len(self.blobs) > 1:
                y += self.blobs[1].data[:, None]

    def _fold_bias(self):
        """Whether the per-image layout carries the bias as an extra column row (no groups)."""
        return self.group == 1 and len(self.blobs) > 1

    def backward(self, top, propagate_down, bottom):
        xp = self.xp_of(top[0])
        g, G = self.geo, self.group
        n, c, m = self.num, g.channels, self.num_output
        w = self.blobs[0].data.reshape(G, m // G, -1)
        x_shape = (n, c) + self.in_spatial
        layout = self._layout()
        fold = layout == "per_image" and self._fold_bias()
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.diff.reshape(n, m, -1)
            down = propagate_down[i]
            f = self._winograd(xp, dy, n * math.prod(self.out_spatial), backward=True)
            if f:
                self._winograd_backward(f, t, b, down)
                continue
            if fold:
                self._per_image_backward(xp, dy, b, i, w, down)
                continue
            if len(self.blobs) > 1 and self.param_propagate_down[1]:
                # (N, M, pixels) @ ones: a BLAS product, faster than sum over axes (0, 2).
                ones = self._buffers.get("ones")
                if ones is None or ones.shape != dy.shape[2:] or ones.dtype != dy.dtype:
                    ones = self._buffers["ones"] = xp.ones(dy.shape[2:], dtype=dy.dtype)
                self.blobs[1].diff += xp.matmul(dy, ones).sum(axis=0)
            need_w = self.param_propagate_down[0]
            if not (need_w or down):
                continue
            if layout == "per_image":
                self._per_image_backward(xp, dy, b, i, w, down)
                continue
            col = self._backward_columns(xp, b, i, layout)
            npix = col.shape[1]
            # Columns ordered (pixel, n) make col2im's adds run over long rows; the
            # weight gradient needs dy in the columns' own order.
            dy_t = _scratch(dy, 1, (m, npix))
            if layout == "batch_last" or down:
                dy_t.reshape(m, -1, n)[...] = dy.transpose(1, 2, 0)
            if need_w:
                if layout == "batch_last":
                    dy_mat = dy_t
                else:
                    dy_mat = _scratch(dy, 2, (m, npix))
                    dy_mat.reshape(m, n, -1)[...] = dy.transpose(1, 0, 2)
                dw = self.blobs[0].diff.reshape(G, m // G, -1)
                cols, dys = col.reshape(G, -1, npix), dy_mat.reshape(G, m // G, npix)
                if dw.nbytes <= BLOCK_BYTES:
                    # Small weights: dW^T = col @ dy^T (faster in OpenBLAS for these shapes) into
                    # a scratch, then added through a transpose.
                    dw_t = _scratch(col, 4, (G, cols.shape[1], m // G))
                    xp.matmul(cols, dys.transpose(0, 2, 1), out=dw_t)
                    dw += dw_t.transpose(0, 2, 1)
                else:
                    # Big weights: dW += dy @ col^T in the diff's own (M, C*K) layout, a block of
                    # rows at a time: no weight-sized temporary (FCN's fc6 is 400 MB, 9 pixels).
                    add_matmul(dys, cols.transpose(0, 2, 1), dw)
            if down:
                # The columns are spent once dW is summed: the input gradient's columns
                # overwrite them (a backward without a new forward recomputes them).
                self._kept.discard(i)
                dcol = col
                xp.matmul(w.transpose(0, 2, 1), dy_t.reshape(G, m // G, npix),
                          out=dcol.reshape(G, -1, npix))
                scratch = _scratch(dy, 3, col2im_scratch_shape(x_shape, g.kernel, g.pad, g.stride, g.dilation, True))
                col2im(dcol, x_shape, g.kernel, g.pad, g.stride, g.dilation,
                       out=b.diff.reshape(x_shape), scratch=scratch, batch_last=True)

    def _backward_per_image(self, xp, dy, col, w, dx):
        """Backward with per-image columns (N, C*K [+1], pixels): batched matmuls, no transposes of dy.

        With the bias folded in (an extra row of ones in ``col``), the weight
        product's last column is the bias gradient. The input gradient's columns
        overwrite ``col`` (the caller forgets it).
        """
        g, G = self.geo, self.group
        n, m = dy.shape[0], self.num_output
        npix = col.shape[2]
        rows = g.channels * g.kernel_count
        fold = col.shape[1] > rows
        dy4 = dy.reshape(n, G, m // G, npix)
        need_w = self.param_propagate_down[0]
        need_b = fold and self.param_propagate_down[1]
        if need_w:  # sum over images of dy_n @ col_n^T, added straight into the diff
            add_matmul_sum(dy4, col.reshape(n, G, -1, npix).transpose(0, 1, 3, 2),
                           self.blobs[0].diff.reshape(G, m // G, rows // G),
                           last_column=self.blobs[1].diff if need_b else None)
        elif need_b:
            self.blobs[1].diff += dy.sum(axis=(0, 2))
        if dx is not None:
            dcol = col[:, :rows] if fold else col   # with fold there are no groups (G == 1)
            xp.matmul(w.transpose(0, 2, 1), dy4, out=dcol.reshape(n, G, -1, npix))
            scratch = _scratch(dy, 3, col2im_scratch_shape(dx.shape, g.kernel, g.pad, g.stride, g.dilation,
                                                         per_image=True))
            col2im(dcol, dx.shape, g.kernel, g.pad, g.stride, g.dilation, out=dx, scratch=scratch,
                   per_image=True)


@register_layer("Deconvolution")
class DeconvolutionLayer(_BaseConvolution):
    """The transpose of Convolution (its forward is convolution's input gradient).

    Weights (channels, num_output/group, *kernel); output size
    stride*(in-1) + dilation*(kernel-1) + 1 - 2*pad.
    """

    reverse = True

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        g, G = self.geo, self.group
        n, c, m = self.num, g.channels, self.num_output
        w = self.blobs[0].data.reshape(G, c // G, -1)
        y_shape = (n, m) + self.out_spatial
        for i, (b, t) in enumerate(zip(bottom, top)):
            x = b.data.reshape(n, c, -1)
            npix = n * x.shape[2]
            x_mat = self._buffer(x, "x%d" % i, (c, npix))
            x_mat.reshape(c, n, -1)[...] = x.transpose(1, 0, 2)
            col = xp.matmul(w.transpose(0, 2, 1), x_mat.reshape(G, c // G, npix))
            col2im(col.reshape(m * g.kernel_count, npix), y_shape, g.kernel, g.pad, g.stride,
                   g.dilation, out=t.data.reshape(y_shape),
                   scratch=self._buffer(col, "col2im", col2im_scratch_shape(y_shape, g.kernel, g.pad, g.stride,
                                                                                 g.dilation)))
            if len(self.blobs) > 1:
                t.data.reshape(n, m, -1)[...] += self.blobs[1].data[:, None]

    def backward(self, top, propagate_down, bottom):
        xp = self.xp_of(top[0])
        g, G = self.geo, self.group
        n, c, m = self.num, g.channels, self.num_output
        w = self.blobs[0].data.reshape(G, c // G, -1)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.diff.reshape((n, m) + self.out_spatial)
            if len(self.blobs) > 1 and self.param_propagate_down[1]:
                self.blobs[1].diff += dy.reshape(n, m, -1).sum(axis=(0, 2))
            need_w = self.param_propagate_down[0]
            if not (need_w or propagate_down[i]):
                continue
            dcol = im2col(dy, g.kernel, g.pad, g.stride, g.dilation, out=self._buffers.get("dcol"))
            self._buffers["dcol"] = dcol
            npix = dcol.shape[1]
            dcol = dcol.reshape(G, -1, npix)
            if need_w:
                x_mat = self._buffers["x%d" % i].reshape(G, c // G, npix)
                add_matmul(x_mat, dcol.transpose(0, 2, 1), self.blobs[0].diff.reshape(G, c // G, -1))
            if propagate_down[i]:
                dx = xp.matmul(w, dcol).reshape(c, n, -1)
                b.diff.reshape(n, c, -1)[...] = dx.transpose(1, 0, 2)


@register_layer("Im2col")
class Im2colLayer(Layer):
    """Caffe's Im2col layer: the column matrix itself, as (N, C*prod(kernel), *out)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.geo = _ConvGeometry(self, bottom[0])

    def reshape(self, bottom, top):
        g = self.geo
        self.num, self.in_spatial = g.split(self, bottom[0])
        self.out_spatial = out_shape(self.in_spatial, g.kernel, g.pad, g.stride, g.dilation)
        if any(o <= 0 for o in self.out_spatial):
            raise self.error("kernel %s with pad %s and stride %s gives an empty output for bottom %s"
                             % (g.kernel, g.pad, g.stride, _shape_str(bottom[0].shape)))
        top[0].reshape(tuple(bottom[0].shape[:g.channel_axis]) + (g.channels * g.kernel_count,)
                       + self.out_spatial)

    def forward(self, bottom, top):
        g = self.geo
        rows = g.channels * g.kernel_count
        col = im2col(bottom[0].data.reshape((self.num, g.channels) + self.in_spatial),
                     g.kernel, g.pad, g.stride, g.dilation)
        top[0].data.reshape(self.num, rows, -1)[...] = col.reshape(rows, self.num, -1).transpose(1, 0, 2)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp_of(top[0])
        g = self.geo
        rows = g.channels * g.kernel_count
        col = xp.ascontiguousarray(top[0].diff.reshape(self.num, rows, -1).transpose(1, 0, 2))
        shape = (self.num, g.channels) + self.in_spatial
        col2im(col.reshape(rows, -1), shape, g.kernel, g.pad, g.stride, g.dilation,
               out=bottom[0].diff.reshape(shape))


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

@register_layer("Pooling")
class PoolingLayer(Layer):
    """MAX, AVE and STOCHASTIC pooling over 2-D windows, as Caffe sizes them.

    Output size rounds up (CEIL, or FLOOR by round_mode); with padding the
    last window must start inside the padded input. MAX picks the first
    maximum of a window (row-major) and may output that index as a second
    top; AVE divides by the window size counted up to the padded border;
    STOCHASTIC samples an element with probability proportional to its value
    in TRAIN and outputs the probability-weighted average in TEST (Caffe
    only has it on the GPU; here it runs everywhere, with exact gradients).
    """

    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        P = caffe_pb2.PoolingParameter
        p = self.layer_param.pooling_param
        self.method = p.pool
        if len(top) > 1 and self.method != P.MAX:
            raise self.error("only MAX pooling has a second top (the argmax mask)")
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("with global_pooling: true the kernel size cannot be given")
        else:
            if p.HasField("kernel_size") == (p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("give the kernel as kernel_size OR kernel_h and kernel_w, not both or none")
            if not p.HasField("kernel_size") and not (p.HasField("kernel_h") and p.HasField("kernel_w")):
                raise self.error("for non-square kernels both kernel_h and kernel_w are required")
        if p.HasField("pad") and (p.HasField("pad_h") or p.HasField("pad_w")):
            raise self.error("give pad OR pad_h and pad_w, not both")
        if p.HasField("pad_h") != p.HasField("pad_w"):
            raise self.error("pad_h and pad_w must be given together")
        if p.HasField("stride") and (p.HasField("stride_h") or p.HasField("stride_w")):
            raise self.error("give stride OR stride_h and stride_w, not both")
        if p.HasField("stride_h") != p.HasField("stride_w"):
            raise self.error("stride_h and stride_w must be given together")
        self.pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
        if not self.global_pooling:
            self.kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size,) * 2
            if min(self.kernel) <= 0:
                raise self.error("kernel size must be positive, got %s" % (self.kernel,))
        elif any(self.pad) or self.stride != (1, 1):
            raise self.error("with global_pooling: true only pad 0 and stride 1 are allowed")
        if min(self.stride) <= 0:
            raise self.error("stride must be positive, got %s" % (self.stride,))
        if any(self.pad):
            if self.method not in (P.MAX, P.AVE):
                raise self.error("padding is implemented only for MAX and AVE pooling")
            if not self.global_pooling and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
                raise self.error("pad %s must be smaller than the kernel %s" % (self.pad, self.kernel))
        self.ceil = p.round_mode == P.CEIL
        self.P = P
        self.TRAIN = caffe_pb2.TRAIN
        # Whether MAX forward records each window's winner for backward: not in a TEST
        # net, nor where the Net never runs this layer backward (it sets this False);
        # a backward call finds the winners itself and turns it back on.
        self.need_backward = self.phase == caffe_pb2.TRAIN
        self._key = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error("input must have 4 axes (num, channels, height, width), got shape %s"
                             % _shape_str(bottom[0].shape))
        n, c, h, w = bottom[0].shape
        if self.global_pooling:
            self.kernel = (h, w)
        out = []
        for size, k, p, s in zip((h, w), self.kernel, self.pad, self.stride):
            span = size + 2 * p - k
            o = (-(-span // s) if self.ceil else span // s) + 1
            if p and (o - 1) * s >= size + p:
                o -= 1  # the last window must start inside the image or its top/left pad
            if o <= 0:
                raise self.error("kernel %s larger than the padded input %s" % (self.kernel, (h, w)))
            out.append(o)
        oh, ow = out
        for t in top:
            t.reshape(n, c, oh, ow)
        key = bottom[0].shape
        if key != self._key:
            self._key = key
            self._build_geometry(bottom[0].xp, n, c, h, w, oh, ow)

    def _build_geometry(self, xp, n, c, h, w, oh, ow):
        """Padded-buffer size, Caffe's divisors and window-to-input index tables."""
        (kh, kw), (ph, pw), (sh, sw) = self.kernel, self.pad, self.stride
        self.out_hw = (oh, ow)
        self.buf_hw = (max(h + 2 * ph, (oh - 1) * sh + kh), max(w + 2 * pw, (ow - 1) * sw + kw))
        self._buf = None
        self._dbuf = None
        # Rows/cols of each window element in the unpadded input: (O, K).
        rows = (np.arange(oh) * sh - ph)[:, None] + np.arange(kh)[None, :]
        cols = (np.arange(ow) * sw - pw)[:, None] + np.arange(kw)[None, :]
        valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[None, :, None, :]
        self._valid = xp.asarray(valid.reshape(oh, ow, kh * kw))
        # Flat index h*W+w of each window element (clipped where invalid; never chosen then).
        flat = np.clip(rows, 0, h - 1)[:, None, :, None] * w + np.clip(cols, 0, w - 1)[None, :, None, :]
        self._flat = xp.asarray(flat.reshape(-1).astype(np.int64))
        self._window_base = xp.asarray((np.arange(oh * ow, dtype=np.int64) * (kh * kw)).reshape(oh, ow))
        self._plane = xp.asarray((np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1))
        # AVE divisor: window clipped to the padded border, padding included.
        hs = np.minimum(np.arange(oh) * sh - ph + kh, h + ph) - (np.arange(oh) * sh - ph)
        ws = np.minimum(np.arange(ow) * sw - pw + kw, w + pw) - (np.arange(ow) * sw - pw)
        self._divisor = xp.asarray(np.outer(hs, ws).astype(np.float32))
        self.disjoint = sh >= kh and sw >= kw
        # MAX windows that tile the input exactly (no pad, no overlap, no gap, no
        # overhang): the input reshapes to (N, C, OH, KH, OW, KW); see _tiled_max_forward.
        self.tiled = (self.method == self.P.MAX and not any(self.pad) and oh * kh == h and ow * kw == w
                      and (oh == 1 or sh == kh) and (ow == 1 or sw == kw))
        self._tiled_bufs = {}
        self._argmax = None
        self._has_winners = False

    def _padded(self, x, fill_value):
        """``x`` inside a border of ``fill_value`` wide enough for every window (or ``x`` itself)."""
        n, c, h, w = x.shape
        (ph, pw), (hb, wb) = self.pad, self.buf_hw
        if (hb, wb) == (h, w):
            return x
        if self._buf is None or self._buf_fill != fill_value or self._buf.dtype != x.dtype:
            self._buf = get_array_module(x).full((n, c, hb, wb), fill_value, dtype=x.dtype)
            self._buf_fill = fill_value
        self._buf[:, :, ph:ph + h, pw:pw + w] = x
        return self._buf

    def _at_offset(self, a, i, j):
        """Element (i, j) of every window: a strided (N, C, OH, OW) view of the padded array."""
        (sh, sw), (oh, ow) = self.stride, self.out_hw
        return a[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def _offsets(self):
        kh, kw = self.kernel
        return [(i, j) for i in range(kh) for j in range(kw)]

    def _windows(self, x, fill_value):
        """A (N, C, OH, OW, KH*KW) copy of every window (STOCHASTIC needs them all at once)."""
        src = self._padded(x, fill_value)
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        s = src.strides
        view = strided_view(src, src.shape[:2] + (oh, ow, kh, kw),
                            (s[0], s[1], sh * s[2], sw * s[3], s[2], s[3]))
        return view.reshape(src.shape[:2] + (oh, ow, kh * kw))

    def _scatter_windows(self, xp, grad_at, bottom_diff):
        """Sum ``grad_at(k)`` (the gradient reaching window element k) back onto the input."""
        n, c, h, w = bottom_diff.shape
        (ph, pw), (hb, wb) = self.pad, self.buf_hw
        if self._dbuf is None or self._dbuf.dtype != bottom_diff.dtype:
            self._dbuf = xp.empty((n, c, hb, wb), dtype=bottom_diff.dtype)
        acc = self._dbuf
        acc[...] = 0
        for k, (i, j) in enumerate(self._offsets()):
            self._at_offset(acc, i, j)[...] += grad_at(k)
        bottom_diff[...] = acc[:, :, ph:ph + h, pw:pw + w]

    def _scatter_separable(self, xp, g, bottom_diff):
        """Add ``g`` (one value per window) onto every element of its window: the adjoint of
        ``_separable``'s sum, first spread over the KH rows, then over the KW columns."""
        n, c, h, w = bottom_diff.shape
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        (ph, pw), (hb, wb) = self.pad, self.buf_hw
        rows = _scratch(g, 0, (n, c, hb, ow))
        rows[...] = 0
        for i in range(kh):
            rows[:, :, i:i + sh * (oh - 1) + 1:sh] += g
        if self._dbuf is None or self._dbuf.dtype != bottom_diff.dtype:
            self._dbuf = xp.empty((n, c, hb, wb), dtype=bottom_diff.dtype)
        acc = self._dbuf
        acc[...] = 0
        for j in range(kw):
            acc[:, :, :, j:j + sw * (ow - 1) + 1:sw] += rows
        bottom_diff[...] = acc[:, :, ph:ph + h, pw:pw + w]

    def _scatter_index(self, xp, index, values, bottom_diff):
        """bottom_diff[index] += values over flat input indices (MAX and STOCHASTIC TRAIN)."""
        if self.disjoint:
            flat = bottom_diff.reshape(-1)
            flat[...] = 0
            flat[index.reshape(-1)] = values.reshape(-1)
        else:
            summed = xp.bincount(index.reshape(-1), weights=values.reshape(-1), minlength=bottom_diff.size)
            bottom_diff.reshape(-1)[...] = summed

    def _tiled(self, xp, name, shape, dtype):
        """A work array for the tiled MAX path, kept until the bottom shape changes."""
        buf = self._tiled_bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._tiled_bufs[name] = xp.empty(shape, dtype=dtype)
        return buf

    def _tiled_max_forward(self, xp, x, y, mask=None):
        """MAX pooling over windows that tile ``x`` exactly: no padding copy, no index gather.

        One transposing copy puts each window offset k = i * KW + j in a contiguous
        plane, so the comparisons run over long contiguous rows (strided views of
        ``x`` are several times slower). The offsets are walked in row-major order as
        in the general path: an offset strictly larger than the best so far becomes
        the winner, so ties keep the first maximum in row-major order (Caffe's rule).
        ``arg`` (small integers) keeps each window's winning offset for backward;
        the other arrays are scratch, used a few images at a time (passes of at
        most ~_PASS_BYTES of planes).
        """
        n, c, h, w = x.shape
        (kh, kw), (oh, ow) = self.kernel, self.out_hw
        arg_all = self._tiled(xp, "arg", (n, c, oh, ow), np.int8 if kh * kw <= 127 else np.int32)
        passes = max(1, -(-x.nbytes // _PASS_BYTES))
        per_pass = -(-n // passes)
        for lo in range(0, n, per_pass):
            xs = x[lo:lo + per_pass]
            ns = xs.shape[0]
            planes = _scratch(x, 0, (kh * kw, ns, c, oh, ow))
            planes.reshape(kh, kw, ns, c, oh, ow)[...] = xs.reshape(ns, c, oh, kh, ow, kw).transpose(3, 5, 0, 1, 2, 4)
            arg, ys = arg_all[lo:lo + ns], y[lo:lo + ns]
            step = _scratch(x, 1, arg.shape, arg.dtype)
            better = _scratch(x, 2, arg.shape, bool)
            ys[...] = planes[0]
            arg[...] = 0
            for k in range(1, kh * kw):  # k only grows, so max(arg, k * better) is the latest winner
                xp.greater(planes[k], ys, out=better)
                xp.maximum(ys, planes[k], out=ys)
                xp.multiply(better, arg.dtype.type(k), out=step)
                xp.maximum(arg, step, out=arg)
        arg = arg_all
        if mask is not None:  # Caffe's mask: flat index h * W + w of the chosen element
            offset = xp.asarray(np.array([i * w + j for i in range(kh) for j in range(kw)], dtype=np.int64))
            corner = (np.arange(oh) * (kh * w)).reshape(oh, 1) + np.arange(ow) * kw
            mask[...] = xp.asarray(corner) + offset.take(arg)

    def _separable(self, xp, reduce, src, y):
        """y = ``reduce`` (maximum or add) over every window of ``src`` (padded), one axis at a time.

        A window's reduction is the reduction of its rows' reductions: first over
        the KW columns of every padded row at each output column, (N, C, Hb, OW),
        then over KH of those rows: KW - 1 + KH - 1 passes instead of KH * KW - 1.
        """
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        rows = _scratch(src, 0, src.shape[:3] + (ow,))
        _fold(reduce, [src[:, :, :, j:j + sw * (ow - 1) + 1:sw] for j in range(kw)], rows)
        _fold(reduce, [rows[:, :, i:i + sh * (oh - 1) + 1:sh] for i in range(kh)], y)

    def _first_winner(self, xp, src, y):
        """Each window's offset k (row-major) of its first element equal to its max ``y``.

        That is Caffe's choice: it walks a window in row-major order and takes a
        value only when strictly larger than the best so far. Branch-free and in
        any order: ``best`` keeps the largest K - k over the offsets that match,
        so K - best is the smallest matching k.
        """
        K = self.kernel[0] * self.kernel[1]
        small = np.int8 if K < 127 else np.int32
        best = _scratch(y, 1, y.shape, small)
        same = _scratch(y, 2, y.shape, bool)
        step = _scratch(y, 3, y.shape, small)
        best[...] = 1   # where nothing matches (a window of NaNs only): the last offset
        for k, (i, j) in enumerate(self._offsets()):
            xp.equal(self._at_offset(src, i, j), y, out=same)
            xp.multiply(same, small(K - k), out=step)
            xp.maximum(best, step, out=best)
        arg = _scratch(y, 4, y.shape, np.int32)
        xp.subtract(K, best, out=arg)
        return arg

    def _max_forward(self, xp, x, y, mask=None):
        """MAX into ``y``; with ``need_backward`` (or a mask top) each window's winner is kept."""
        need = self._has_winners = self.need_backward or mask is not None
        if self.tiled and need:
            self._tiled_max_forward(xp, x, y, mask)
            return
        src = self._padded(x, -np.inf)
        self._separable(xp, xp.fmax, src, y)   # fmax: a NaN never wins, as in Caffe's '>' test
        self._argmax = None
        if need:
            self._set_argmax(xp, self._first_winner(xp, src, y), mask)

    def _tiled_max_backward(self, xp, dy, bottom_diff):
        """Each window's gradient goes to its winning offset, zero to the others: one product per offset."""
        kh, kw = self.kernel
        n, c, oh, ow = dy.shape
        arg = self._tiled_bufs["arg"]
        mask = _scratch(dy, 0, arg.shape, bool)
        dx = bottom_diff.reshape(n, c, oh, kh, ow, kw)
        for k in range(kh * kw):
            xp.equal(arg, k, out=mask)
            xp.multiply(dy, mask, out=dx[:, :, :, k // kw, :, k % kw])

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = bottom[0].data
        P = self.P
        if self.method == P.MAX:
            self._max_forward(xp, x, top[0].data, top[1].data if len(top) > 1 else None)
        elif self.method == P.AVE:
            self._separable(xp, xp.add, self._padded(x, 0.0), top[0].data)
            top[0].data /= self._divisor
        elif self.method == P.STOCHASTIC:
            win = self._windows(x, 0.0)
            if self.phase == self.TRAIN:  # sample one element per window
                cums = xp.cumsum(win, axis=-1)
                u = xp.asarray(_rng_uniform(cums.shape[:-1]))
                thresh = (u * cums[..., -1])[..., None]
                arg = ((cums >= thresh) & self._valid).argmax(axis=-1)[..., None]
                top[0].data[...] = xp.take_along_axis(win, arg, axis=-1)[..., 0]
                self._set_argmax(xp, arg[..., 0], top[1].data if len(top) > 1 else None)
            else:  # TEST: sum(x^2) / sum(x), the expectation of the TRAIN sample
                self._win = win
                self._sum = FLT_MIN + win.sum(axis=-1)
                top[0].data[...] = (win * win).sum(axis=-1) / self._sum
        else:
            raise self.error("unknown pooling method %d" % self.method)

    def _set_argmax(self, xp, arg, mask=None):
        """Remember the chosen input element of each window (Caffe's mask, h * W + w)."""
        flat = self._flat[self._window_base + arg]
        self._argmax = flat + self._plane
        if mask is not None:
            mask[...] = flat

    def _find_winners(self, xp, x):
        """Backward after a forward that kept no winners: find them again (the bottom data is
        the same; the top may have been changed in place since, so it is not touched)."""
        self.need_backward = True
        self._max_forward(xp, x, _scratch(x, 5, (x.shape[0], x.shape[1]) + self.out_hw))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp_of(top[0])
        dy = top[0].diff
        P = self.P
        if self.method == P.MAX and not self._has_winners:
            self._find_winners(xp, bottom[0].data)
        if self.method == P.MAX and self.tiled:
            self._tiled_max_backward(xp, dy, bottom[0].diff)
            return
        if self.method == P.MAX or (self.method == P.STOCHASTIC and self.phase == self.TRAIN):
            self._scatter_index(xp, self._argmax, dy, bottom[0].diff)
            return
        if self.method == P.AVE:
            g = _scratch(dy, 1, dy.shape)
            xp.divide(dy, self._divisor, out=g)
            self._scatter_separable(xp, g, bottom[0].diff)
        else:  # STOCHASTIC TEST: d/dx_i [sum x^2 / sum x] = (2 x_i - y) / sum x
            y = top[0].data
            dwin = (dy / self._sum)[..., None] * (2 * self._win - y[..., None])
            self._scatter_windows(xp, lambda k: dwin[..., k], bottom[0].diff)


def _rng_uniform(shape):
    from solvers.rng import get_rng
    return get_rng().random(size=shape, dtype=np.float32)


# ---------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------

@register_layer("LRN")
class LRNLayer(Layer):
    """Local response normalisation, y = x * scale^-beta.

    ACROSS_CHANNELS: scale = k + alpha/n * (sum of x^2 over n neighbouring
    channels). WITHIN_CHANNEL: scale = 1 + alpha/n^2 * (sum of x^2 over an
    n x n spatial neighbourhood, zero-padded) — Caffe builds this one from
    Power and AVE Pooling layers, which is what these formulas reproduce.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        p = self.layer_param.lrn_param
        self.size = p.local_size
        if self.size % 2 != 1:
            raise self.error("local_size must be odd, got %d" % self.size)
        self.alpha, self.beta, self.k = p.alpha, p.beta, p.k
        self.across = p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS
        self.pre_pad = (self.size - 1) // 2

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error("input must have 4 axes (num, channels, height, width), got shape %s"
                             % _shape_str(bottom[0].shape))
        top[0].reshape_like(bottom[0])

    def _window_sum(self, xp, a):
        """Sum of ``a`` over each element's neighbourhood (zero outside)."""
        n, c, h, w = a.shape
        r = self.pre_pad
        if self.across:
            padded = xp.zeros((n, c + 2 * r, h, w), dtype=a.dtype)
            padded[:, r:r + c] = a
            out = padded[:, 0:c].copy()
            for i in range(1, self.size):
                out += padded[:, i:i + c]
            return out
        padded = xp.zeros((n, c, h + 2 * r, w + 2 * r), dtype=a.dtype)
        padded[:, :, r:r + h, r:r + w] = a
        rows = padded[:, :, 0:h].copy()
        for i in range(1, self.size):
            rows += padded[:, :, i:i + h]
        out = rows[..., 0:w].copy()
        for j in range(1, self.size):
            out += rows[..., j:j + w]
        return out

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = bottom[0].data
        if not self.across:
            box = self._window_sum(xp, x * x)
            self.scale = 1.0 + (self.alpha / (self.size * self.size)) * box
            self.power = self.scale ** -self.beta
            top[0].data[...] = x * self.power
            return
        # scale = k + alpha/n * (sum of x^2 over the channel window), in kept buffers
        # (backward reads scale and scale^-beta); the squares sit in a zero-bordered copy.
        self.scale = self._kept(x, "scale", x.shape)
        self._channel_window_sum(xp, xp.multiply(x, x, out=self._padded_inner(x)), self.scale)
        self.scale *= self.alpha / self.size
        self.scale += self.k
        self.power = self._kept(x, "power", x.shape)
        self._pow_neg_beta(xp, self.scale, self.power)
        xp.multiply(x, self.power, out=top[0].data)

    def _kept(self, like, name, shape):
        """A buffer of this layer kept across calls (reallocated when the shape changes)."""
        bufs = self.__dict__.setdefault("_bufs", {})
        buf = bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != like.dtype:
            buf = bufs[name] = get_array_module(like).zeros(tuple(shape), dtype=like.dtype)
        return buf

    def _padded_inner(self, x):
        """The interior (N, C, H, W) of a kept (N, C + 2r, H, W) array whose border stays zero."""
        n, c, h, w = x.shape
        r = self.pre_pad
        return self._kept(x, "padded", (n, c + 2 * r, h, w))[:, r:r + c]

    def _channel_window_sum(self, xp, inner, out):
        """out = the sum over each channel's window of what ``inner`` holds (zero beyond the ends)."""
        c = out.shape[1]
        padded = self._bufs["padded"]
        out[...] = padded[:, 0:c]
        for i in range(1, self.size):
            out += padded[:, i:i + c]

    def _pow_neg_beta(self, xp, scale, out):
        """scale ** -beta; AlexNet's and GoogLeNet's beta 0.75 as 1 / (sqrt(s) * sqrt(sqrt(s))),
        several times faster than a general power."""
        if self.beta == 0.75:
            root = xp.sqrt(scale, out=out)
            quarter = xp.sqrt(root, out=scratch_like(root, 0))
            xp.multiply(root, quarter, out=out)
            xp.reciprocal(out, out=out)
        else:
            xp.power(scale, -self.beta, out=out)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp_of(top[0])
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        if not self.across:
            n_window = self.size * self.size
            acc = self._window_sum(xp, dy * y / self.scale)
            bottom[0].diff[...] = dy * self.power - (2.0 * self.alpha * self.beta / n_window) * x * acc
            return
        # dx = dy * scale^-beta - (2 alpha beta / n) * x * (window sum of dy * y / scale)
        inner = self._padded_inner(x)
        xp.multiply(dy, y, out=inner)
        inner /= self.scale
        acc = scratch_like(x, 1)
        self._channel_window_sum(xp, inner, acc)
        acc *= x
        acc *= 2.0 * self.alpha * self.beta / self.size
        dx = bottom[0].diff
        xp.multiply(dy, self.power, out=dx)   # dy is read for the last time: dx may share its buffer
        dx -= acc


def scratch_like(a, slot):
    return _scratch(a, slot, a.shape)


# ---------------------------------------------------------------------------
# SPP
# ---------------------------------------------------------------------------

@register_layer("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins, all flattened and joined.

    With pyramid_height 1 the top is the single (N, C, 1, 1) pooling output,
    as in Caffe; otherwise (N, C * sum of bins).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.height = self.layer_param.spp_param.pyramid_height
        if self.height <= 0:
            raise self.error("spp_param.pyramid_height must be positive")
        self._key = None

    def _pooling_param(self, level, h, w):
        from netspec import caffe_pb2
        lp = caffe_pb2.LayerParameter(name="%s_pool%d" % (self.name, level), type="Pooling",
                                      phase=self.phase)
        bins = 2 ** level
        pp = lp.pooling_param
        kh, kw = -(-h // bins), -(-w // bins)
        pp.kernel_h, pp.kernel_w = kh, kw
        pp.stride_h, pp.stride_w = kh, kw
        pp.pad_h, pp.pad_w = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        pp.pool = self.layer_param.spp_param.pool
        return lp

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error("input must have 4 axes (num, channels, height, width), got shape %s"
                             % _shape_str(bottom[0].shape))
        n, c, h, w = bottom[0].shape
        if bottom[0].shape != self._key:
            self._key = bottom[0].shape
            self.pools = [PoolingLayer(self._pooling_param(i, h, w)) for i in range(self.height)]
            self.outs = [Blob() for _ in self.pools]
            self.scratch = Blob(bottom[0].shape)
            for pool, out in zip(self.pools, self.outs):
                pool.setup(bottom, [out])
        if self.height == 1:
            self.pools[0].reshape(bottom, top)
            return
        for pool, out in zip(self.pools, self.outs):
            pool.reshape(bottom, [out])
        self.widths = [out.count // n for out in self.outs]
        top[0].reshape(n, sum(self.widths))

    def forward(self, bottom, top):
        if self.height == 1:
            self.pools[0].forward(bottom, top)
            return
        n = bottom[0].shape[0]
        start = 0
        for pool, out, width in zip(self.pools, self.outs, self.widths):
            pool.forward(bottom, [out])
            top[0].data[:, start:start + width] = out.data.reshape(n, width)
            start += width

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.height == 1:
            self.pools[0].backward(top, propagate_down, bottom)
            return
        start = 0
        scratch = self.scratch
        for level, (pool, out, width) in enumerate(zip(self.pools, self.outs, self.widths)):
            out.diff[...] = top[0].diff[:, start:start + width].reshape(out.shape)
            start += width
            target = bottom[0] if level == 0 else scratch
            pool.backward([out], [True], [target])
            if level:
                bottom[0].diff += scratch.diff


# ---------------------------------------------------------------------------
# Crop
# ---------------------------------------------------------------------------

@register_layer("Crop")
class CropLayer(Layer):
    """Crop bottom[0] to bottom[1]'s shape on the axes from ``axis`` on, at ``offset``."""

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        p = self.layer_param.crop_param
        a, b = bottom[0], bottom[1]
        if a.num_axes != b.num_axes:
            raise self.error("bottoms must have the same number of axes: %s vs %s"
                             % (_shape_str(a.shape), _shape_str(b.shape)))
        axis = a.canonical_axis(p.axis)
        offsets = list(p.offset)
        if len(offsets) > 1 and axis + len(offsets) != a.num_axes:
            raise self.error("crop_param gives %d offsets; need 1 or one per axis from %d on (%d)"
                             % (len(offsets), axis, a.num_axes - axis))
        shape, slices = [], []
        for i in range(a.num_axes):
            off, size = 0, a.shape[i]
            if i >= axis:
                off = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
                size = b.shape[i]
            if a.shape[i] - off < b.shape[i]:
                raise self.error("cannot crop axis %d: bottom[0] size %d minus offset %d is smaller than "
                                 "bottom[1] size %d (shapes %s and %s)"
                                 % (i, a.shape[i], off, b.shape[i], _shape_str(a.shape), _shape_str(b.shape)))
            shape.append(size)
            slices.append(slice(off, off + size))
        self.slices = tuple(slices)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.slices]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.slices] = top[0].diff
