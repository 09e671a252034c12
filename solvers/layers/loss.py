"""Caffe's loss layers, and Accuracy.

A loss layer writes a scalar (shape ``()``, as Caffe's 0-axis loss blob) and,
in backward, scales its gradient by the loss weight the Net left in
``top[0].diff``. Labels arrive as float blobs and are truncated to int as
Caffe's ``static_cast<int>`` does. ``softmax`` is the one softmax of the
toolkit: the Softmax layer reuses it.
"""

import numpy as np

from solvers.backend import get_array_module
from solvers.layer import Layer, register_layer

FLT_MIN = float(np.finfo(np.float32).tiny)  # SoftmaxWithLoss's floor under log(p)
LOG_THRESHOLD = 1e-20                        # Caffe's kLOG_THRESHOLD for the other log losses


# -- shared math ---------------------------------------------------------------

def softmax(x, axis=1, out=None):
    """exp(x - max) / sum(exp(x - max)) along ``axis``; ``out`` may be ``x`` itself."""
    xp = get_array_module(x)
    shift = x.max(axis=axis, keepdims=True)
    out = xp.subtract(x, shift, out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def softmax_backward(y, dy, axis=1, out=None):
    """Gradient through y = softmax(x): dx = y * (dy - sum(dy * y, axis))."""
    xp = get_array_module(y)
    dot = (dy * y).sum(axis=axis, keepdims=True)
    out = xp.subtract(dy, dot, out=out)
    out *= y
    return out


def normalization_mode(loss_param, default=None):
    """The LossParameter normalization in force; the legacy ``normalize`` flag
    (when ``normalization`` is not set) means VALID if true, BATCH_SIZE if false."""
    from netspec import caffe_pb2
    modes = caffe_pb2.LossParameter
    if not loss_param.HasField("normalization"):
        if loss_param.HasField("normalize"):
            return modes.VALID if loss_param.normalize else modes.BATCH_SIZE
        if default is not None:
            return default
    return loss_param.normalization


def loss_normalizer(mode, outer_num, inner_num, valid_count):
    """What the summed loss is divided by (never below 1, as in Caffe)."""
    from netspec import caffe_pb2
    modes = caffe_pb2.LossParameter
    if mode == modes.FULL:
        n = outer_num * inner_num
    elif mode == modes.VALID:
        n = outer_num * inner_num if valid_count == -1 else valid_count
    elif mode == modes.BATCH_SIZE:
        n = outer_num
    elif mode == modes.NONE:
        n = 1
    else:
        raise ValueError("unknown normalization mode %r" % (mode,))
    return float(max(1.0, n))


class LossLayer(Layer):
    """Two bottoms (prediction, label), one scalar top; never backward into the label."""

    is_loss = True
    exact_num_bottom = 2
    exact_num_top = 1
    label_bottom = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != self.label_bottom

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error("the data and label should have the same first dimension, got %s and %s"
                             % (bottom[0].shape, bottom[1].shape))
        top[0].reshape(())

    def check_no_label_gradient(self, propagate_down):
        for i in range(1, len(propagate_down)):
            if propagate_down[i] and not self.allow_force_backward(i):
                raise self.error("cannot backpropagate to bottom %d (%r): it holds labels "
                                 "(set propagate_down: false for it)" % (i, self.layer_param.bottom[i]))

    def loss_weight(self, top):
        """The scalar the Net put on top[0].diff (a 0-d array, no host sync)."""
        return top[0].diff


class _LabelledSoftmax:
    """Bookkeeping shared by SoftmaxWithLoss and InfogainLoss: the class axis,
    outer/inner sizes, integer labels and the mask of labels not ignored."""

    def setup_labels(self, ignore_from):
        self.has_ignore = ignore_from.HasField("ignore_label")
        self.ignore_label = ignore_from.ignore_label

    def reshape_labels(self, bottom, axis_field):
        self.axis = bottom[0].canonical_axis(axis_field)
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        self.channels = bottom[0].shape[self.axis]
        if self.outer * self.inner != bottom[1].count:
            raise self.error(
                "number of labels must match number of predictions: with axis %d and prediction "
                "shape %s the label blob must hold %d values (outer %d x inner %d), it has shape %s"
                % (self.axis, bottom[0].shape, self.outer * self.inner, self.outer, self.inner,
                   bottom[1].shape))

    def keep_prob_buffer(self, bottom, top):
        """A buffer for the probabilities, of bottom 0's shape and dtype, reused across calls;
        the optional second top is shaped to receive them."""
        blob = bottom[0]
        prob = getattr(self, "prob", None)
        if prob is None or prob.shape != blob.data.shape or prob.dtype != blob.data.dtype:
            self.prob = self.xp_of(blob).empty_like(blob.data)
        if len(top) > 1:
            top[1].reshape_like(blob)

    def read_labels(self, label_blob):
        """(labels safe to index with, valid mask or None), labels shaped (outer, inner)."""
        xp = self.xp_of(label_blob)
        label = label_blob.data.reshape(self.outer, self.inner).astype(xp.int64)
        valid = (label != self.ignore_label) if self.has_ignore else None
        safe = xp.where(valid, label, 0) if valid is not None else label
        if safe.size and (int(safe.min()) < 0 or int(safe.max()) >= self.channels):
            raise self.error("label values must lie in [0, %d) (the size of axis %d of %r); got "
                             "values from %d to %d" % (self.channels, self.axis, self.layer_param.bottom[0],
                                                       int(safe.min()), int(safe.max())))
        return safe, valid

    def write_loss(self, top, per_pos, label, valid, prob):
        """Sum the per-position losses (outer, inner) over the positions not ignored, divide by
        the normaliser and write top 0 (and the probabilities to top 1 when it exists)."""
        if valid is None:
            loss, count = -per_pos.sum(), self.outer * self.inner
        else:
            loss, count = -(per_pos * valid).sum(), int(valid.sum())
        self.normalizer = loss_normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = loss / self.normalizer
        if len(top) > 1:
            top[1].data[...] = prob
        self._label, self._valid = label, valid

    def scale_gradient(self, d3, top):
        """Zero the gradient (outer, C, inner) at ignored positions and scale it by
        loss weight / normaliser."""
        if self._valid is not None:
            d3 *= self._valid[:, None, :]
        d3 *= self.loss_weight(top) / self.normalizer


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_LabelledSoftmax, LossLayer):
    """Multinomial logistic loss of softmax(x) along softmax_param.axis.

    loss = -sum over non-ignored positions of log(max(p[label], FLT_MIN)),
    divided as loss_param.normalization says (VALID by default). An optional
    second top receives the probabilities.
    """

    exact_num_top = None
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        self.setup_labels(self.layer_param.loss_param)
        self.normalization = normalization_mode(self.layer_param.loss_param)

    def reshape(self, bottom, top):
        LossLayer.reshape(self, bottom, top)
        self.reshape_labels(bottom, self.layer_param.softmax_param.axis)
        self.keep_prob_buffer(bottom, top)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        prob = softmax(bottom[0].data, self.axis, out=self.prob)
        p3 = prob.reshape(self.outer, self.channels, self.inner)
        label, valid = self.read_labels(bottom[1])
        picked = xp.take_along_axis(p3, label[:, None, :], axis=1)[:, 0, :]
        logp = xp.log(xp.maximum(picked, FLT_MIN))
        self.write_loss(top, logp, label, valid, prob)

    def backward(self, top, propagate_down, bottom):
        self.check_no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp_of(bottom[0])
        diff = bottom[0].diff
        xp.copyto(diff, self.prob)
        d3 = diff.reshape(self.outer, self.channels, self.inner)
        rows = xp.arange(self.outer)[:, None]
        cols = xp.arange(self.inner)[None, :]
        d3[rows, self._label, cols] -= 1
        self.scale_gradient(d3, top)


