"""RNN, LSTM and LSTMUnit: Caffe's parameter layout, cont semantics, carried state, exact BPTT.

(BVLC Caffe's own numbers for these layers are replayed in test_golden_layers.py.)
"""
import numpy as np
import pytest
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import LayerError
from solvers.blob import Blob
from solvers.gradient_check import check_layer_gradient
from solvers.layer import create_layer

from helpers import blob, rnd

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def lp_of(type_, extra="", ntop=1):
    lp = caffe_pb2.LayerParameter()
    text_format.Merge('name: "rec" type: "%s" recurrent_param { num_output: 3 %s %s }'
                      % (type_, FILLERS, extra), lp)
    lp.top.extend("t%d" % i for i in range(ntop))
    return lp


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference_lstm(x, cont, w_xc, b_c, w_hc, h, c):
    """Caffe's unrolled LSTM written step by step in float64."""
    out = []
    H = h.shape[-1]
    for t in range(x.shape[0]):
        g = x[t] @ w_xc.T + b_c + (cont[t][:, None] * h) @ w_hc.T
        i, f, o, gg = sigmoid(g[:, :H]), sigmoid(g[:, H:2 * H]), sigmoid(g[:, 2 * H:3 * H]), np.tanh(g[:, 3 * H:])
        c = cont[t][:, None] * f * c + i * gg
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def reference_rnn(x, cont, w_xh, b_h, w_hh, w_ho, b_o, h):
    out = []
    for t in range(x.shape[0]):
        h = np.tanh(x[t] @ w_xh.T + b_h + (cont[t][:, None] * h) @ w_hh.T)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out), h


CONT = [[0, 0], [1, 1], [0, 1], [1, 1]]


def test_parameter_shapes_follow_caffes_unrolled_net():
    x, cont, xs = blob(rnd(4, 2, 5)), blob(CONT), blob(rnd(2, 6))
    for type_, want in (("LSTM", [(12, 5), (12,), (12, 3)]), ("RNN", [(3, 5), (3,), (3, 3), (3, 3), (3,)])):
        layer = create_layer(lp_of(type_))
        top = [Blob()]
        layer.setup([x, cont], top)
        assert [b.shape for b in layer.blobs] == want
        assert top[0].shape == (4, 2, 3)
        layer = create_layer(lp_of(type_))
        layer.setup([x, cont, xs], [Blob()])
        want_static = want[:2] + [(want[0][0], 6)] + want[2:]
        assert [b.shape for b in layer.blobs] == want_static


def test_lstm_matches_reference_and_resets_where_cont_is_zero():
    x, cont = rnd(4, 2, 5), np.array(CONT, np.float32)
    layer = create_layer(lp_of("LSTM"))
    top = [Blob()]
    layer.setup([blob(x), blob(cont)], top)
    layer.forward([blob(x), blob(cont)], top)
    w_xc, b_c, w_hc = (b.data.astype(np.float64) for b in layer.blobs)
    zeros = np.zeros((2, 3))
    want, _, _ = reference_lstm(x, cont, w_xc, b_c, w_hc, zeros, zeros)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-6)
    # Stream 0 restarts at t=2: from there on it equals a fresh sequence.
    fresh, _, _ = reference_lstm(x[2:, :1], cont[2:, :1], w_xc, b_c, w_hc, zeros[:1], zeros[:1])
    np.testing.assert_allclose(top[0].data[2:, 0], fresh[:, 0], rtol=1e-4, atol=1e-6)


