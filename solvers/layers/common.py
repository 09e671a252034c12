"""Caffe's common layers: inner product, shape plumbing, normalisation, reductions.

Each class is one Caffe layer type with Caffe's semantics (BVLC
``src/caffe/layers/*_layer.cpp``): parameters are read straight from the
layer's ``*_param`` message, learnable blobs live in ``self.blobs`` in Caffe's
order, bottom diffs are overwritten and parameter diffs accumulated.
"""
import numpy as np

from solvers.blob import Blob
from solvers.fillers import fill
from solvers.gemm import add_matmul, matmul_into
from solvers.layer import Layer, register_layer
from solvers.scratch import scratch


def _prod(dims):
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _scatter_add(xp, target, index, values):
    """target[index[k]] += values[k], summing repeated indices (np.add.at)."""
    if hasattr(xp, "add") and hasattr(xp.add, "at"):
        xp.add.at(target, index, values)
    else:  # CuPy
        import cupyx
        cupyx.scatter_add(target, index, values)


def _alias(top, bottom, shape):
    """Make ``top`` a view of ``bottom``'s data with ``shape`` (again, if the bottom moved)."""
    if top.shape != tuple(shape) or top._data_buf is not bottom._data_buf:
        top.reshape(shape)
        top.share_data(bottom)


def _weight_and_bias(layer, weight_shape, p):
    """Set ``layer.blobs`` to a weight filled by ``p.weight_filler`` and, with
    ``p.bias_term``, a (num_output,) bias filled by ``p.bias_filler``; all learned."""
    w = Blob(weight_shape)
    fill(w, p.weight_filler)
    layer.blobs = [w]
    if p.bias_term:
        b = Blob((p.num_output,))
        fill(b, p.bias_filler)
        layer.blobs.append(b)
    layer.param_propagate_down = [True] * len(layer.blobs)


def _int_indices(layer, blob, n, what):
    """``blob``'s values, flattened, as int64 indices; a LayerError unless all are integers in [0, n).

    ``what`` begins the error message (the range it names is the caller's wording).
    """
    xp = layer.xp_of(blob)
    v = blob.data.ravel()
    idx = v.astype(xp.int64)
    if v.size and (bool((idx != v).any()) or int(idx.min()) < 0 or int(idx.max()) >= n):
        raise layer.error("%s; got min %g max %g" % (what, float(v.min()), float(v.max())))
    return idx


def _axis_slice(axis, start, stop):
    """The index that takes [start, stop) along ``axis`` and everything on the other axes."""
    return (slice(None),) * axis + (slice(start, stop),)


def _canonical(layer, blob, axis, what="axis"):
    n = blob.num_axes
    if not -n <= axis < max(n, 1):
        raise layer.error("%s %d is out of range for bottom of shape %s" % (what, axis, blob.shape))
    return axis + n if axis < 0 else axis


# ---------------------------------------------------------------------------
# Fully connected
# ---------------------------------------------------------------------------

@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """y = x W^T + b over the axes from ``axis`` on (W is (N, K), or (K, N) with transpose)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        if p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be set and positive")
        self.num_output = p.num_output
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = _canonical(self, bottom[0], p.axis)
        k = bottom[0].count_range(self.axis)
        _weight_and_bias(self, (k, self.num_output) if self.transpose else (self.num_output, k), p)

    def reshape(self, bottom, top):
        axis = _canonical(self, bottom[0], self.layer_param.inner_product_param.axis)
        k = bottom[0].count_range(axis)
        want = self.blobs[0].count // self.num_output
        if k != want:
            raise self.error("input size incompatible with inner product parameters: bottom %s has "
                             "%d inputs per item from axis %d, weights expect %d"
                             % (bottom[0].shape, k, axis, want))
        self.axis, self.K, self.M = axis, k, bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        w = self.blobs[0].data
        y = top[0].data.reshape(self.M, self.num_output)
        matmul_into(x, w if self.transpose else w.T, y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        w = self.blobs[0]
        if self.param_propagate_down[0]:
            x = bottom[0].data.reshape(self.M, self.K)
            add_matmul(x.T, dy, w.diff) if self.transpose else add_matmul(dy.T, x, w.diff)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            matmul_into(dy, w.data.T if self.transpose else w.data, dx)


@register_layer("Embed")
class EmbedLayer(Layer):
    """A lookup table: each integer-valued bottom entry picks a row of W (input_dim, num_output)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.embed_param
        if p.num_output <= 0 or p.input_dim <= 0:
            raise self.error("embed_param needs positive num_output and input_dim (got %d, %d)"
                             % (p.num_output, p.input_dim))
        self.num_output, self.input_dim, self.bias_term = p.num_output, p.input_dim, p.bias_term
        _weight_and_bias(self, (self.input_dim, self.num_output), p)

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, bottom):
        return _int_indices(self, bottom[0], self.input_dim,
                            "bottom values must be integers in [0, input_dim=%d)" % self.input_dim)

    def forward(self, bottom, top):
        idx = self._indices(bottom)
        y = top[0].data.reshape(-1, self.num_output)
        y[...] = self.blobs[0].data[idx]
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("cannot backpropagate to the Embed input (it holds indices); "
                             "set propagate_down: false for it")
        xp = self.xp_of(top[0])
        dy = top[0].diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            _scatter_add(xp, self.blobs[0].diff, self._indices(bottom), dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)