@register_layer("InfogainLoss")
class InfogainLossLayer(_LabelledSoftmax, LossLayer):
    """Softmax, then loss = -sum_l H[label, l] log(max(p_l, 1e-20)), normalised.

    H (classes x classes) comes from a third bottom or from
    infogain_loss_param.source (a binary BlobProto). With H = identity this is
    SoftmaxWithLoss.
    """

    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 3
    exact_num_top = None
    min_top = 1
    max_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def layer_setup(self, bottom, top):
        lp = self.layer_param.loss_param
        if lp.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated for InfogainLoss (Caffe refuses it); '
                             'use loss_param.normalization instead')
        self.setup_labels(lp)
        self.normalization = lp.normalization
        self.infogain = None
        if len(bottom) < 3:
            self.infogain = self._read_source(bottom[0].xp)

    def _read_source(self, xp):
        import os
        from netspec import caffe_pb2
        from solvers.blob import Blob
        p = self.layer_param.infogain_loss_param
        if not p.HasField("source"):
            raise self.error("needs the infogain matrix H: give a third bottom or "
                             "infogain_loss_param.source (a binary BlobProto file)")
        path = p.source
        try:
            with open(path, "rb") as f:
                proto = caffe_pb2.BlobProto.FromString(f.read())
        except OSError as e:
            raise self.error("cannot read infogain_loss_param.source %r (resolved %s, working "
                             "directory %s): %s" % (path, os.path.abspath(path), os.getcwd(), e))
        except Exception as e:  # a file that is not a BlobProto
            raise self.error("infogain_loss_param.source %r is not a binary BlobProto: %s" % (path, e))
        blob = Blob(xp=xp)
        blob.from_proto(proto, name="infogain matrix %s" % path)
        return blob

    def _h(self, bottom):
        h = bottom[2] if len(bottom) > 2 else self.infogain
        return h.data.reshape(self.channels, self.channels)

    def reshape(self, bottom, top):
        LossLayer.reshape(self, bottom, top)
        self.reshape_labels(bottom, self.layer_param.infogain_loss_param.axis)
        h = bottom[2] if len(bottom) > 2 else self.infogain
        if h.count != self.channels * self.channels:
            raise self.error("infogain matrix H must hold %d x %d values (classes along axis %d), "
                             "it has shape %s" % (self.channels, self.channels, self.axis, h.shape))
        self.keep_prob_buffer(bottom, top)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        prob = softmax(bottom[0].data, self.axis, out=self.prob)
        p3 = prob.reshape(self.outer, self.channels, self.inner)
        label, valid = self.read_labels(bottom[1])
        h_rows = self._h(bottom)[label]                     # (outer, inner, C)
        logp = xp.log(xp.maximum(p3, LOG_THRESHOLD)).transpose(0, 2, 1)
        per_pos = (h_rows * logp).sum(axis=2)               # (outer, inner)
        self.write_loss(top, per_pos, label, valid, prob)

    def backward(self, top, propagate_down, bottom):
        self.check_no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        h = self._h(bottom)
        p3 = self.prob.reshape(self.outer, self.channels, self.inner)
        row_sums = h.sum(axis=1)[self._label]               # (outer, inner)
        d3 = bottom[0].diff.reshape(self.outer, self.channels, self.inner)
        d3[...] = p3 * row_sums[:, None, :] - h[self._label].transpose(0, 2, 1)
        self.scale_gradient(d3, top)