def test_rnn_matches_reference():
    x, cont = rnd(4, 2, 5), np.array(CONT, np.float32)
    layer = create_layer(lp_of("RNN"))
    top = [Blob()]
    layer.setup([blob(x), blob(cont)], top)
    layer.forward([blob(x), blob(cont)], top)
    params = [b.data.astype(np.float64) for b in layer.blobs]
    want, _ = reference_rnn(x, cont, *params, np.zeros((2, 3)))
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("type_", ["LSTM", "RNN"])
def test_final_state_carries_into_the_next_forward(type_):
    """Two forwards of T steps with cont = 1 equal one forward of 2T steps, as Caffe's h_0 := h_T copy."""
    x = rnd(6, 2, 5)
    cont = np.ones((6, 2), np.float32)
    cont[0] = 0
    long_layer = create_layer(lp_of(type_))
    long_top = [Blob()]
    long_layer.setup([blob(x), blob(cont)], long_top)
    long_layer.forward([blob(x), blob(cont)], long_top)
    layer = create_layer(lp_of(type_))
    top = [Blob()]
    layer.setup([blob(x[:3]), blob(cont[:3])], top)
    for a, b in zip(layer.blobs, long_layer.blobs):
        a.data[...] = b.data
    layer.forward([blob(x[:3]), blob(cont[:3])], top)
    first = top[0].data.copy()
    layer.forward([blob(x[3:]), blob(cont[3:])], top)
    np.testing.assert_allclose(np.concatenate([first, top[0].data]), long_top[0].data, rtol=1e-5, atol=1e-6)
    # A new batch size starts from zero state instead of reusing a mismatched one.
    ones = np.ones((3, 1), np.float32)
    layer.reshape([blob(x[:3, :1]), blob(ones)], top)
    layer.forward([blob(x[:3, :1]), blob(ones)], top)
    np.testing.assert_allclose(top[0].data, first[:, :1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("type_", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
def test_bptt_gradients(type_, static):
    bottoms = [blob(rnd(4, 2, 3)), blob(CONT)]
    if static:
        bottoms.append(blob(rnd(2, 2, seed=4)))
    result = check_layer_gradient(lp_of(type_), bottoms, stepsize=1e-3)
    assert result.ok and result.checked > 0


@pytest.mark.parametrize("type_,nstate", [("LSTM", 2), ("RNN", 1)])
def test_expose_hidden(type_, nstate):
    x, cont = rnd(3, 2, 4), np.array(CONT[:3], np.float32)
    h0 = [rnd(1, 2, 3, seed=5 + k) for k in range(nstate)]
    lp = lp_of(type_, "expose_hidden: true", ntop=1 + nstate)
    layer = create_layer(lp)
    top = [Blob() for _ in range(1 + nstate)]
    bottoms = [blob(x), blob(cont)] + [blob(h) for h in h0]
    layer.setup(bottoms, top)
    assert [t.shape for t in top[1:]] == [(1, 2, 3)] * nstate
    layer.forward(bottoms, top)
    params = [b.data.astype(np.float64) for b in layer.blobs]
    if type_ == "LSTM":
        want, h_T, c_T = reference_lstm(x, cont, *params, h0[0][0], h0[1][0])
        np.testing.assert_allclose(top[2].data[0], c_T, rtol=1e-4, atol=1e-6)
    else:
        want, h_T = reference_rnn(x, cont, *params, h0[0][0])
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(top[1].data[0], h_T, rtol=1e-4, atol=1e-6)
    # Gradients reach the initial states and flow back from the final-state tops.
    result = check_layer_gradient(create_layer(lp), [blob(x), blob(cont)] + [blob(h) for h in h0],
                                  top=[Blob() for _ in range(1 + nstate)], stepsize=1e-3)
    assert result.ok


def test_recurrent_shape_errors():
    layer = create_layer(lp_of("LSTM"))
    top = [Blob()]
    layer.setup([blob(rnd(4, 2, 3)), blob(CONT)], top)
    with pytest.raises(LayerError, match="timesteps changed"):
        layer.reshape([blob(rnd(5, 2, 3)), blob(np.ones((5, 2)))], top)
    with pytest.raises(LayerError, match="cont"):
        create_layer(lp_of("RNN")).setup([blob(rnd(4, 2, 3)), blob(np.ones((4, 3)))], [Blob()])
    with pytest.raises(LayerError, match="num_output"):
        lp = caffe_pb2.LayerParameter(name="r", type="RNN")
        create_layer(lp).setup([blob(rnd(4, 2, 3)), blob(CONT)], [Blob()])
    with pytest.raises(LayerError, match="top"):
        create_layer(lp_of("LSTM", "expose_hidden: true")).setup(
            [blob(rnd(4, 2, 3)), blob(CONT), blob(rnd(1, 2, 3)), blob(rnd(1, 2, 3))], [Blob()])


def test_lstm_unit_forward_and_gradients():
    c_prev, gates, cont = rnd(1, 3, 2), rnd(1, 3, 8, seed=1), np.array([[1, 0, 1]], np.float32)
    lp = caffe_pb2.LayerParameter(name="unit", type="LSTMUnit", top=["c", "h"])
    layer = create_layer(lp)
    bottoms, top = [blob(c_prev), blob(gates), blob(cont)], [Blob(), Blob()]
    layer.setup(bottoms, top)
    layer.forward(bottoms, top)
    g = gates[0].astype(np.float64)
    i, f, o, gg = sigmoid(g[:, :2]), sigmoid(g[:, 2:4]), sigmoid(g[:, 4:6]), np.tanh(g[:, 6:])
    c = cont[0][:, None] * f * c_prev[0] + i * gg
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top[1].data[0], o * np.tanh(c), rtol=1e-5, atol=1e-6)
    assert check_layer_gradient(create_layer(lp), [blob(c_prev), blob(gates), blob(cont)],
                                top=[Blob(), Blob()], stepsize=1e-3).ok
    with pytest.raises(LayerError, match="sequence indicators"):
        layer.backward(top, [True, True, True], bottoms)
    with pytest.raises(LayerError, match="4 \\* H"):
        create_layer(lp).setup([blob(c_prev), blob(rnd(1, 3, 7)), blob(cont)], [Blob(), Blob()])


# -- Caffe's equations, forward and backward, written independently in float64 ------------------
#
# LSTM (lstm_layer.cpp unrolls this; lstm_unit_layer.cpp is one step; gate order i, f, o, g):
#   a_t = W_xc x_t + b_c + W_hc (cont_t h_{t-1})
#   i, f, o = sigmoid(a_i, a_f, a_o); g = tanh(a_g)
#   c_t = cont_t f c_{t-1} + i g;  h_t = o tanh(c_t)
# RNN (rnn_layer.cpp): h_t = tanh(W_xh x_t + b_h + W_hh (cont_t h_{t-1})); o_t = tanh(W_ho h_t + b_o)
# BVLC Caffe's recurrent_param has no clipping_threshold (an older fork's "Lstm" layer had one);
# clipping is the solver's clip_gradients.

def lstm_forward_backward(x, cont, w_xc, b_c, w_hc, h0, c0, dtop, dh_T=None, dc_T=None):
    """Outputs and every gradient of sum(dtop * h) (+ dh_T . h_T + dc_T . c_T), by hand-written BPTT."""
    T, N, _ = x.shape
    H = h0.shape[-1]
    h, c, steps = h0, c0, []
    for t in range(T):
        hc = cont[t][:, None] * h
        a = x[t] @ w_xc.T + b_c + hc @ w_hc.T
        i, f, o, g = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 2 * H:3 * H]), np.tanh(a[:, 3 * H:])
        c_prev = c
        c = cont[t][:, None] * f * c_prev + i * g
        h = o * np.tanh(c)
        steps.append((hc, c_prev, i, f, o, g, c, h))
    out, h_T, c_T = np.stack([s[-1] for s in steps]), h, c
    grads = dict(x=np.zeros_like(x), w_xc=np.zeros_like(w_xc), b_c=np.zeros_like(b_c),
                 w_hc=np.zeros_like(w_hc))
    dh_next = np.zeros((N, H)) if dh_T is None else dh_T.copy()
    dc_next = np.zeros((N, H)) if dc_T is None else dc_T.copy()
    for t in range(T - 1, -1, -1):
        hc, c_prev, i, f, o, g, c, h = steps[t]
        k = cont[t][:, None]
        dh = dtop[t] + dh_next
        dc = dc_next + dh * o * (1 - np.tanh(c) ** 2)
        da = np.concatenate([dc * g * i * (1 - i),
                             dc * k * c_prev * f * (1 - f),
                             dh * np.tanh(c) * o * (1 - o),
                             dc * i * (1 - g * g)], axis=1)
        grads["x"][t] = da @ w_xc
        grads["w_xc"] += da.T @ x[t]
        grads["b_c"] += da.sum(axis=0)
        grads["w_hc"] += da.T @ hc
        dh_next = k * (da @ w_hc)
        dc_next = dc * k * f
    grads["h0"], grads["c0"] = dh_next, dc_next
    return out, h_T, c_T, grads


