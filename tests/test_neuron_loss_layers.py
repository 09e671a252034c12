"""Neuron and loss layers: float64 finite-difference gradients, in-place runs,
Dropout's mask, loss normalisation and the errors a user can hit.

Comparisons with BVLC Caffe's own numbers live in test_golden_layers.py.
"""
import numpy as np
import pytest
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import LayerError
from solvers.blob import Blob
from solvers.layer import create_layer
from solvers.layers.loss import softmax, softmax_backward
from solvers.rng import set_random_seed

from helpers import blob


class Blob64(Blob):
    """A Blob in float64, for gradient checks only (layers follow their blobs' dtype)."""

    def reshape(self, *shape):
        super().reshape(*shape)
        if self._data_buf.dtype != np.float64:
            self._data_buf = self._data_buf.astype(np.float64)
            self._diff_buf = self._diff_buf.astype(np.float64)
            n = self.data.size
            self.data = self._data_buf[:n].reshape(self._shape)
            self.diff = self._diff_buf[:n].reshape(self._shape)


def make_layer(type_name, params="", phase="TRAIN", bottoms=("x",), tops=("y",)):
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(params, lp)
    lp.name = "under_test"
    lp.type = type_name
    lp.phase = caffe_pb2.Phase.Value(phase)
    lp.bottom.extend(bottoms)
    lp.top.extend(tops)
    return create_layer(lp)