class _ItemLabelLoss(LossLayer):
    """A loss whose label bottom holds one class index per item (along the first axis)."""

    def reshape(self, bottom, top):
        LossLayer.reshape(self, bottom, top)
        if bottom[1].count != bottom[0].shape[0]:
            raise self.error("needs one label per item (%d), the label blob has shape %s"
                             % (bottom[0].shape[0], bottom[1].shape))

    def item_labels(self, bottom, dim):
        """The labels as int64, one per item, checked to lie in [0, dim)."""
        xp = self.xp_of(bottom[0])
        num = bottom[0].shape[0]
        label = bottom[1].data.reshape(num).astype(xp.int64)
        if num and (int(label.min()) < 0 or int(label.max()) >= dim):
            raise self.error("label values must lie in [0, %d), got %d to %d"
                             % (dim, int(label.min()), int(label.max())))
        return label


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(_ItemLabelLoss):
    """loss = -mean over the batch of log(max(p[label], 1e-20)); the bottom holds probabilities."""

    def _picked(self, bottom):
        xp = self.xp_of(bottom[0])
        num = bottom[0].shape[0]
        p = bottom[0].data.reshape(num, -1)
        label = self.item_labels(bottom, p.shape[1])
        rows = xp.arange(num)
        return rows, label, xp.maximum(p[rows, label], LOG_THRESHOLD)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        _, _, picked = self._picked(bottom)
        top[0].data[...] = -xp.log(picked).sum() / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        self.check_no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        num = bottom[0].shape[0]
        rows, label, picked = self._picked(bottom)
        d = bottom[0].diff.reshape(num, -1)
        d[...] = 0
        d[rows, label] = -(self.loss_weight(top) / num) / picked