def rnn_forward_backward(x, cont, w_xh, b_h, w_hh, w_ho, b_o, h0, dtop):
    T, N, _ = x.shape
    h, hs, hcs, outs = h0, [], [], []
    for t in range(T):
        hc = cont[t][:, None] * h
        h = np.tanh(x[t] @ w_xh.T + b_h + hc @ w_hh.T)
        hs.append(h)
        hcs.append(hc)
        outs.append(np.tanh(h @ w_ho.T + b_o))
    grads = dict(x=np.zeros_like(x), w_xh=np.zeros_like(w_xh), b_h=np.zeros_like(b_h),
                 w_hh=np.zeros_like(w_hh), w_ho=np.zeros_like(w_ho), b_o=np.zeros_like(b_o))
    dh_next = np.zeros_like(h0)
    for t in range(T - 1, -1, -1):
        do = dtop[t] * (1 - outs[t] ** 2)
        grads["w_ho"] += do.T @ hs[t]
        grads["b_o"] += do.sum(axis=0)
        da = (do @ w_ho + dh_next) * (1 - hs[t] ** 2)
        grads["x"][t] = da @ w_xh
        grads["w_xh"] += da.T @ x[t]
        grads["b_h"] += da.sum(axis=0)
        grads["w_hh"] += da.T @ hcs[t]
        dh_next = cont[t][:, None] * (da @ w_hh)
    return np.stack(outs), h, grads


