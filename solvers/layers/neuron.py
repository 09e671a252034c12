"""Caffe's neuron layers: one bottom, one top of the same shape, elementwise.

Every layer here may run in place (top is bottom) except AbsVal, which Caffe
refuses. A layer whose gradient needs its input ``x`` keeps a copy of it when
it runs in place, because the forward pass overwrites ``x`` with ``y``.
"""
import math

import numpy as np

from solvers.layer import Layer, register_layer
from solvers.scratch import scratch


class NeuronLayer(Layer):
    """Shared shape rule and in-place bookkeeping of the neuron family."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape_like(bottom[0])

    def keep_input(self, bottom, top):
        """Return x, first saving a copy of it when the layer runs in place."""
        x = bottom[0].data
        if top[0] is bottom[0]:
            xp = self.xp_of(bottom[0])
            saved = getattr(self, "_saved_x", None)
            if saved is None or saved.shape != x.shape:
                saved = self._saved_x = xp.empty_like(x)
            xp.copyto(saved, x)
            self._input_copy = saved
        else:
            self._input_copy = None
        return x

    def saved_input(self, bottom):
        """x as it was in forward (the copy when in place)."""
        return self._input_copy if getattr(self, "_input_copy", None) is not None else bottom[0].data

    def write_diff(self, top, bottom, dydx):
        """bottom.diff = top.diff * dy/dx (safe when the two diffs are one buffer)."""
        self.xp_of(bottom[0]).multiply(top[0].diff, dydx, out=bottom[0].diff)


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0).

    In place, backward tests the sign of y instead of x; with a
    non-negative slope the two agree, so no copy is needed (as in Caffe).
    """

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x, y = bottom[0].data, top[0].data
        slope = self.layer_param.relu_param.negative_slope
        if slope == 0:
            xp.maximum(x, 0, out=y)
        else:
            xp.add(xp.maximum(x, 0), slope * xp.minimum(x, 0), out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].data
        slope = self.layer_param.relu_param.negative_slope
        if slope == 0:
            positive = scratch(x, 0, x.shape, bool)   # no data-sized temporary per call
            self.write_diff(top, bottom, self.xp_of(bottom[0]).greater(x, 0, out=positive))
        else:
            xp = self.xp_of(bottom[0])
            self.write_diff(top, bottom, xp.where(x > 0, 1.0, slope).astype(x.dtype))


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 x) + 0.5 like Caffe (no overflow)."""

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        y = top[0].data
        xp.multiply(bottom[0].data, 0.5, out=y)
        xp.tanh(y, out=y)
        y *= 0.5
        y += 0.5

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            self.write_diff(top, bottom, y * (1 - y))


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    """y = tanh(x); dy/dx = 1 - y^2 (needs only y, so in place is free)."""

    def forward(self, bottom, top):
        self.xp_of(bottom[0]).tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            self.write_diff(top, bottom, 1 - y * y)


@register_layer("AbsVal")
class AbsValLayer(NeuronLayer):
    """y = |x|; dy/dx = sign(x). Caffe forbids running it in place."""

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("AbsVal cannot run in place (Caffe refuses it): give its top a "
                             "name different from its bottom %r" % self.layer_param.bottom[0])

    def forward(self, bottom, top):
        self.xp_of(bottom[0]).abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.write_diff(top, bottom, self.xp_of(bottom[0]).sign(bottom[0].data))


@register_layer("BNLL")
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood, y = log(1 + exp(x)), written so exp never overflows."""

    EXP_CLAMP = 50.0  # Caffe's kBNLL_THRESHOLD for the gradient's exp

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = self.keep_input(bottom, top)
        soft = xp.log1p(xp.exp(-xp.abs(x)))
        xp.add(xp.maximum(x, 0), soft, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp_of(bottom[0])
            e = xp.exp(xp.minimum(self.saved_input(bottom), self.EXP_CLAMP))
            self.write_diff(top, bottom, e / (e + 1))


@register_layer("Clip")
class ClipLayer(NeuronLayer):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max."""

    def forward(self, bottom, top):
        p = self.layer_param.clip_param
        x = self.keep_input(bottom, top)
        self.xp_of(bottom[0]).clip(x, p.min, p.max, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            p = self.layer_param.clip_param
            x = self.saved_input(bottom)
            self.write_diff(top, bottom, (x >= p.min) & (x <= p.max))


@register_layer("ELU")
class ELULayer(NeuronLayer):
    """y = x for x > 0, alpha (exp(x) - 1) otherwise; dy/dx = 1 or y + alpha."""

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        alpha = self.layer_param.elu_param.alpha
        x = self.keep_input(bottom, top)
        neg = alpha * (xp.exp(xp.minimum(x, 0)) - 1)
        xp.add(xp.maximum(x, 0), neg, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp_of(bottom[0])
            alpha = self.layer_param.elu_param.alpha
            y = top[0].data
            self.write_diff(top, bottom, xp.where(self.saved_input(bottom) > 0, 1, y + alpha))


@register_layer("Swish")
class SwishLayer(NeuronLayer):
    """y = x * sigmoid(beta x); keeps sigmoid(beta x) for the gradient."""

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = bottom[0].data
        beta = self.layer_param.swish_param.beta
        sig = 0.5 * xp.tanh((0.5 * beta) * x) + 0.5
        self._sigmoid = sig
        xp.multiply(x, sig, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            beta = self.layer_param.swish_param.beta
            by = beta * top[0].data
            self.write_diff(top, bottom, by + self._sigmoid * (1 - by))


def _log_of_base(base, layer, what):
    """ln(base) for Exp/Log's ``base`` field: -1 means e; otherwise it must be > 0."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.error("%s_param.base must be strictly positive (or -1 for e), got %g"
                          % (what, base))
    return math.log(base)