@register_layer("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / (2 N); both bottoms may take a gradient."""

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        LossLayer.reshape(self, bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.error("inputs must have the same dimension, got shapes %s and %s"
                             % (bottom[0].shape, bottom[1].shape))

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        self._diff = xp.subtract(bottom[0].data, bottom[1].data.reshape(bottom[0].shape))
        d = self._diff.ravel()
        top[0].data[...] = xp.dot(d, d) / bottom[0].shape[0] / 2

    def backward(self, top, propagate_down, bottom):
        xp = self.xp_of(bottom[0])
        num = bottom[0].shape[0]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * self.loss_weight(top) / num
                xp.multiply(self._diff.reshape(bottom[i].shape), alpha, out=bottom[i].diff)


@register_layer("HingeLoss")
class HingeLossLayer(_ItemLabelLoss):
    """One-vs-all hinge: t_k = +1 for the label, -1 otherwise;
    loss = sum max(0, 1 - t_k x_k)^p / N with p = 1 (L1) or 2 (L2).

    Like Caffe, forward leaves max(0, 1 - t x) in bottom[0].diff and backward
    starts from what it finds there, so zeroing that diff in between (as
    clearing the diffs of a Parameter blob feeding it does) zeroes the
    gradient in Caffe and here alike.
    """

    def _rows_labels(self, bottom):
        xp = self.xp_of(bottom[0])
        num = bottom[0].shape[0]
        label = self.item_labels(bottom, bottom[0].count // num if num else 0)
        return xp.arange(num), label

    def _l2(self):
        from netspec import caffe_pb2
        return self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        num = bottom[0].shape[0]
        rows, label = self._rows_labels(bottom)
        margin = bottom[0].diff.reshape(num, -1)
        xp.copyto(margin, bottom[0].data.reshape(num, -1))
        margin[rows, label] *= -1
        margin += 1
        xp.maximum(margin, 0, out=margin)               # max(0, 1 - t x)
        loss = (margin * margin).sum() if self._l2() else margin.sum()
        top[0].data[...] = loss / num

    def backward(self, top, propagate_down, bottom):
        self.check_no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp_of(bottom[0])
        num = bottom[0].shape[0]
        rows, label = self._rows_labels(bottom)
        g = bottom[0].diff.reshape(num, -1)
        g[rows, label] *= -1                            # d(1 - t x)/dx = -t
        scale = self.loss_weight(top) / num
        if self._l2():
            g *= 2 * scale
        else:
            xp.sign(g, out=g)
            g *= scale


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of sigmoid(x) against targets in [0, 1], computed stably from x.

    Targets equal to loss_param.ignore_label are left out; the sum is divided
    as loss_param.normalization says (BATCH_SIZE when nothing is set, as in Caffe).
    """

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        lp = self.layer_param.loss_param
        self.has_ignore = lp.HasField("ignore_label")
        self.ignore_label = lp.ignore_label
        self.normalization = normalization_mode(lp, default=caffe_pb2.LossParameter.BATCH_SIZE)

    def reshape(self, bottom, top):
        LossLayer.reshape(self, bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error("inputs must have the same count, got shapes %s and %s"
                             % (bottom[0].shape, bottom[1].shape))

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        pos = (x >= 0).astype(x.dtype)
        # -[t log s + (1 - t) log(1 - s)] = -[x (t - [x>=0]) - log(1 + exp(x - 2 x [x>=0]))]
        per = xp.log1p(xp.exp(x - 2 * x * pos)) - x * (t - pos)
        self._valid = None
        if self.has_ignore:
            self._valid = t.astype(xp.int64) != self.ignore_label
            per = per * self._valid
            count = int(self._valid.sum())
        else:
            count = x.size
        self.normalizer = loss_normalizer(self.normalization, x.shape[0], x.size // max(x.shape[0], 1),
                                          count)
        self._sigmoid = 0.5 * xp.tanh(0.5 * x) + 0.5
        top[0].data[...] = per.sum() / self.normalizer

    def backward(self, top, propagate_down, bottom):
        self.check_no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp_of(bottom[0])
        d = bottom[0].diff
        xp.subtract(self._sigmoid, bottom[1].data.reshape(d.shape), out=d)
        if self._valid is not None:
            d *= self._valid
        d *= self.loss_weight(top) / self.normalizer


@register_layer("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Siamese loss on pairs (a, b) with y = 1 for similar pairs:
    y d^2 + (1 - y) max(margin - d, 0)^2, summed over pairs and divided by 2N
    (legacy_version: max(margin - d^2, 0) for dissimilar pairs)."""

    exact_num_bottom = 3
    label_bottom = 2

    def reshape(self, bottom, top):
        LossLayer.reshape(self, bottom, top)
        a, b, y = bottom
        if a.shape != b.shape:
            raise self.error("the two feature bottoms must have one shape, got %s and %s"
                             % (a.shape, b.shape))
        if y.count != a.shape[0]:
            raise self.error("needs one similarity label per pair (%d), the label blob has shape %s"
                             % (a.shape[0], y.shape))

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        p = self.layer_param.contrastive_loss_param
        num = bottom[0].shape[0]
        diff = (bottom[0].data - bottom[1].data).reshape(num, -1)
        dist_sq = (diff * diff).sum(axis=1)
        similar = bottom[2].data.reshape(num).astype(xp.int64) != 0
        if p.legacy_version:
            apart = xp.maximum(p.margin - dist_sq, 0)
        else:
            apart = xp.maximum(p.margin - xp.sqrt(dist_sq), 0) ** 2
        self._diff, self._dist_sq, self._similar = diff, dist_sq, similar
        top[0].data[...] = xp.where(similar, dist_sq, apart).sum() / num / 2

    def backward(self, top, propagate_down, bottom):
        self.check_no_label_gradient(propagate_down)
        xp = self.xp_of(bottom[0])
        p = self.layer_param.contrastive_loss_param
        num = bottom[0].shape[0]
        dist_sq, similar = self._dist_sq, self._similar
        if p.legacy_version:
            push = xp.where(p.margin - dist_sq > 0, -1.0, 0.0).astype(dist_sq.dtype)
        else:
            dist = xp.sqrt(dist_sq)
            mdist = p.margin - dist
            push = xp.where(mdist > 0, -mdist / (dist + 1e-4), 0).astype(dist_sq.dtype)
        coef = xp.where(similar, 1, push)                    # times alpha below
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * self.loss_weight(top) / num
                d = bottom[i].diff.reshape(num, -1)
                xp.multiply(self._diff, (alpha * coef)[:, None], out=d)


@register_layer("Accuracy")
class AccuracyLayer(_LabelledSoftmax, Layer):
    """Fraction of non-ignored positions whose label is among the top_k scores
    along accuracy_param.axis (ties count against); an optional second top gets
    the accuracy of each class. It is never forced to backward."""

    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def allow_force_backward(self, bottom_index):
        return False

    def layer_setup(self, bottom, top):
        self.setup_labels(self.layer_param.accuracy_param)
        self.top_k = self.layer_param.accuracy_param.top_k

    def reshape(self, bottom, top):
        if bottom[1].count and self.top_k > bottom[0].count // bottom[1].count:
            raise self.error("top_k (%d) must be less than or equal to the number of classes (%d)"
                             % (self.top_k, bottom[0].count // bottom[1].count))
        self.reshape_labels(bottom, self.layer_param.accuracy_param.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.channels,))

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        x3 = bottom[0].data.reshape(self.outer, self.channels, self.inner)
        label, valid = self.read_labels(bottom[1])
        true_score = xp.take_along_axis(x3, label[:, None, :], axis=1)
        better = (x3 >= true_score).sum(axis=1) - 1         # the true class counts itself once
        correct = better < self.top_k
        if valid is not None:
            correct = correct & valid
            count = int(valid.sum())
        else:
            count = self.outer * self.inner
        hits = int(correct.sum())
        top[0].data[...] = hits / count if count else 0.0
        if len(top) > 1:
            seen = label if valid is None else label[valid]
            nums = xp.bincount(seen.ravel(), minlength=self.channels)
            good = xp.bincount(label[correct].ravel(), minlength=self.channels)
            top[1].data[...] = xp.where(nums > 0, good / xp.maximum(nums, 1), 0)

    def backward(self, top, propagate_down, bottom):
        """Accuracy is piecewise constant: its gradient is zero. (Caffe aborts here;
        writing zeros lets a force_backward net that holds an Accuracy layer run.)"""
        for p, b in zip(propagate_down, bottom):
            if p:
                b.diff[...] = 0