# Resets in the middle of the batch, in different streams at different steps.
CONT_MID = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], np.float32)


def _run(layer, bottoms, top, dtop):
    layer.forward(bottoms, top)
    for b in layer.blobs:
        b.diff[...] = 0
    top[0].diff[...] = dtop
    for t in top[1:]:
        t.diff[...] = 0
    layer.backward(top, [True, False] + [True] * (len(bottoms) - 2), bottoms)


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_lstm_forward_and_backward_match_caffes_equations_with_resets_and_carried_state():
    """Two batches: the second starts from the state the first carried (cont = 1 at t = 0 for two
    streams), with resets mid-batch; outputs, input and weight gradients equal the reference."""
    T, N, D = CONT_MID.shape[0], CONT_MID.shape[1], 4
    x1, x2 = rnd(T, N, D, seed=11), rnd(T, N, D, seed=12)
    first = np.ones((T, N), np.float32)
    first[0] = 0
    layer = create_layer(lp_of("LSTM"))
    top = [Blob()]
    layer.setup([blob(x1), blob(first)], top)
    layer.forward([blob(x1), blob(first)], top)
    w_xc, b_c, w_hc = (b.data.astype(np.float64) for b in layer.blobs)
    zeros = np.zeros((N, 3))
    _, h1, c1, _ = lstm_forward_backward(x1, first, w_xc, b_c, w_hc, zeros, zeros, np.zeros((T, N, 3)))
    dtop = rnd(T, N, 3, seed=13)
    bottoms = [blob(x2), blob(CONT_MID)]
    _run(layer, bottoms, top, dtop)
    want, _, _, grads = lstm_forward_backward(x2, CONT_MID, w_xc, b_c, w_hc, h1, c1, dtop)
    _close(top[0].data, want)
    _close(bottoms[0].diff, grads["x"])
    for blob_, name in zip(layer.blobs, ("w_xc", "b_c", "w_hc")):
        _close(blob_.diff, grads[name])


