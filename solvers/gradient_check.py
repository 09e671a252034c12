"""Gradient checking by finite differences, like Caffe's GradientChecker.

Write a layer's ``backward`` (a Python layer, say), then let this module
compare it with central differences of the forward pass::

    from solvers.gradient_check import check_layer_gradient
    from netspec import caffe_pb2

    lp = caffe_pb2.LayerParameter(name="sq", type="Python")
    lp.python_param.module, lp.python_param.layer = "my_layers", "Square"
    check_layer_gradient(lp, [(2, 3)])        # raises LayerError on a wrong gradient

The objective is Caffe's: half the sum of squares of every top (or one top
element with ``top_id``/``top_data_id``, or every top element in turn with
``exhaustive=True``). Each bottom and parameter entry x is moved by
+-stepsize; the estimate (f(x+h) - f(x-h)) / 2h must match the analytic
gradient within ``threshold * max(|analytic|, |estimate|, 1)``. Entries
within ``kink_range`` of a ``kink`` (ReLU's 0, say) are skipped, as a
derivative is not defined there. By default the blobs are switched to float64
during the check (and back afterwards) so rounding does not hide or fake a
mismatch; the random generator is reseeded before every forward so stochastic
layers (Dropout) see the same draws each time.

``check_net_gradient(net)`` does the same for a whole net, differentiating
the net's loss (``net.forward_backward()``) with respect to its learnable
parameters (``net.learnable_params``). Layers with a read position (data
layers) are rewound with ``get_state``/``set_state`` before every forward;
stateful recurrent layers should be fed sequences that start with cont = 0.
"""
import numpy as np

from netspec.errors import CaffeError, LayerError
from solvers import rng as _rng
from solvers.backend import to_numpy
from solvers.blob import Blob

STEPSIZE = 1e-2
THRESHOLD = 1e-3


class GradientCheckResult:
    """What a check found: entries compared, skipped at kinks, and the failures."""

    def __init__(self, what):
        self.what = what
        self.checked = 0
        self.skipped = 0
        self.max_error = 0.0   # largest |analytic - estimate| / scale seen
        self.failures = []     # (blob label, flat index, analytic, estimate)

    @property
    def ok(self):
        return not self.failures

    def summary(self, limit=8):
        lines = ["%s: %d entries checked, %d skipped at kinks, %d wrong (worst relative error %.3g)"
                 % (self.what, self.checked, self.skipped, len(self.failures), self.max_error)]
        for label, index, analytic, estimate in self.failures[:limit]:
            lines.append("  %s[%d]: backward gives %.6g, finite differences %.6g" % (label, index, analytic, estimate))
        if len(self.failures) > limit:
            lines.append("  ... and %d more" % (len(self.failures) - limit))
        return "\n".join(lines)

    def __repr__(self):
        return "<GradientCheckResult %s>" % self.summary(limit=0)


# -- float64 switch (keeps shared buffers shared) -------------------------------

def _set_dtype(blobs, dtype):
    """Convert every blob's buffers to ``dtype``; blobs sharing a buffer keep sharing the new one."""
    converted = {}
    seen = set()
    for blob in blobs:
        if id(blob) in seen:
            continue
        seen.add(id(blob))
        for buf_name, view_name in (("_data_buf", "data"), ("_diff_buf", "diff")):
            buf = getattr(blob, buf_name)
            if buf.dtype == dtype:
                continue
            # keyed by id, the original kept alive with its copy: a diff allocated on first use
            # must not get the id of a buffer freed earlier in this loop
            new = converted.get(id(buf), (None, None))[1]
            if new is None:
                new = buf.astype(dtype)
                converted[id(buf)] = (buf, new)
            setattr(blob, buf_name, new)
            setattr(blob, view_name, new[:blob.count].reshape(blob.shape))