@register_layer("Exp")
class ExpLayer(NeuronLayer):
    """y = base ^ (shift + scale x) = base^shift * exp(ln(base) scale x)."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.exp_param
        log_base = _log_of_base(p.base, self, "exp")
        self.inner_scale = log_base * p.scale
        self.outer_scale = 1.0 if p.shift == 0 else math.exp(log_base * p.shift)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        y = top[0].data
        xp.multiply(bottom[0].data, self.inner_scale, out=y)
        xp.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.write_diff(top, bottom, top[0].data * self.inner_scale)


@register_layer("Log")
class LogLayer(NeuronLayer):
    """y = log_base(shift + scale x); dy/dx = scale / (ln(base) (shift + scale x))."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.log_param
        self.base_scale = 1.0 / _log_of_base(p.base, self, "log")

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        p = self.layer_param.log_param
        x = self.keep_input(bottom, top)
        y = top[0].data
        xp.log(p.scale * x + p.shift, out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            p = self.layer_param.log_param
            inner = p.scale * self.saved_input(bottom) + p.shift
            self.write_diff(top, bottom, (p.scale * self.base_scale) / inner)


@register_layer("Power")
class PowerLayer(NeuronLayer):
    """y = (shift + scale x) ^ power; dy/dx = power scale (shift + scale x) ^ (power - 1)."""

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        p = self.layer_param.power_param
        y = top[0].data
        if p.power * p.scale == 0:  # the input does not matter
            y[...] = 1.0 if p.power == 0 else p.shift ** p.power
            self._input_copy = None
            return
        x = self.keep_input(bottom, top)
        base = p.scale * x + p.shift if (p.scale != 1 or p.shift != 0) else x
        if p.power == 1:
            y[...] = base
        else:
            xp.power(base, p.power, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp_of(bottom[0])
        p = self.layer_param.power_param
        diff_scale = p.power * p.scale
        if diff_scale == 0 or p.power == 1:
            xp.multiply(top[0].diff, diff_scale, out=bottom[0].diff)
            return
        base = p.scale * self.saved_input(bottom) + p.shift
        if p.power == 2:
            dydx = diff_scale * base
        else:
            dydx = diff_scale * xp.power(base, p.power - 1)
        self.write_diff(top, bottom, dydx)


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = 1 if x > threshold else 0. Like Caffe, it has no gradient."""

    def forward(self, bottom, top):
        t = self.layer_param.threshold_param.threshold
        top[0].data[...] = bottom[0].data > t

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("Threshold has no gradient (Caffe does not implement its backward); "
                             "set propagate_down: false or keep it out of the backward path")


@register_layer("PReLU")
class PReLULayer(NeuronLayer):
    """ReLU with a learned negative slope per channel (axis 1), or one shared slope.

    The slope blob has shape (channels,), or shape () with channel_shared;
    without a filler it starts at 0.25 as in Caffe.
    """

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        from solvers.blob import Blob
        from solvers.fillers import fill
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2:
            raise self.error("needs a bottom of at least 2 axes (num, channels, ...), got shape %s"
                             % (bottom[0].shape,))
        shape = () if p.channel_shared else (bottom[0].shape[1],)
        self.blobs = [Blob(shape, xp=bottom[0].xp)]
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        fill(self.blobs[0], filler)
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2 or (not p.channel_shared
                                      and bottom[0].shape[1] != self.blobs[0].count):
            raise self.error("bottom shape %s does not match %d slope(s) made at setup"
                             % (bottom[0].shape, self.blobs[0].count))
        top[0].reshape_like(bottom[0])

    def _slope(self, x):
        """The slopes shaped to broadcast against x (N, C, ...)."""
        a = self.blobs[0].data
        return a if a.ndim == 0 else a.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = self.keep_input(bottom, top)
        xp.add(xp.maximum(x, 0), self._slope(x) * xp.minimum(x, 0), out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp_of(bottom[0])
        x = self.saved_input(bottom)
        dy = top[0].diff
        if self.param_propagate_down[0]:
            g = dy * xp.minimum(x, 0)  # x where x <= 0, else 0
            if self.blobs[0].data.ndim == 0:
                self.blobs[0].diff[...] += g.sum()
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                self.blobs[0].diff[...] += g.sum(axis=axes)
        if propagate_down[0]:
            self.write_diff(top, bottom, xp.where(x > 0, 1, self._slope(x)).astype(x.dtype))


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """TRAIN: zero each unit with probability dropout_ratio, scale the kept ones by
    1 / (1 - ratio) so TEST is the identity. With ``scale_train: false`` (a field some
    Caffe forks have) training does not scale and TEST multiplies by 1 - ratio instead.
    """

    def layer_setup(self, bottom, top):
        p = self.layer_param.dropout_param
        self.ratio = p.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error("dropout_ratio must be in [0, 1), got %g" % self.ratio)
        self.scale = 1.0 / (1.0 - self.ratio)
        self.scale_train = getattr(p, "scale_train", True)
        self._mask = None

    def _training(self):
        from netspec import caffe_pb2
        return self.phase == caffe_pb2.TRAIN

    def forward(self, bottom, top):
        from solvers.rng import get_rng
        xp = self.xp_of(bottom[0])
        x, y = bottom[0].data, top[0].data
        if self._training():
            # The uniform draws, then the mask, in one buffer kept for backward.
            mask = self._mask
            if mask is None or mask.shape != x.shape or not isinstance(mask, np.ndarray):
                mask = np.empty(x.shape, np.float32)
            get_rng().random(out=mask, dtype=np.float32)
            keep = np.less(mask, np.float32(1.0 - self.ratio), out=scratch(mask, 0, x.shape, bool))
            np.multiply(keep, np.float32(self.scale if self.scale_train else 1.0), out=mask)
            self._mask = mask
            xp.multiply(x, xp.asarray(mask), out=y)
        elif self.scale_train:
            if y is not x:
                y[...] = x
        else:
            xp.multiply(x, 1.0 / self.scale, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp_of(bottom[0])
        if self._training():
            self.write_diff(top, bottom, xp.asarray(self._mask))
        elif self.scale_train:
            if bottom[0].diff is not top[0].diff:
                bottom[0].diff[...] = top[0].diff
        else:
            xp.multiply(top[0].diff, 1.0 / self.scale, out=bottom[0].diff)