# ---------------------------------------------------------------------------
# Shapes and plumbing
# ---------------------------------------------------------------------------

@register_layer("Input")
class InputLayer(Layer):
    """Net inputs: tops shaped by input_param.shape (one shape for all tops, or one each)."""
    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error("input_param must give 0, 1 or %d shapes (one per top), got %d"
                             % (len(top), len(shapes)))
        for i, t in enumerate(top):
            if len(shapes):
                t.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        pass  # the user reshapes input blobs; nothing to derive

    def forward(self, bottom, top):
        pass


@register_layer("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers; constant fillers fill once, random ones refill every forward."""
    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        p = self.layer_param.dummy_data_param
        n = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, n):
            raise self.error("dummy_data_param needs 0, 1 or %d data_filler, got %d" % (n, nf))
        legacy = [p.num, p.channels, p.height, p.width]
        has_legacy = any(len(f) for f in legacy)
        if has_legacy and len(p.shape):
            raise self.error("give either shape or num/channels/height/width, not both")
        if has_legacy:
            for f, name in zip(legacy, ("num", "channels", "height", "width")):
                if len(f) not in (1, n):
                    raise self.error("dummy_data_param.%s needs 1 or %d values, got %d" % (name, n, len(f)))
            shapes = [tuple(int(f[0 if len(f) == 1 else i]) for f in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error("dummy_data_param.shape needs 1 or %d entries, got %d" % (n, len(p.shape)))
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        if nf == 0:
            const = caffe_pb2.FillerParameter(type="constant", value=0)
            self.fillers = [const] * n
        else:
            self.fillers = [p.data_filler[0 if nf == 1 else i] for i in range(n)]
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, s, f in zip(top, shapes, self.fillers):
            t.reshape(s)
            if f.type == "constant":
                fill(t, f)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, f, again in zip(top, self.fillers, self.refill):
            if again:
                fill(t, f)


@register_layer("Parameter")
class ParameterLayer(Layer):
    """Exposes one learnable blob (parameter_param.shape) as its top; top shares data and diff."""
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.blobs = [Blob(tuple(self.layer_param.parameter_param.shape.dim))]
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        top[0].share_data(self.blobs[0])
        top[0].share_diff(self.blobs[0])

    def forward(self, bottom, top):
        pass


@register_layer("Silence")
class SilenceLayer(Layer):
    """Swallows its bottoms (no tops); backward writes zero diffs."""
    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, p in zip(bottom, propagate_down):
            if p:
                b.diff[...] = 0


@register_layer("Split")
class SplitLayer(Layer):
    """Hands one blob to several consumers: tops share the bottom's data; backward sums their diffs."""
    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for i, t in enumerate(top):
            if t is bottom[0]:
                raise self.error("top %d is its bottom: Split does not work in place" % i)
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:  # re-share in case the bottom was given a new buffer
            _alias(t, bottom[0], bottom[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if len(top) == 1:
            dx[...] = top[0].diff
            return
        xp = self.xp_of(bottom[0])
        xp.add(top[0].diff, top[1].diff, out=dx)   # one pass for the usual two consumers
        for t in top[2:]:
            dx += t.diff


class _ShareLayer(Layer):
    """Base of Flatten and Reshape: top is a new view of the bottom's data.

    The top shares the bottom's data buffer (no copy forward); its diff has its
    own buffer and backward copies it into the bottom diff, so a net that
    reshapes (and reallocates) either blob never leaves a stale alias behind.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def top_shape(self, bottom):
        raise NotImplementedError

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("%s does not work in place; give the top its own name" % self.type)
        shape = self.top_shape(bottom[0])
        if _prod(shape) != bottom[0].count:
            raise self.error("output shape %s has %d entries but bottom %s has %d"
                             % (shape, _prod(shape), bottom[0].shape, bottom[0].count))
        top[0].reshape(shape)
        top[0].share_data(bottom[0])

    def forward(self, bottom, top):
        _alias(top[0], bottom[0], self.top_shape(bottom[0]))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register_layer("Flatten")
class FlattenLayer(_ShareLayer):
    """Merges axes [axis, end_axis] into one."""

    def top_shape(self, b):
        p = self.layer_param.flatten_param
        start = _canonical(self, b, p.axis, "flatten axis")
        end = _canonical(self, b, p.end_axis, "flatten end_axis")
        if end < start:
            raise self.error("end_axis %d comes before axis %d for bottom %s" % (p.end_axis, p.axis, b.shape))
        return b.shape[:start] + (b.count_range(start, end + 1),) + b.shape[end + 1:]


@register_layer("Reshape")
class ReshapeLayer(_ShareLayer):
    """Caffe's Reshape: shape dims 0 copy the bottom's dim, one -1 is inferred; axis/num_axes pick the span."""

    def top_shape(self, b):
        p = self.layer_param.reshape_param
        dims = list(p.shape.dim)
        if sum(1 for d in dims if d == -1) > 1:
            raise self.error("reshape_param.shape may hold at most one -1 (got %s)" % dims)
        if any(d < -1 for d in dims):
            raise self.error("reshape_param.shape dims must be >= -1 (got %s)" % dims)
        n = b.num_axes
        start = p.axis if p.axis >= 0 else p.axis + n + 1
        if not 0 <= start <= n:
            raise self.error("reshape_param.axis %d out of range for bottom %s" % (p.axis, b.shape))
        if p.num_axes < -1:
            raise self.error("reshape_param.num_axes must be >= -1, got %d" % p.num_axes)
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error("axis %d + num_axes %d exceed the %d axes of bottom %s"
                             % (start, p.num_axes, n, b.shape))
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= n:
                    raise self.error("shape dim %d is 0 (copy) but bottom %s has no axis %d"
                                     % (i, b.shape, start + i))
                new.append(b.shape[start + i])
            else:
                new.append(d)
        if -1 in new:
            known = _prod(d for d in new if d != -1) * _prod(b.shape[:start]) * _prod(b.shape[end:])
            if known == 0 or b.count % known:
                raise self.error("cannot infer the -1 in shape %s from bottom %s" % (dims, b.shape))
            new[new.index(-1)] = b.count // known
        return b.shape[:start] + tuple(new) + b.shape[end:]


@register_layer("Concat")
class ConcatLayer(Layer):
    """Joins bottoms along ``axis`` (legacy concat_dim honoured)."""
    min_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = _canonical(self, bottom[0], axis)
        ref = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != len(ref) or any(b.shape[j] != ref[j] for j in range(len(ref)) if j != self.axis):
                raise self.error("bottom %d has shape %s, incompatible with bottom 0 %s for concat on axis %d"
                                 % (i, b.shape, ref, self.axis))
        shape = list(ref)
        shape[self.axis] = sum(b.shape[self.axis] for b in bottom)
        top[0].reshape(tuple(shape))
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(bottom) == 1:
            return
        xp = self.xp_of(bottom[0])
        xp.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        start = 0
        for b, p in zip(bottom, propagate_down):
            n = b.shape[self.axis]
            if p:
                b.diff[...] = top[0].diff[_axis_slice(self.axis, start, start + n)]
            start += n


@register_layer("Slice")
class SliceLayer(Layer):
    """Cuts the bottom along ``axis`` at slice_point (or into equal parts); legacy slice_dim honoured."""
    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.slice_param
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        self.axis = _canonical(self, bottom[0], axis)
        dim = bottom[0].shape[self.axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(top) - 1:
                raise self.error("%d slice_point(s) need %d tops, got %d" % (len(points), len(points) + 1, len(top)))
            bounds = [0] + points + [dim]
            if any(b1 <= b0 for b0, b1 in zip(bounds, bounds[1:])):
                raise self.error("slice_point %s must increase strictly within (0, %d)" % (points, dim))
        else:
            if dim % len(top):
                raise self.error("axis %d of size %d cannot be split evenly into %d tops"
                                 % (self.axis, dim, len(top)))
            step = dim // len(top)
            bounds = [i * step for i in range(len(top) + 1)]
        self.bounds = bounds
        for t, b0, b1 in zip(top, bounds, bounds[1:]):
            shape = list(bottom[0].shape)
            shape[self.axis] = b1 - b0
            t.reshape(tuple(shape))
        if len(top) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(top) == 1:
            return
        for t, b0, b1 in zip(top, self.bounds, self.bounds[1:]):
            t.data[...] = bottom[0].data[_axis_slice(self.axis, b0, b1)]

    def backward(self, top, propagate_down, bottom):
        if len(top) == 1 or not propagate_down[0]:
            return
        for t, b0, b1 in zip(top, self.bounds, self.bounds[1:]):
            bottom[0].diff[_axis_slice(self.axis, b0, b1)] = t.diff


@register_layer("Tile")
class TileLayer(Layer):
    """Repeats the bottom ``tiles`` times along ``axis`` (whole trailing blocks, as np.tile)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.tile_param
        if p.tiles <= 0:
            raise self.error("tile_param.tiles must be positive, got %d" % p.tiles)
        self.axis = _canonical(self, bottom[0], p.axis)
        self.tiles = p.tiles
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)
        shape = list(bottom[0].shape)
        shape[self.axis] *= p.tiles
        top[0].reshape(tuple(shape))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        top[0].data.reshape(self.outer, self.tiles, self.inner)[...] = x

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            bottom[0].diff.reshape(self.outer, self.inner)[...] = dy.sum(axis=1)


@register_layer("BatchReindex")
class BatchReindexLayer(Layer):
    """top[i] = bottom[0][bottom[1][i]]: picks (and repeats) items along the first axis."""
    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.error("bottom 1 (indices) must have exactly one axis, got shape %s" % (bottom[1].shape,))
        top[0].reshape((bottom[1].shape[0],) + bottom[0].shape[1:])

    def _indices(self, bottom):
        n = bottom[0].shape[0]
        return _int_indices(self, bottom[1], n, "indices (bottom 1) must be integers in [0, %d)" % n)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self._indices(bottom)]

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to the indices (bottom 1); set propagate_down: false")
        if propagate_down[0]:
            xp = self.xp_of(bottom[0])
            bottom[0].diff[...] = 0
            _scatter_add(xp, bottom[0].diff, self._indices(bottom), top[0].diff)


@register_layer("Filter")
class FilterLayer(Layer):
    """Keeps the items (first axis) whose selector (last bottom) is non-zero, for every other bottom."""
    min_bottom = 2
    min_top = 1

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error("needs one top per filtered bottom: %d bottoms (last = selector) but %d tops"
                             % (len(bottom), len(top)))
        self.first_reshape = True

    def allow_force_backward(self, bottom_index):
        return bottom_index != len(self.layer_param.bottom) - 1

    def _select(self, bottom):
        xp = self.xp_of(bottom[-1])
        sel = bottom[-1]
        if any(d != 1 for d in sel.shape[1:]):
            raise self.error("selector (last bottom) dims after the first must be 1, got shape %s" % (sel.shape,))
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes == 0 or b.shape[0] != sel.shape[0]:
                raise self.error("bottom %d (shape %s) must have the selector's first dimension %d"
                                 % (i, b.shape, sel.shape[0]))
        self.indices = xp.nonzero(sel.data.reshape(-1))[0]

    def _reshape_tops(self, bottom, top, n):
        for b, t in zip(bottom, top):
            t.reshape((n,) + b.shape[1:])

    def reshape(self, bottom, top):
        self._select(bottom)
        # Like Caffe, the very first reshape sizes tops to the full batch (selector not read yet).
        n = bottom[0].shape[0] if self.first_reshape else int(self.indices.size)
        self.first_reshape = False
        self._reshape_tops(bottom, top, n)

    def forward(self, bottom, top):
        self._select(bottom)  # Caffe reshapes before every forward: the selection follows the data
        self._reshape_tops(bottom, top, int(self.indices.size))
        for b, t in zip(bottom, top):
            t.data[...] = b.data[self.indices]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error("cannot backpropagate to the selector (last bottom); set propagate_down: false")
        for b, t, p in zip(bottom, top, propagate_down):
            if p:
                b.diff[...] = 0
                b.diff[self.indices] = t.diff


# ---------------------------------------------------------------------------
# Element-wise and broadcasting arithmetic
# ---------------------------------------------------------------------------

@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """Element-wise PROD, SUM (with optional coeff per bottom) or MAX of equally shaped bottoms."""
    min_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        p = self.layer_param.eltwise_param
        self.op = p.operation
        self.ops = caffe_pb2.EltwiseParameter
        if len(p.coeff) and len(p.coeff) != len(bottom):
            raise self.error("eltwise_param needs one coeff per bottom (%d), got %d" % (len(bottom), len(p.coeff)))
        if len(p.coeff) and self.op != self.ops.SUM:
            raise self.error("coeff is only allowed with operation SUM")
        self.coeff = list(p.coeff) if len(p.coeff) else [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.mask = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error("bottom %d has shape %s but bottom 0 has %s; Eltwise needs equal shapes"
                                 % (i, b.shape, bottom[0].shape))
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        """Written straight into the top, one pass per bottom (the top may be bottom 0's
        blob; a top that is a later bottom is summed in a scratch first)."""
        xp = self.xp_of(bottom[0])
        y = top[0].data
        if any(top[0] is b for b in bottom[1:]):
            y = scratch(y, 0, y.shape)
        x0, x1 = bottom[0].data, bottom[1].data
        if self.op == self.ops.SUM:
            c0, c1 = self.coeff[0], self.coeff[1]
            if c0 == 1 and c1 == 1:
                xp.add(x0, x1, out=y)
            else:
                xp.multiply(x0, c0, out=y)
                self._add_scaled(xp, y, x1, c1)
            for c, b in zip(self.coeff[2:], bottom[2:]):
                self._add_scaled(xp, y, b.data, c)
        elif self.op == self.ops.PROD:
            xp.multiply(x0, x1, out=y)
            for b in bottom[2:]:
                y *= b.data
        else:  # MAX: a later bottom wins only when strictly larger (the first wins ties), as in Caffe
            if self.mask is None or self.mask.shape != y.shape:
                self.mask = xp.empty(y.shape, dtype=np.int8 if len(bottom) < 128 else np.int32)
            better = scratch(y, 1, y.shape, bool)
            step = scratch(y, 2, y.shape, self.mask.dtype)
            xp.greater(x1, x0, out=better)
            xp.maximum(x0, x1, out=y)
            xp.multiply(better, self.mask.dtype.type(1), out=self.mask)
            for i, b in enumerate(bottom[2:], 2):   # i only grows: max(mask, i * better) is the latest winner
                xp.greater(b.data, y, out=better)
                xp.maximum(y, b.data, out=y)
                xp.multiply(better, self.mask.dtype.type(i), out=step)
                xp.maximum(self.mask, step, out=self.mask)
        if y is not top[0].data:
            top[0].data[...] = y

    @staticmethod
    def _add_scaled(xp, y, x, c):
        if c == 1:
            y += x
        else:
            y += xp.multiply(x, c, out=scratch(y, 1, y.shape))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for i, (b, p) in enumerate(zip(bottom, propagate_down)):
            if not p:
                continue
            if self.op == self.ops.SUM:
                if self.coeff[i] != 1:
                    self.xp_of(b).multiply(dy, self.coeff[i], out=b.diff)
                elif b.diff is not dy:
                    b.diff[...] = dy
            elif self.op == self.ops.PROD:
                if self.stable_prod_grad:
                    others = None
                    for j, o in enumerate(bottom):
                        if j != i:
                            others = o.data.copy() if others is None else others * o.data
                    b.diff[...] = others * dy
                else:
                    b.diff[...] = top[0].data / b.data * dy
            else:
                xp = self.xp_of(b)
                won = xp.equal(self.mask, i, out=scratch(dy, 0, dy.shape, bool))
                xp.multiply(dy, won, out=b.diff)


class _AxisBroadcast(Layer):
    """Shared plumbing of Scale and Bias: a blob spanning axes [axis, axis + n) of bottom 0."""

    def _operand(self, bottom):
        """The broadcast blob: bottom 1 when given, else the learned blob."""
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def _param_shape(self, bottom, p):
        axis = _canonical(self, bottom[0], p.axis)
        if p.num_axes < -1:
            raise self.error("num_axes must be >= -1, got %d" % p.num_axes)
        end = bottom[0].num_axes if p.num_axes == -1 else axis + p.num_axes
        if end > bottom[0].num_axes:
            raise self.error("axis %d + num_axes %d exceed the axes of bottom %s" % (axis, p.num_axes, bottom[0].shape))
        return bottom[0].shape[axis:end]

    def _dims(self, bottom, operand, p):
        """(outer, dim, inner) so that bottom 0 reads as (outer, dim, inner) and operand as (dim,)."""
        axis = 0 if operand.num_axes == 0 else _canonical(self, bottom[0], p.axis)
        span = bottom[0].shape[axis:axis + operand.num_axes]
        if tuple(span) != tuple(operand.shape):
            raise self.error("operand shape %s does not match bottom %s at axes %d..%d (%s)"
                             % (operand.shape, bottom[0].shape, axis, axis + operand.num_axes - 1, span))
        return (bottom[0].count_range(0, axis), operand.count,
                bottom[0].count_range(axis + operand.num_axes))


@register_layer("Bias")
class BiasLayer(_AxisBroadcast):
    """top = bottom + bias, the bias (learned, or bottom 1) broadcast over the other axes."""
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1:
            b = Blob(self._param_shape(bottom, p))
            fill(b, p.filler)
            self.blobs = [b]
            self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        self.outer, self.dim, self.inner = self._dims(bottom, self._operand(bottom), self.layer_param.bias_param)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, self.dim, self.inner)
        y = top[0].data.reshape(self.outer, self.dim, self.inner)
        b = self._operand(bottom).data.reshape(1, self.dim, 1)
        if top[0] is bottom[0]:
            y += b
        else:
            self.xp_of(bottom[0]).add(x, b, out=y)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.outer, self.dim, self.inner)
        if len(bottom) > 1:
            if propagate_down[1]:
                bottom[1].diff.reshape(self.dim)[...] = dy.sum(axis=(0, 2))
        elif self.param_propagate_down[0]:
            self.blobs[0].diff.reshape(self.dim)[...] += dy.sum(axis=(0, 2))
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff


@register_layer("Scale")
class ScaleLayer(_AxisBroadcast):
    """top = bottom * scale (+ bias with bias_term); scale learned (default filler constant 1) or bottom 1."""
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        p = self.layer_param.scale_param
        self.blobs = []
        if len(bottom) == 1:
            s = Blob(self._param_shape(bottom, p))
            if p.HasField("filler"):
                fill(s, p.filler)
            else:
                fill(s, caffe_pb2.FillerParameter(type="constant", value=1))
            self.blobs.append(s)
        if p.bias_term:
            operand_shape = bottom[1].shape if len(bottom) > 1 else self.blobs[0].shape
            b = Blob(operand_shape)
            fill(b, p.bias_filler)
            self.blobs.append(b)
        self.param_propagate_down = [True] * len(self.blobs)
        self.bias_index = len(self.blobs) - 1 if p.bias_term else None
        # False where the Net never runs this layer backward: in place, forward then
        # keeps no copy of its input.
        self.need_backward = True

    def reshape(self, bottom, top):
        self.outer, self.dim, self.inner = self._dims(bottom, self._operand(bottom), self.layer_param.scale_param)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        shape3 = (self.outer, self.dim, self.inner)
        x = bottom[0].data.reshape(shape3)
        if top[0] is bottom[0] and self.need_backward:
            # backward needs the input that in place is overwritten: kept in a reused buffer
            saved = getattr(self, "x_saved", None)
            if saved is None or saved.shape != shape3 or saved.dtype != x.dtype:
                saved = self.x_saved = xp.empty(shape3, dtype=x.dtype)
            xp.copyto(saved, x)
        s = self._operand(bottom).data.reshape(1, self.dim, 1)
        y = top[0].data.reshape(shape3)
        xp.multiply(x, s, out=y)
        if self.bias_index is not None:
            y += self.blobs[self.bias_index].data.reshape(1, self.dim, 1)

    def backward(self, top, propagate_down, bottom):
        shape3 = (self.outer, self.dim, self.inner)
        dy = top[0].diff.reshape(shape3)
        scale = self._operand(bottom)
        if self.bias_index is not None and self.param_propagate_down[self.bias_index]:
            self.blobs[self.bias_index].diff.reshape(self.dim)[...] += dy.sum(axis=(0, 2))
        xp = self.xp_of(top[0])
        if top[0] is bottom[0]:
            if getattr(self, "x_saved", None) is None or not self.need_backward:
                self.need_backward = True   # the next forward keeps it
                raise self.error("backward of an in-place Scale whose forward kept no copy of its input "
                                 "(its net needs no backward there); run forward again, then backward")
            x = self.x_saved
        else:
            x = bottom[0].data.reshape(shape3)
        need_scale = propagate_down[1] if len(bottom) > 1 else self.param_propagate_down[0]
        if need_scale:
            dyx = xp.multiply(dy, x, out=scratch(dy, 0, shape3)).sum(axis=(0, 2))
            if len(bottom) > 1:
                scale.diff.reshape(self.dim)[...] = dyx
            else:
                scale.diff.reshape(self.dim)[...] += dyx
        if propagate_down[0]:
            xp.multiply(dy, scale.data.reshape(1, self.dim, 1), out=bottom[0].diff.reshape(shape3))


# ---------------------------------------------------------------------------
# Normalisation and reductions
# ---------------------------------------------------------------------------

@register_layer("Softmax")
class SoftmaxLayer(Layer):
    """Softmax over ``axis`` (the toolkit's one softmax, shared with SoftmaxWithLoss)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = _canonical(self, bottom[0], self.layer_param.softmax_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        from solvers.layers.loss import softmax
        softmax(bottom[0].data, self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        from solvers.layers.loss import softmax_backward
        if propagate_down[0]:
            softmax_backward(top[0].data, top[0].diff, self.axis, out=bottom[0].diff)


@register_layer("MVN")
class MVNLayer(Layer):
    """Mean (and variance) normalisation per item and channel, or per item with across_channels.

    As in Caffe the divisor is sqrt(var) + eps (eps outside the root).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.mvn_param
        b = bottom[0]
        rows = b.num if p.across_channels else b.num * b.channels
        self.shape2 = (rows, b.count // rows if rows else 0)
        if top[0] is not bottom[0]:
            top[0].reshape(b.shape)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        p = self.layer_param.mvn_param
        x = bottom[0].data.reshape(self.shape2)
        y = x - x.mean(axis=1, keepdims=True)
        if p.normalize_variance:
            self.std = xp.sqrt((y * y).mean(axis=1, keepdims=True)) + p.eps
            y /= self.std
        top[0].data.reshape(self.shape2)[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.shape2)
        dx = dy - dy.mean(axis=1, keepdims=True)
        if self.layer_param.mvn_param.normalize_variance:
            y = top[0].data.reshape(self.shape2)
            dx = (dx - y * (dy * y).mean(axis=1, keepdims=True)) / self.std
        bottom[0].diff.reshape(self.shape2)[...] = dx


@register_layer("BatchNorm")
class BatchNormLayer(Layer):
    """Normalises each channel by batch statistics (TRAIN) or stored ones (use_global_stats).

    Blobs, as Caffe: running mean sum, running variance sum, and the scale
    factor that divides both; in TRAIN forward updates them with
    moving_average_fraction (variance with the m/(m-1) correction). The
    statistics are not learned: Caffe gives them lr_mult 0 in the layer's
    LayerParameter (which the net reads), and backward leaves their diffs.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        p = self.layer_param.batch_norm_param
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else self.phase == caffe_pb2.TEST)
        self.maf = p.moving_average_fraction
        self.eps = p.eps
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        self.blobs = [Blob((self.channels,)), Blob((self.channels,)), Blob((1,))]
        for b in self.blobs:
            b.data[...] = 0
        # As Caffe, freeze the statistics in the layer's own LayerParameter (the net reads
        # lr_mult from it): missing ParamSpecs get lr_mult 0, a nonzero one is an error.
        specs = self.layer_param.param
        for j in range(3):
            if j == len(specs):
                specs.add(lr_mult=0)
            elif specs[j].lr_mult != 0:
                raise self.error("param %d has lr_mult %g: batch normalization statistics cannot be "
                                 "learned; use lr_mult: 0 (or no param) and a Scale layer for a learned "
                                 "scale/shift" % (j, specs[j].lr_mult))
        self.param_propagate_down = [False] * 3

    def reshape(self, bottom, top):
        b = bottom[0]
        c = 1 if b.num_axes == 1 else b.shape[1]
        if c != self.channels:
            raise self.error("bottom %s has %d channels, the layer was set up for %d" % (b.shape, c, self.channels))
        self.shape3 = (b.shape[0] if b.num_axes else 1, c, b.count_range(2))
        if top[0] is not bottom[0]:
            top[0].reshape(b.shape)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = bottom[0].data.reshape(self.shape3)
        if self.use_global_stats:
            sf = float(self.blobs[2].data[0])
            sf = 0.0 if sf == 0 else 1.0 / sf
            mean = sf * self.blobs[0].data
            var = sf * self.blobs[1].data
        else:
            mean = x.mean(axis=(0, 2))
            sq = scratch(x, 0, x.shape)
            xp.subtract(x, mean[None, :, None], out=sq)
            var = (xp.multiply(sq, sq, out=sq)).mean(axis=(0, 2))
            m = x.size // self.channels
            correction = m / (m - 1.0) if m > 1 else 1.0
            self.blobs[2].data[...] = self.blobs[2].data * self.maf + 1
            self.blobs[0].data[...] = mean + self.maf * self.blobs[0].data
            self.blobs[1].data[...] = correction * var + self.maf * self.blobs[1].data
        self.inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype)
        y = top[0].data.reshape(self.shape3)
        xp.subtract(x, mean.astype(x.dtype)[None, :, None], out=y)
        y *= self.inv_std[None, :, None]
        if not self.use_global_stats:   # backward reads it; an in-place successor may overwrite top
            if getattr(self, "x_norm", None) is None or self.x_norm.shape != y.shape:
                self.x_norm = xp.empty_like(y)
            xp.copyto(self.x_norm, y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.shape3)
        inv = self.inv_std[None, :, None]
        xp = self.xp_of(top[0])
        dx = bottom[0].diff.reshape(self.shape3)
        if self.use_global_stats:
            xp.multiply(dy, inv, out=dx)
            return
        y = self.x_norm
        t = scratch(dy, 0, dy.shape)
        mean_dy = dy.mean(axis=(0, 2), keepdims=True)
        mean_dyy = xp.multiply(dy, y, out=t).mean(axis=(0, 2), keepdims=True)
        xp.multiply(y, mean_dyy, out=t)
        xp.subtract(dy, t, out=t)     # dy is read for the last time here: dx may be its buffer
        t -= mean_dy
        xp.multiply(t, inv, out=dx)


@register_layer("Reduction")
class ReductionLayer(Layer):
    """Reduces all axes from ``axis`` on with SUM, ASUM, SUMSQ or MEAN, times coeff."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = _canonical(self, bottom[0], self.layer_param.reduction_param.axis)
        self.shape2 = (bottom[0].count_range(0, self.axis), bottom[0].count_range(self.axis))
        top[0].reshape(bottom[0].shape[:self.axis])

    def forward(self, bottom, top):
        from netspec import caffe_pb2
        ops = caffe_pb2.ReductionParameter
        xp = self.xp_of(bottom[0])
        p = self.layer_param.reduction_param
        x = bottom[0].data.reshape(self.shape2)
        if p.operation == ops.SUM:
            r = x.sum(axis=1)
        elif p.operation == ops.ASUM:
            r = xp.abs(x).sum(axis=1)
        elif p.operation == ops.SUMSQ:
            r = (x * x).sum(axis=1)
        elif p.operation == ops.MEAN:
            r = x.mean(axis=1) if self.shape2[1] else x.sum(axis=1)
        else:
            raise self.error("unknown reduction operation %d" % p.operation)
        top[0].data.reshape(self.shape2[0])[...] = r * p.coeff if p.coeff != 1 else r

    def backward(self, top, propagate_down, bottom):
        from netspec import caffe_pb2
        ops = caffe_pb2.ReductionParameter
        if not propagate_down[0]:
            return
        xp = self.xp_of(bottom[0])
        p = self.layer_param.reduction_param
        g = top[0].diff.reshape(self.shape2[0], 1) * p.coeff
        x = bottom[0].data.reshape(self.shape2)
        dx = bottom[0].diff.reshape(self.shape2)
        if p.operation == ops.SUM:
            dx[...] = g
        elif p.operation == ops.ASUM:
            dx[...] = xp.sign(x) * g
        elif p.operation == ops.SUMSQ:
            dx[...] = 2 * x * g
        else:
            dx[...] = g / max(self.shape2[1], 1)


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (and/or values) of the top_k largest entries; equal values: the later index first, as Caffe."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.top_k = p.top_k
        self.out_max_val = p.out_max_val
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error("argmax_param.top_k must be >= 1, got %d" % self.top_k)

    def reshape(self, bottom, top):
        b = bottom[0]
        if self.has_axis:
            self.axis = _canonical(self, b, self.layer_param.argmax_param.axis)
            if self.top_k > b.shape[self.axis]:
                raise self.error("top_k %d exceeds axis %d of size %d" % (self.top_k, self.axis, b.shape[self.axis]))
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            if self.top_k > b.count_range(1):
                raise self.error("top_k %d exceeds the %d entries per item of bottom %s"
                                 % (self.top_k, b.count_range(1), b.shape))
            shape = [1] * max(b.num_axes, 3)
            shape[0] = b.shape[0]
            shape[1] = 2 if self.out_max_val else 1
            shape[2] = self.top_k
        top[0].reshape(tuple(shape))

    def _topk(self, xp, a):
        """Indices and values of the top_k along the last axis; ties prefer the larger index."""
        n = a.shape[-1]
        order = xp.argsort(-a[..., ::-1], axis=-1, kind="stable")[..., :self.top_k]
        idx = (n - 1) - order
        return idx, xp.take_along_axis(a, idx, axis=-1)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = bottom[0].data
        if self.has_axis:
            idx, val = self._topk(xp, xp.moveaxis(x, self.axis, -1))
            out = val if self.out_max_val else idx.astype(x.dtype)
            top[0].data[...] = xp.moveaxis(out, -1, self.axis)
        else:
            n = x.shape[0]
            idx, val = self._topk(xp, x.reshape(n, -1))
            y = top[0].data.reshape(n, -1, self.top_k)
            y[:, 0, :] = idx
            if self.out_max_val:
                y[:, 1, :] = val

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("ArgMax has no gradient; set propagate_down: false")