def _objective(top, top_id, top_data_id):
    """Caffe's GetObjAndGradient: returns the objective and writes its gradient into the top diffs."""
    if top_id is None:
        loss = 0.0
        for t in top:
            loss += float((t.data.astype(np.float64) ** 2).sum()) / 2
            t.diff[...] = t.data
        return loss
    for t in top:
        t.diff[...] = 0
    flat_data = top[top_id].data.reshape(-1)
    top[top_id].diff.reshape(-1)[top_data_id] = 1
    return float(flat_data[top_data_id])


def _as_layer(layer):
    from solvers.layer import Layer, create_layer
    if isinstance(layer, Layer):
        return layer
    from netspec import caffe_pb2
    if isinstance(layer, str):
        from google.protobuf import text_format
        lp = caffe_pb2.LayerParameter()
        try:
            text_format.Merge(layer, lp)
        except text_format.ParseError as e:
            raise LayerError("check_layer_gradient: cannot parse the layer text: %s" % e) from e
        layer = lp
    if isinstance(layer, caffe_pb2.LayerParameter):
        return create_layer(layer)
    raise LayerError("check_layer_gradient needs a Layer, a LayerParameter or layer prototxt text, got %s"
                     % type(layer).__name__)


def _as_bottoms(bottom, seed):
    gen = np.random.default_rng(seed)
    blobs = []
    for b in bottom:
        if isinstance(b, Blob):
            blobs.append(b)
        else:
            shape = tuple(int(s) for s in b)
            blob = Blob(shape)
            blob.data[...] = blob.xp.asarray(gen.standard_normal(shape).astype(np.float32))
            blobs.append(blob)
    return blobs


def check_layer_gradient(layer, bottom, top=None, stepsize=STEPSIZE, threshold=THRESHOLD,
                         kink=0.0, kink_range=-1.0, check_bottom=None, check_params=True,
                         top_id=None, top_data_id=None, exhaustive=False, seed=1701,
                         float64=True, setup=True, raise_on_failure=True):
    """Compare a layer's backward with finite differences of its forward.

    layer: a Layer, a LayerParameter, or layer prototxt text (``'type: "TanH" name: "t"'``).
    bottom: Blobs, or shapes (filled with seeded standard normal values).
    top: Blobs for the tops (default: one new Blob per ``layer_param.top``, at least one).
    check_bottom: indices of bottoms to check (default: every bottom the layer allows gradients for).
    check_params: also check ``layer.blobs``.
    top_id / top_data_id: objective is that one top entry; exhaustive=True loops over all of them.
    Returns a GradientCheckResult; raises LayerError on a mismatch unless raise_on_failure is False.
    """
    layer = _as_layer(layer)
    bottom = _as_bottoms(bottom, seed)
    if top is None:
        top = [Blob() for _ in range(max(len(layer.layer_param.top), 1))]
    for t in top:
        if any(t is b for b in bottom):
            raise LayerError("check_layer_gradient: layer %r runs in place; check it with separate top blobs"
                             % layer.name)
    saved_rng = _rng.get_state()
    try:
        _rng.set_random_seed(seed)
        if setup:
            layer.setup(bottom, top)
        if check_bottom is None:
            check_bottom = [i for i in range(len(bottom)) if layer.allow_force_backward(i)]
        propagate_down = [i in check_bottom for i in range(len(bottom))]
        all_blobs = list(bottom) + list(top) + list(layer.blobs)
        if float64:
            _set_dtype(all_blobs, np.float64)
        targets = []
        if check_params:
            targets += [("param %d" % j, b) for j, b in enumerate(layer.blobs)]
        targets += [("bottom %d" % i, bottom[i]) for i in check_bottom]

        def run(obj_top_id, obj_index):
            _rng.set_random_seed(seed)
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            return _objective(top, obj_top_id, obj_index)

        result = GradientCheckResult("layer %r (type %s)" % (layer.name, layer.type))
        if exhaustive:
            layer.reshape(bottom, top)
            objectives = [(i, j) for i, t in enumerate(top) for j in range(t.count)]
        else:
            objectives = [(top_id, top_data_id if top_id is not None else None)]
            if top_id is not None and top_data_id is None:
                raise LayerError("check_layer_gradient: top_id needs top_data_id too")
        for obj in objectives:
            def analytic():
                for b in layer.blobs:
                    b.diff[...] = 0
                run(*obj)
                layer.backward(top, propagate_down, bottom)
            _compare(result, targets, analytic, lambda: run(*obj), stepsize, threshold, kink, kink_range)
    finally:
        if float64:
            _set_dtype(list(bottom) + list(top) + list(layer.blobs), np.float32)
        _rng.set_state(saved_rng)
    if raise_on_failure and not result.ok:
        raise LayerError("gradient check failed for " + result.summary())
    return result