def test_lstm_expose_hidden_gradients_match_caffes_equations():
    T, N, D = CONT_MID.shape[0], CONT_MID.shape[1], 2
    x, h0, c0 = rnd(T, N, D, seed=21), rnd(1, N, 3, seed=22), rnd(1, N, 3, seed=23)
    layer = create_layer(lp_of("LSTM", "expose_hidden: true", ntop=3))
    top = [Blob(), Blob(), Blob()]
    bottoms = [blob(x), blob(CONT_MID), blob(h0), blob(c0)]
    layer.setup(bottoms, top)
    layer.forward(bottoms, top)
    dtop, dh_T, dc_T = rnd(T, N, 3, seed=24), rnd(N, 3, seed=25), rnd(N, 3, seed=26)
    for b in layer.blobs:
        b.diff[...] = 0
    top[0].diff[...], top[1].diff[...], top[2].diff[...] = dtop, dh_T[None], dc_T[None]
    layer.backward(top, [True, False, True, True], bottoms)
    params = [b.data.astype(np.float64) for b in layer.blobs]
    want, h_T, c_T, grads = lstm_forward_backward(x, CONT_MID, *params, h0[0], c0[0], dtop, dh_T, dc_T)
    _close(top[0].data, want)
    _close(top[1].data[0], h_T)
    _close(top[2].data[0], c_T)
    _close(bottoms[0].diff, grads["x"])
    _close(bottoms[2].diff[0], grads["h0"])
    _close(bottoms[3].diff[0], grads["c0"])
    for blob_, name in zip(layer.blobs, ("w_xc", "b_c", "w_hc")):
        _close(blob_.diff, grads[name])


def test_rnn_forward_and_backward_match_caffes_equations_with_resets():
    T, N, D = CONT_MID.shape[0], CONT_MID.shape[1], 4
    x = rnd(T, N, D, seed=31)
    layer = create_layer(lp_of("RNN"))
    top = [Blob()]
    bottoms = [blob(x), blob(CONT_MID)]
    layer.setup(bottoms, top)
    dtop = rnd(T, N, 3, seed=32)
    _run(layer, bottoms, top, dtop)   # carried is None: h_0 = 0 where cont_0 = 1
    params = [b.data.astype(np.float64) for b in layer.blobs]
    want, _, grads = rnn_forward_backward(x, CONT_MID, *params, np.zeros((N, 3)), dtop)
    _close(top[0].data, want)
    _close(bottoms[0].diff, grads["x"])
    for blob_, name in zip(layer.blobs, ("w_xh", "b_h", "w_hh", "w_ho", "b_o")):
        _close(blob_.diff, grads[name])


@pytest.mark.parametrize("type_", ["LSTM", "RNN"])
def test_carried_state_survives_get_state_and_set_state(type_):
    """The carried state is what a snapshot keeps, so a resumed run continues each stream exactly."""
    import json
    x, cont = rnd(3, 2, 4, seed=41), np.ones((3, 2), np.float32)
    a, b = create_layer(lp_of(type_)), create_layer(lp_of(type_))
    ta, tb = [Blob()], [Blob()]
    a.setup([blob(x), blob(cont)], ta)
    b.setup([blob(x), blob(cont)], tb)
    for p, q in zip(a.blobs, b.blobs):
        q.data[...] = p.data
    assert json.loads(json.dumps(a.get_state())) == {"carried": None}
    a.forward([blob(x), blob(cont)], ta)
    b.set_state(json.loads(json.dumps(a.get_state())))   # through JSON, as the side file stores it
    a.forward([blob(x), blob(cont)], ta)
    b.forward([blob(x), blob(cont)], tb)
    np.testing.assert_array_equal(ta[0].data, tb[0].data)
    with pytest.raises(LayerError, match="saved recurrent state"):
        b.set_state({"carried": [[[0.0] * 3]]})
    with pytest.raises(LayerError, match="not a list of number arrays"):
        b.set_state({"carried": [[["x", [1]]]]})