def away_from(x, points, gap=0.05):
    """Move values within ``gap`` of a kink so finite differences stay on one side."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, gap, -gap)
    return x


def check_gradient(layer, bottoms, check=None, eps=1e-6, rtol=1e-5, atol=1e-7, params=False):
    """Compare backward with central differences of sum(top * R) (or the weighted loss)."""
    rng = np.random.default_rng(3)
    check = range(len(bottoms)) if check is None else check
    tops = [Blob64() for _ in layer.layer_param.top]
    layer.setup(bottoms, tops)
    if params:
        for j, pb in enumerate(layer.blobs):
            layer.blobs[j] = blob(pb.data.astype(np.float64), Blob64)
    weights = [np.asarray(rng.uniform(0.5, 1.5, t.shape)) for t in tops]
    if layer.is_loss:
        weights = [np.asarray(1.7)] + [np.zeros(t.shape) for t in tops[1:]]

    def objective():
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
        return sum(float((t.data * w).sum()) for t, w in zip(tops, weights))

    objective()
    for t, w in zip(tops, weights):
        t.diff[...] = w
    for pb in layer.blobs:
        pb.diff[...] = 0
    propagate = [i in check for i in range(len(bottoms))]
    layer.backward(tops, propagate, bottoms)
    analytic = [bottoms[i].diff.copy() for i in check]
    analytic_params = [pb.diff.copy() for pb in layer.blobs] if params else []

    targets = [bottoms[i].data for i in check] + ([pb.data for pb in layer.blobs] if params else [])
    for arr, grad in zip(targets, analytic + analytic_params):
        numeric = np.zeros_like(arr)
        flat, nflat = arr.reshape(-1), numeric.reshape(-1)
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + eps
            up = objective()
            flat[k] = keep - eps
            down = objective()
            flat[k] = keep
            nflat[k] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=rtol, atol=atol)


R = np.random.default_rng(0)
X = R.standard_normal((2, 3, 4, 3))


# -- finite differences: neuron layers ---------------------------------------------

@pytest.mark.parametrize("type_name, params, x", [
    ("ReLU", "relu_param { negative_slope: 0.1 }", away_from(X, [0])),
    ("ReLU", "", away_from(X, [0])),
    ("Sigmoid", "", X),
    ("TanH", "", X),
    ("AbsVal", "", away_from(X, [0])),
    ("BNLL", "", X * 3),
    ("ELU", "elu_param { alpha: 0.7 }", away_from(X, [0])),
    ("Swish", "swish_param { beta: 1.3 }", X),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }", X),
    ("Log", "log_param { base: 3 scale: 1.5 shift: 0.2 }", np.abs(X) + 0.1),
    ("Power", "power_param { power: 1.7 scale: 0.8 shift: 0.3 }", np.abs(X)),
    ("Power", "power_param { power: 2 scale: -0.5 shift: 1 }", X),
    ("Clip", "clip_param { min: -0.5 max: 0.8 }", away_from(X, [-0.5, 0.8])),
], ids=lambda v: v if isinstance(v, str) and " " not in v and v else None)
def test_neuron_gradient(type_name, params, x):
    check_gradient(make_layer(type_name, params), [blob(x, Blob64)])


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient_wrt_input_and_slopes(shared):
    layer = make_layer("PReLU", "prelu_param { channel_shared: %s filler { type: 'uniform' min: 0.1 max: 0.4 } }"
                       % ("true" if shared else "false"))
    check_gradient(layer, [blob(away_from(X, [0]), Blob64)], params=True)


# -- finite differences: loss layers -----------------------------------------------

def labels(shape, classes, seed=1):
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.float64)


def test_softmax_with_loss_gradient_with_ignored_labels():
    lab = labels((2, 4, 3), 3)
    lab[0, 1, 2] = lab[1, 0, 0] = 7        # ignored
    layer = make_layer("SoftmaxWithLoss", "loss_param { ignore_label: 7 }", bottoms=("x", "l"))
    check_gradient(layer, [blob(X, Blob64), blob(lab, Blob64)], check=[0])


@pytest.mark.parametrize("mode", ["FULL", "BATCH_SIZE", "NONE"])
def test_softmax_with_loss_gradient_other_normalizations(mode):
    x = R.standard_normal((3, 5))
    layer = make_layer("SoftmaxWithLoss", "loss_param { normalization: %s }" % mode, bottoms=("x", "l"))
    check_gradient(layer, [blob(x, Blob64), blob(labels((3,), 5), Blob64)], check=[0])


def test_infogain_gradient():
    h = np.random.default_rng(4).uniform(0, 1, (1, 1, 4, 4))
    layer = make_layer("InfogainLoss", bottoms=("x", "l", "h"))
    check_gradient(layer, [blob(R.standard_normal((3, 4)), Blob64), blob(labels((3,), 4), Blob64),
                           blob(h, Blob64)], check=[0])


def test_multinomial_logistic_gradient():
    p = np.random.default_rng(5).uniform(0.05, 1, (3, 4))
    layer = make_layer("MultinomialLogisticLoss", bottoms=("p", "l"))
    check_gradient(layer, [blob(p, Blob64), blob(labels((3,), 4), Blob64)], check=[0])


def test_euclidean_gradient_both_bottoms():
    layer = make_layer("EuclideanLoss", bottoms=("a", "b"))
    check_gradient(layer, [blob(R.standard_normal((3, 4)), Blob64), blob(R.standard_normal((3, 4)), Blob64)])


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient(norm):
    x = R.standard_normal((3, 5))
    lab = labels((3,), 5)
    # keep 1 - t x away from the hinge at 0
    t = -np.ones_like(x)
    t[np.arange(3), lab.astype(int)] = 1
    x = away_from(x * t, [1]) * t
    layer = make_layer("HingeLoss", "hinge_loss_param { norm: %s }" % norm, bottoms=("x", "l"))
    check_gradient(layer, [blob(x, Blob64), blob(lab, Blob64)], check=[0])


def test_sigmoid_cross_entropy_gradient_with_ignore():
    t = np.random.default_rng(6).uniform(0, 1, (3, 4))
    t[1, 2] = -1
    layer = make_layer("SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 normalization: VALID }",
                       bottoms=("x", "t"))
    check_gradient(layer, [blob(R.standard_normal((3, 4)) * 2, Blob64), blob(t, Blob64)], check=[0])


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_gradient(legacy):
    a = R.standard_normal((4, 3)) * 0.5
    b = R.standard_normal((4, 3)) * 0.5
    y = np.array([1, 0, 0, 1], dtype=np.float64)
    layer = make_layer("ContrastiveLoss", "contrastive_loss_param { margin: 2.5 legacy_version: %s }"
                       % ("true" if legacy else "false"), bottoms=("a", "b", "y"))
    # Caffe divides by (d + 1e-4) instead of d for dissimilar pairs, so its gradient
    # is the true one times d / (d + 1e-4): about 1e-4 relative for d near 1.
    rtol = 1e-5 if legacy else 3e-4
    check_gradient(layer, [blob(a, Blob64), blob(b, Blob64), blob(y, Blob64)], check=[0, 1], rtol=rtol)


# -- in place --------------------------------------------------------------------

IN_PLACE = [
    ("ReLU", ""), ("ReLU", "relu_param { negative_slope: 0.2 }"), ("Sigmoid", ""), ("TanH", ""),
    ("BNLL", ""), ("ELU", ""), ("Swish", ""), ("Exp", ""), ("Log", ""), ("Power", "power_param { power: 3 }"),
    ("Clip", "clip_param { min: -0.3 max: 0.4 }"), ("PReLU", ""), ("Dropout", ""),
]


@pytest.mark.parametrize("type_name, params", IN_PLACE, ids=[t + ("_" + p.split()[0] if p else "")
                                                              for t, p in IN_PLACE])
def test_in_place_matches_out_of_place(type_name, params):
    x = np.abs(X) + 0.1 if type_name == "Log" else X
    dy = R.standard_normal(X.shape)
    results = []
    for in_place in (False, True):
        set_random_seed(11)
        layer = make_layer(type_name, params, tops=("x",) if in_place else ("y",))
        b = blob(x)
        t = b if in_place else Blob()
        layer.setup([b], [t])
        layer.forward([b], [t])
        y = t.data.copy()
        t.diff[...] = dy
        layer.backward([t], [True], [b])
        results.append((y, b.diff.copy(), [pb.diff.copy() for pb in layer.blobs]))
    (y0, g0, p0), (y1, g1, p1) = results
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_allclose(g0, g1, rtol=1e-6)
    for a, c in zip(p0, p1):
        np.testing.assert_allclose(a, c, rtol=1e-6)


def test_absval_refuses_in_place():
    layer = make_layer("AbsVal", tops=("x",))
    b = blob(X)
    with pytest.raises(LayerError, match="in place"):
        layer.setup([b], [b])


def test_threshold_forward_and_no_gradient():
    layer = make_layer("Threshold", "threshold_param { threshold: 0.2 }")
    b, t = blob(X), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    np.testing.assert_array_equal(t.data, (X > np.float32(0.2)).astype(np.float32))
    with pytest.raises(LayerError, match="Threshold"):
        layer.backward([t], [True], [b])


def test_prelu_default_slope_is_quarter_and_param_diffs_accumulate():
    layer = make_layer("PReLU")
    b, t = blob(X), Blob()
    layer.setup([b], [t])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, np.full(3, 0.25, np.float32))
    layer.forward([b], [t])
    t.diff[...] = 1
    layer.blobs[0].diff[...] = 0
    layer.backward([t], [True], [b])
    once = layer.blobs[0].diff.copy()
    layer.backward([t], [True], [b])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once)


# -- Dropout ---------------------------------------------------------------------

def test_dropout_train_mask_scale_and_determinism():
    x = np.ones((50, 40), np.float32)
    outs = []
    for _ in range(2):
        set_random_seed(5)
        layer = make_layer("Dropout", "dropout_param { dropout_ratio: 0.3 }")
        b, t = blob(x), Blob()
        layer.setup([b], [t])
        layer.forward([b], [t])
        outs.append(t.data.copy())
    y = outs[0]
    np.testing.assert_array_equal(outs[0], outs[1])
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.05
    np.testing.assert_allclose(y[kept], np.float32(1) * np.float32(1 / 0.7))
    t.diff[...] = 2
    layer.backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, 2 * t.data)


def test_dropout_test_phase_is_identity():
    layer = make_layer("Dropout", "dropout_param { dropout_ratio: 0.6 }", phase="TEST")
    b, t = blob(X), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    np.testing.assert_array_equal(t.data, b.data)
    t.diff[...] = 3
    layer.backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, 3)


# -- softmax and SoftmaxWithLoss -------------------------------------------------------

def test_softmax_is_stable_and_sums_to_one():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]], np.float32)
    p = softmax(x, axis=1)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(p[1], 1 / 3, rtol=1e-6)
    dy = np.ones_like(p)
    np.testing.assert_allclose(softmax_backward(p, dy, axis=1), 0, atol=1e-7)


def run_loss(type_name, params, *arrays, tops=("loss",)):
    layer = make_layer(type_name, params, bottoms=tuple("b%d" % i for i in range(len(arrays))), tops=tops)
    bottoms = [blob(a) for a in arrays]
    top = [Blob() for _ in tops]
    layer.setup(bottoms, top)
    layer.forward(bottoms, top)
    return layer, bottoms, top


def test_softmax_loss_normalizations_by_hand():
    x = R.standard_normal((2, 3, 2)).astype(np.float32)
    lab = np.array([[0, 9], [2, 1]], np.float32)       # one ignored
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    nll = -np.log([p[0, 0, 0], p[1, 2, 0], p[1, 1, 1]]).sum()
    expected = {"VALID": nll / 3, "FULL": nll / 4, "BATCH_SIZE": nll / 2, "NONE": nll}
    for mode, want in expected.items():
        _, _, top = run_loss("SoftmaxWithLoss", "loss_param { ignore_label: 9 normalization: %s }" % mode, x, lab)
        assert top[0].shape == ()
        np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    _, _, top = run_loss("SoftmaxWithLoss", "loss_param { ignore_label: 9 normalize: false }", x, lab)
    np.testing.assert_allclose(float(top[0].data), nll / 2, rtol=1e-5)


def test_softmax_loss_second_top_probabilities_and_loss_weight():
    x = R.standard_normal((4, 5)).astype(np.float32)
    lab = np.array([0, 1, 4, 2], np.float32)
    layer, bottoms, top = run_loss("SoftmaxWithLoss", "", x, lab, tops=("loss", "prob"))
    np.testing.assert_allclose(top[1].data, softmax(x.astype(np.float64), 1), rtol=1e-5)
    top[0].diff[...] = 3.0
    layer.backward(top, [True, False], bottoms)
    want = softmax(x.astype(np.float64), 1)
    want[np.arange(4), lab.astype(int)] -= 1
    np.testing.assert_allclose(bottoms[0].diff, 3.0 * want / 4, rtol=1e-5, atol=1e-7)
    assert layer.is_loss and not layer.allow_force_backward(1)


def test_softmax_loss_errors_name_the_problem():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(LayerError, match=r"label values must lie in \[0, 3\)"):
        run_loss("SoftmaxWithLoss", "", x, np.array([0, 3], np.float32))
    with pytest.raises(LayerError, match="number of labels must match"):
        run_loss("SoftmaxWithLoss", "", np.zeros((2, 3, 2), np.float32), np.zeros(2, np.float32))
    layer, bottoms, top = run_loss("SoftmaxWithLoss", "", x, np.array([0, 1], np.float32))
    with pytest.raises(LayerError, match="labels"):
        layer.backward(top, [True, True], bottoms)


def test_infogain_source_file_equals_bottom(tmp_path):
    x = R.standard_normal((3, 4)).astype(np.float32)
    lab = np.array([0, 3, 1], np.float32)
    h = np.random.default_rng(2).uniform(0, 1, (4, 4)).astype(np.float32)
    path = tmp_path / "H.binaryproto"
    path.write_bytes(blob(h.reshape(1, 1, 4, 4)).to_proto().SerializeToString())
    _, _, from_file = run_loss("InfogainLoss", "infogain_loss_param { source: '%s' }" % path, x, lab)
    _, _, from_bottom = run_loss("InfogainLoss", "", x, lab, h.reshape(1, 1, 4, 4))
    np.testing.assert_allclose(from_file[0].data, from_bottom[0].data, rtol=1e-6)
    with pytest.raises(LayerError, match="source"):
        run_loss("InfogainLoss", "infogain_loss_param { source: '%s' }" % (tmp_path / "missing"), x, lab)


def test_sigmoid_cross_entropy_defaults_to_batch_size():
    x = np.array([[0.5, -2.0], [30.0, -30.0]], np.float32)
    t = np.array([[1, 0], [1, 1]], np.float32)
    _, _, top = run_loss("SigmoidCrossEntropyLoss", "", x, t)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    want = -(t * np.log(s) + (1 - t) * np.log(1 - s)).sum() / 2
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)


# -- Accuracy ---------------------------------------------------------------------

def test_accuracy_top_k_ties_ignore_and_per_class():
    x = np.array([[0.1, 0.5, 0.4],      # label 1: best -> hit
                  [0.3, 0.3, 0.4],      # label 0: tie with class 1, both behind 2 -> miss at top 2
                  [0.9, 0.05, 0.05],    # label 2: ignored
                  [0.2, 0.7, 0.1]],     # label 0: second -> top-2 hit
                 np.float32)
    lab = np.array([1, 0, 2, 0], np.float32)
    _, _, top = run_loss("Accuracy", "accuracy_param { top_k: 2 ignore_label: 2 }", x, lab, tops=("acc", "per"))
    assert top[0].shape == () and top[1].shape == (3,)
    np.testing.assert_allclose(float(top[0].data), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(top[1].data, [0.5, 1.0, 0.0], rtol=1e-6)
    _, _, top = run_loss("Accuracy", "", x, lab)
    np.testing.assert_allclose(float(top[0].data), 1 / 4, rtol=1e-6)  # only row 0 is a top-1 hit


def test_accuracy_all_ignored_is_zero_and_its_gradient_is_zero():
    layer, bottoms, top = run_loss("Accuracy", "accuracy_param { ignore_label: 1 }",
                                   np.zeros((2, 3), np.float32), np.ones(2, np.float32))
    assert float(top[0].data) == 0 and not layer.is_loss
    assert not layer.allow_force_backward(0)
    bottoms[0].diff[...] = 5
    layer.backward(top, [True, False], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 0)


# -- the project's shared gradient checker (Caffe's GradientChecker method) ------------

@pytest.mark.parametrize("text, shape", [
    ('type: "Dropout" name: "d" top: "y" dropout_param { dropout_ratio: 0.4 }', (2, 3, 4)),
    ('type: "PReLU" name: "p" top: "y" prelu_param { filler { type: "uniform" min: 0.1 max: 0.3 } }',
     (2, 3, 4)),
    ('type: "Swish" name: "s" top: "y"', (2, 3, 4)),
    ('type: "ELU" name: "e" top: "y"', (2, 3, 4)),
])
def test_shared_gradient_checker_on_neurons(text, shape):
    import solvers.gradient_check as gc
    gc.check_layer_gradient(text, [shape], kink=0.0, kink_range=0.02)


def test_shared_gradient_checker_on_softmax_loss():
    import solvers.gradient_check as gc
    lab = np.array([[0, 2, 1], [3, 3, 0]], np.float32)
    x = blob(R.standard_normal((2, 4, 3)).astype(np.float32))
    gc.check_layer_gradient('type: "SoftmaxWithLoss" name: "l" top: "loss"', [x, blob(lab)])