def _compare(result, targets, analytic, objective, stepsize, threshold, kink, kink_range, max_per_blob=None):
    """Run the analytic pass, then perturb every target entry and compare."""
    analytic()
    computed = [np.array(to_numpy(b.diff), dtype=np.float64, copy=True).ravel() for _, b in targets]
    for (label, blob), grad in zip(targets, computed):
        flat = blob.data.reshape(-1)
        n = flat.size if max_per_blob is None else min(flat.size, max_per_blob)
        for k in range(n):
            x = float(flat[k])
            flat[k] = x + stepsize
            plus = objective()
            flat[k] = x - stepsize
            minus = objective()
            flat[k] = x
            estimate = (plus - minus) / (2.0 * stepsize)
            if kink - kink_range <= abs(x) <= kink + kink_range:
                result.skipped += 1
                continue
            g = float(grad[k])
            scale = max(abs(g), abs(estimate), 1.0)
            err = abs(g - estimate) / scale
            result.checked += 1
            result.max_error = max(result.max_error, err)
            if err > threshold:
                result.failures.append((label, k, g, estimate))


def check_net_gradient(net, stepsize=STEPSIZE, threshold=THRESHOLD, max_per_blob=None, seed=1701,
                       float64=True, raise_on_failure=True):
    """Compare a whole net's parameter gradients with finite differences of its loss.

    The net needs a loss (loss_weight on some top) and deterministic inputs
    (Input blobs filled by you, or data layers that can rewind). ``max_per_blob``
    limits how many entries of each learnable blob are checked (the first ones).
    """
    params = list(net.learnable_params)
    if not params:
        raise CaffeError("check_net_gradient: the net has no learnable parameters to check")
    layers = list(getattr(net, "layers", []))
    states = [layer.get_state() for layer in layers]
    last = len(layers) - 1
    forward_only = getattr(net, "forward_from_to", None)

    def rewind():
        for layer, state in zip(layers, states):
            if state is not None:
                layer.set_state(state)
        _rng.set_random_seed(seed)

    def loss_only():
        rewind()
        if forward_only is not None and last >= 0:
            return float(forward_only(0, last))
        return float(net.forward_backward())

    def analytic():
        for p in params:
            p.diff[...] = 0
        rewind()
        net.forward_backward()

    blobs = list(getattr(net, "blobs", {}).values()) + [b for layer in layers for b in layer.blobs] + params
    blobs += list(getattr(net, "_blobs", []))
    saved_rng = _rng.get_state()
    result = GradientCheckResult("net %r" % getattr(net, "name", ""))
    try:
        if float64:
            _set_dtype(blobs, np.float64)
        targets = [("learnable param %d" % i, p) for i, p in enumerate(params)]
        _compare(result, targets, analytic, loss_only, stepsize, threshold, 0.0, -1.0, max_per_blob)
    finally:
        if float64:
            _set_dtype(blobs, np.float32)
        rewind()
        _rng.set_state(saved_rng)
    if raise_on_failure and not result.ok:
        raise CaffeError("gradient check failed for " + result.summary())
    return result
