"""Common layers: direct formulas, Caffe's shape rules and errors, gradients by finite differences.

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

GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def lp_of(text, phase=caffe_pb2.TRAIN):
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(text, lp)
    lp.phase = phase
    if not lp.name:
        lp.name = "layer"
    return lp


def make(text, bottoms, ntop=1, phase=caffe_pb2.TRAIN):
    layer = create_layer(lp_of(text, phase))
    top = [Blob() for _ in range(ntop)]
    layer.setup(bottoms, top)
    return layer, top


def gcheck(text, bottoms, ntop=1, **kw):
    lp = lp_of(text)
    del lp.top[:]
    lp.top.extend("t%d" % i for i in range(ntop))
    result = check_layer_gradient(lp, bottoms, **kw)
    assert result.ok and result.checked > 0
    return result


# -- InnerProduct ------------------------------------------------------------

def test_inner_product_forward_backward_and_accumulation():
    x = rnd(2, 3, 4)
    layer, top = make('type: "InnerProduct" inner_product_param { num_output: 5 %s }' % GAUSS, [blob(x)])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (5, 12) and b.shape == (5,)
    layer.forward([blob(x)], top)
    np.testing.assert_allclose(top[0].data, x.reshape(2, 12) @ w.T + b, rtol=1e-5)
    dy = rnd(2, 5, seed=1)
    top[0].diff[...] = dy
    bottom = [blob(x)]
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    for _ in range(2):  # parameter diffs accumulate, bottom diffs are overwritten
        layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * dy.T @ x.reshape(2, 12), rtol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * dy.sum(0), rtol=1e-5)
    np.testing.assert_allclose(bottom[0].diff, (dy @ w).reshape(2, 3, 4), rtol=1e-5)
    assert top[0].data.dtype == np.float32


def test_inner_product_transpose_axis_and_gradients():
    layer, top = make('type: "InnerProduct" inner_product_param { num_output: 3 transpose: true axis: 2 %s }'
                      % GAUSS, [blob(rnd(2, 4, 5))])
    assert layer.blobs[0].shape == (5, 3) and top[0].shape == (2, 4, 3)
    gcheck('type: "InnerProduct" inner_product_param { num_output: 3 transpose: true %s }' % GAUSS, [(2, 4)])
    gcheck('type: "InnerProduct" inner_product_param { num_output: 2 bias_term: false axis: -1 %s }'
           % GAUSS, [(2, 3, 4)])


def test_inner_product_rejects_changed_input_size():
    layer, top = make('type: "InnerProduct" inner_product_param { num_output: 2 %s }' % GAUSS, [blob(rnd(2, 6))])
    layer.reshape([blob(rnd(7, 6))], top)   # batch size may change
    assert top[0].shape == (7, 2)
    with pytest.raises(LayerError, match="incompatible"):
        layer.reshape([blob(rnd(2, 5))], top)


def test_inner_product_needs_num_output():
    with pytest.raises(LayerError, match="num_output"):
        make('type: "InnerProduct"', [blob(rnd(2, 3))])


# -- Embed -------------------------------------------------------------------

def test_embed_lookup_and_repeated_index_gradient():
    idx = blob([[1, 3, 1]])
    layer, top = make('type: "Embed" embed_param { num_output: 2 input_dim: 4 %s }' % GAUSS, [idx])
    layer.forward([idx], top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(top[0].data[0], w[[1, 3, 1]] + b)
    top[0].diff[...] = 1
    layer.backward(top, [False], [idx])
    np.testing.assert_allclose(layer.blobs[0].diff, [[0, 0], [2, 2], [0, 0], [1, 1]])
    with pytest.raises(LayerError, match="indices"):
        layer.backward(top, [True], [idx])
    bad = blob([[4]])
    layer.reshape([bad], top)
    with pytest.raises(LayerError, match="input_dim"):
        layer.forward([bad], top)


# -- plumbing ----------------------------------------------------------------

def test_split_shares_data_and_sums_diffs():
    x = blob(rnd(2, 3))
    layer, top = make('type: "Split"', [x], ntop=3)
    x.data[0, 0] = 42
    assert all(t.data[0, 0] == 42 for t in top)
    for k, t in enumerate(top):
        t.diff[...] = k + 1
    layer.backward(top, [True], [x])
    np.testing.assert_allclose(x.diff, 6)


def test_sharing_layers_follow_a_reallocated_bottom():
    """Split, Flatten and Reshape tops stay views of the bottom after it grows (new buffer)."""
    for text, shape_of in (('type: "Split"', lambda n: (n, 3, 2)),
                           ('type: "Flatten"', lambda n: (n, 6)),
                           ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', lambda n: (n, 6))):
        x = blob(rnd(2, 3, 2))
        layer, top = make(text, [x])
        x.reshape(5, 3, 2)                  # more items: Blob allocates a new buffer
        x.data[...] = rnd(5, 3, 2, seed=3)
        layer.reshape([x], top)
        layer.forward([x], top)
        assert top[0].shape == shape_of(5)
        np.testing.assert_array_equal(top[0].data.reshape(-1), x.data.reshape(-1))
        x.data[4, 2, 1] = 7.0               # still the same memory
        assert top[0].data.reshape(-1)[-1] == 7.0
        top[0].diff[...] = 1.5
        layer.backward(top, [True], [x])
        np.testing.assert_allclose(x.diff, 1.5)


def test_flatten_and_reshape_shapes():
    x = blob(rnd(2, 3, 4, 5))
    assert make('type: "Flatten"', [x])[1][0].shape == (2, 60)
    assert make('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [x])[1][0].shape == (2, 12, 5)
    r = 'type: "Reshape" reshape_param { shape { %s } %s }'
    assert make(r % ("dim: 0 dim: -1 dim: 4", ""), [x])[1][0].shape == (2, 15, 4)
    assert make(r % ("dim: 6", "axis: 0 num_axes: 2"), [x])[1][0].shape == (6, 4, 5)
    assert make(r % ("dim: 1", "axis: -1"), [blob(rnd(3, 4))])[1][0].shape == (3, 4, 1)
    assert make(r % ("dim: 2 dim: 2", "axis: -2 num_axes: 1"), [blob(rnd(3, 4))])[1][0].shape == (3, 2, 2)
    assert make(r % ("dim: 1", "axis: 1 num_axes: 0"), [x])[1][0].shape == (2, 1, 3, 4, 5)
    with pytest.raises(LayerError, match="at most one -1"):
        make(r % ("dim: -1 dim: -1", ""), [x])
    with pytest.raises(LayerError, match="infer"):
        make(r % ("dim: 7 dim: -1", ""), [x])
    with pytest.raises(LayerError, match="entries"):
        make(r % ("dim: 7", ""), [x])


def test_concat_and_slice_roundtrip_with_legacy_fields():
    a, b = rnd(2, 3, 2), rnd(2, 1, 2, seed=1)
    layer, top = make('type: "Concat"', [blob(a), blob(b)])
    layer.forward([blob(a), blob(b)], top)
    np.testing.assert_array_equal(top[0].data, np.concatenate([a, b], axis=1))
    layer, top2 = make('type: "Slice" slice_param { slice_dim: 1 slice_point: 3 }', [top[0]], ntop=2)
    layer.forward([top[0]], top2)
    np.testing.assert_array_equal(top2[0].data, a)
    np.testing.assert_array_equal(top2[1].data, b)
    layer, top3 = make('type: "Concat" concat_param { concat_dim: 0 }', [blob(a), blob(a)])
    assert top3[0].shape == (4, 3, 2)
    with pytest.raises(LayerError, match="incompatible"):
        make('type: "Concat" concat_param { axis: 0 }', [blob(a), blob(b)])
    with pytest.raises(LayerError, match="evenly"):
        make('type: "Slice" slice_param { axis: 1 }', [blob(a)], ntop=2)
    gcheck('type: "Concat" concat_param { axis: -1 }', [(2, 2), (2, 3)])
    gcheck('type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 3 }', [(2, 4)], ntop=3)


def test_tile_batch_reindex_filter():
    x = rnd(2, 3)
    layer, top = make('type: "Tile" tile_param { axis: 0 tiles: 2 }', [blob(x)])
    layer.forward([blob(x)], top)
    np.testing.assert_array_equal(top[0].data, np.tile(x, (2, 1)))
    gcheck('type: "Tile" tile_param { axis: 1 tiles: 3 }', [(2, 2, 2)])

    idx = blob([2, 0, 2])
    data = blob(rnd(3, 2))
    layer, top = make('type: "BatchReindex"', [data, idx])
    layer.forward([data, idx], top)
    np.testing.assert_array_equal(top[0].data, data.data[[2, 0, 2]])
    top[0].diff[...] = 1
    layer.backward(top, [True, False], [data, idx])
    np.testing.assert_array_equal(data.diff[:, 0], [1, 0, 2])
    with pytest.raises(LayerError, match="indices"):
        layer.backward(top, [True, True], [data, idx])

    sel = blob([0, 1, 1])
    layer, top = make('type: "Filter"', [data, sel])
    assert top[0].shape == (3, 2)   # Caffe's first reshape: the full batch
    layer.reshape([data, sel], top)
    layer.forward([data, sel], top)
    np.testing.assert_array_equal(top[0].data, data.data[1:])
    top[0].diff[...] = 3
    layer.backward(top, [True, False], [data, sel])
    np.testing.assert_array_equal(data.diff[:, 1], [0, 3, 3])
    with pytest.raises(LayerError, match="selector"):
        layer.backward(top, [True, True], [data, sel])


def test_input_dummydata_parameter_silence():
    _, top = make('type: "Input" input_param { shape { dim: 2 dim: 3 } }', [], ntop=2)
    assert top[0].shape == top[1].shape == (2, 3)
    _, top = make('type: "Input" input_param { shape { dim: 2 } shape { dim: 4 dim: 1 } }', [], ntop=2)
    assert top[0].shape == (2,) and top[1].shape == (4, 1)

    layer, top = make('type: "DummyData" dummy_data_param { num: 2 channels: 3 height: 1 width: 2 '
                      'data_filler { type: "constant" value: 0.5 } }', [])
    assert top[0].shape == (2, 3, 1, 2) and np.all(top[0].data == 0.5)
    layer, top = make('type: "DummyData" dummy_data_param { shape { dim: 4 } shape { dim: 2 dim: 2 } '
                      'data_filler { type: "constant" value: 1 } data_filler { type: "gaussian" } }', [], ntop=2)
    assert np.all(top[0].data == 1)
    first = top[1].data.copy()
    layer.forward([], top)
    assert not np.array_equal(first, top[1].data)   # random fillers refill every forward
    _, top = make('type: "DummyData" dummy_data_param { shape { dim: 3 } }', [])
    assert np.all(top[0].data == 0)

    layer, top = make('type: "Parameter" parameter_param { shape { dim: 2 dim: 2 } }', [])
    layer.blobs[0].data[...] = 3
    top[0].diff[...] = 2
    assert np.all(top[0].data == 3) and np.all(layer.blobs[0].diff == 2)

    x = blob(rnd(2))
    x.diff[...] = 5
    layer, _ = make('type: "Silence"', [x], ntop=0)
    layer.backward([], [True], [x])
    assert np.all(x.diff == 0)


# -- arithmetic ----------------------------------------------------------------

def test_eltwise_ops_and_gradients():
    a, b = rnd(2, 3), rnd(2, 3, seed=1)
    layer, top = make('type: "Eltwise" eltwise_param { operation: SUM coeff: 2 coeff: -1 }', [blob(a), blob(b)])
    layer.forward([blob(a), blob(b)], top)
    np.testing.assert_allclose(top[0].data, 2 * a - b, rtol=1e-6)
    ties = [blob([[1.0, 2.0]]), blob([[1.0, 1.0]])]
    layer, top = make('type: "Eltwise" eltwise_param { operation: MAX }', ties)
    layer.forward(ties, top)
    top[0].diff[...] = 1
    layer.backward(top, [True, True], ties)
    np.testing.assert_array_equal(ties[0].diff, [[1, 1]])   # the first bottom wins ties
    np.testing.assert_array_equal(ties[1].diff, [[0, 0]])
    with pytest.raises(LayerError, match="coeff"):
        make('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 1 }', [blob(a), blob(b)])
    with pytest.raises(LayerError, match="shape"):
        make('type: "Eltwise"', [blob(a), blob(rnd(3, 2))])
    gcheck('type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 }', [(2, 3)] * 3)
    gcheck('type: "Eltwise" eltwise_param { operation: PROD }', [(2, 3)] * 3)
    gcheck('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }', [(2, 3)] * 2)
    gcheck('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3)] * 3)


def test_scale_and_bias():
    x = rnd(2, 3, 4)
    layer, top = make('type: "Scale"', [blob(x)])
    assert layer.blobs[0].shape == (3,) and np.all(layer.blobs[0].data == 1)   # Caffe's default scale
    layer, top = make('type: "Scale" scale_param { axis: 1 num_axes: -1 bias_term: true }', [blob(x)])
    assert [b.shape for b in layer.blobs] == [(3, 4), (3, 4)]
    s = rnd(3, seed=2)
    layer, top = make('type: "Scale" scale_param { bias_term: true }', [blob(x), blob(s)])
    assert [b.shape for b in layer.blobs] == [(3,)]
    layer.blobs[0].data[...] = 0.25
    layer.forward([blob(x), blob(s)], top)
    np.testing.assert_allclose(top[0].data, x * s[None, :, None] + 0.25, rtol=1e-6)
    with pytest.raises(LayerError, match="does not match"):
        make('type: "Scale"', [blob(x), blob(rnd(4))])
    filler = 'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'
    gcheck('type: "Scale" scale_param { bias_term: true %s }' % filler, [(2, 3, 2)])
    gcheck('type: "Scale" scale_param { axis: 0 }', [(2, 3, 2), (2, 3)])
    gcheck('type: "Scale" scale_param { axis: 0 }', [(2, 3), ()])
    gcheck('type: "Bias" bias_param { axis: 1 num_axes: 2 %s }' % filler.split(" bias_")[0], [(2, 3, 2)])
    gcheck('type: "Bias" bias_param { axis: -1 }', [(2, 3, 2), (2,)])


def test_scale_in_place_backward_uses_the_input():
    x = rnd(2, 3)
    b = blob(x)
    layer = create_layer(lp_of('type: "Scale" scale_param { filler { type: "constant" value: 3 } }'))
    layer.setup([b], [b])
    layer.forward([b], [b])
    np.testing.assert_allclose(b.data, 3 * x, rtol=1e-6)
    b.diff[...] = 1
    layer.backward([b], [True], [b])
    np.testing.assert_allclose(layer.blobs[0].diff, x.sum(0), rtol=1e-5)
    np.testing.assert_allclose(b.diff, 3)


# -- normalisation and reductions ------------------------------------------------

def test_softmax_axis_and_gradient():
    x = rnd(2, 3, 4)
    layer, top = make('type: "Softmax" softmax_param { axis: 2 }', [blob(x)])
    layer.forward([blob(x)], top)
    e = np.exp(x - x.max(2, keepdims=True))
    np.testing.assert_allclose(top[0].data, e / e.sum(2, keepdims=True), rtol=1e-5)
    gcheck('type: "Softmax"', [(2, 3, 2)])
    gcheck('type: "Softmax" softmax_param { axis: -1 }', [(2, 4)])


@pytest.mark.parametrize("param", ["", "mvn_param { across_channels: true }",
                                   "mvn_param { normalize_variance: false }"])
def test_mvn(param):
    x = rnd(2, 3, 2, 2)
    layer, top = make('type: "MVN" ' + param, [blob(x)])
    layer.forward([blob(x)], top)
    rows = top[0].data.reshape(2, -1) if "across" in param else top[0].data.reshape(6, -1)
    np.testing.assert_allclose(rows.mean(1), 0, atol=1e-6)
    if "false" not in param:
        np.testing.assert_allclose(rows.std(1), 1, rtol=1e-4)
    gcheck('type: "MVN" ' + param, [(2, 3, 2, 2)])


def test_batch_norm_train_updates_statistics_and_global_uses_them():
    x = rnd(4, 2, 3)
    layer, top = make('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.5 }', [blob(x)])
    assert [b.shape for b in layer.blobs] == [(2,), (2,), (1,)]
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]   # statistics are not learned
    assert not layer.use_global_stats   # TRAIN: batch statistics
    layer.forward([blob(x)], top)
    mean, var = x.mean((0, 2)), x.var((0, 2))
    np.testing.assert_allclose(top[0].data, (x - mean[None, :, None]) / np.sqrt(var + 1e-5)[None, :, None],
                               rtol=1e-4, atol=1e-5)
    layer.forward([blob(x)], top)
    np.testing.assert_allclose(layer.blobs[2].data, [1.5])
    np.testing.assert_allclose(layer.blobs[0].data, 1.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].data, 1.5 * var * 12 / 11, rtol=1e-5)

    test_layer, ttop = make('type: "BatchNorm"', [blob(x)], phase=caffe_pb2.TEST)
    assert test_layer.use_global_stats   # TEST: stored statistics by default
    for src, dst in zip(layer.blobs, test_layer.blobs):
        dst.data[...] = src.data
    test_layer.forward([blob(x)], ttop)
    np.testing.assert_allclose(ttop[0].data, top[0].data * np.sqrt(var + 1e-5)[None, :, None]
                               / np.sqrt(var * 12 / 11 + 1e-5)[None, :, None], rtol=1e-4, atol=1e-5)
    fresh, ftop = make('type: "BatchNorm"', [blob(x)], phase=caffe_pb2.TEST)
    fresh.forward([blob(x)], ftop)   # scale factor 0: statistics read as zero
    np.testing.assert_allclose(ftop[0].data, x / np.sqrt(1e-5), rtol=1e-4)


def test_batch_norm_gradients():
    gcheck('type: "BatchNorm" batch_norm_param { use_global_stats: false }', [(3, 2, 2)], check_params=False)
    layer = create_layer(lp_of('type: "BatchNorm"', caffe_pb2.TEST))
    bottom, top = [blob(rnd(3, 2))], [Blob()]
    layer.setup(bottom, top)
    layer.blobs[1].data[...] = [4.0, 9.0]
    layer.blobs[2].data[...] = 1
    assert check_layer_gradient(layer, bottom, top, check_params=False).ok


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
def test_reduction(op):
    x = rnd(2, 3, 4)
    layer, top = make('type: "Reduction" reduction_param { operation: %s axis: 1 coeff: 2 }' % op, [blob(x)])
    layer.forward([blob(x)], top)
    f = {"SUM": lambda a: a.sum(1), "ASUM": lambda a: np.abs(a).sum(1),
         "SUMSQ": lambda a: (a * a).sum(1), "MEAN": lambda a: a.mean(1)}[op]
    np.testing.assert_allclose(top[0].data, 2 * f(x.reshape(2, 12)), rtol=1e-5)
    gcheck('type: "Reduction" reduction_param { operation: %s axis: -1 coeff: -0.5 }' % op, [(2, 3)],
           kink_range=0.02 if op == "ASUM" else -1)
    _, top0 = make('type: "Reduction" reduction_param { operation: %s }' % op, [blob(x)])
    assert top0[0].shape == ()


def test_argmax_ties_prefer_the_later_index_and_shapes():
    x = blob([[1.0, 3.0, 3.0, 0.0]])
    layer, top = make('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [x])
    layer.forward([x], top)
    assert top[0].shape == (1, 2, 2)
    np.testing.assert_array_equal(top[0].data[0], [[2, 1], [3, 3]])
    y = blob(rnd(2, 3, 4))
    layer, top = make('type: "ArgMax" argmax_param { axis: 1 top_k: 2 out_max_val: true }', [y])
    layer.forward([y], top)
    np.testing.assert_allclose(top[0].data, -np.sort(-y.data, axis=1)[:, :2])
    layer, top = make('type: "ArgMax"', [y])
    assert top[0].shape == (2, 1, 1)
    with pytest.raises(LayerError, match="top_k"):
        make('type: "ArgMax" argmax_param { top_k: 5 axis: 2 }', [y])


def test_batch_norm_statistics_cannot_be_learned():
    with pytest.raises(LayerError, match="lr_mult"):
        make('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }', [blob(rnd(2, 3))])
    layer, _ = make('type: "BatchNorm" param { lr_mult: 0 decay_mult: 0 }', [blob(rnd(2, 3))])
    assert [(p.lr_mult, p.decay_mult) for p in layer.layer_param.param] == [(0, 0), (0, 1), (0, 1)]


def test_layers_in_a_net():
    """Through the Net: BatchNorm statistics are frozen, Split is inserted, InnerProduct learns."""
    import solvers.net as net_mod
    net = net_mod.Net(text_format.Parse('''
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" }
        layer { name: "ip" type: "InnerProduct" bottom: "bn" top: "ip"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
        layer { name: "a" type: "Reduction" bottom: "ip" top: "a" loss_weight: 1
                reduction_param { operation: SUMSQ } }
        layer { name: "b" type: "Reduction" bottom: "ip" top: "b" loss_weight: 0.5 }
    ''', caffe_pb2.NetParameter()), phase="TRAIN")
    net.blobs["x"].data[...] = rnd(4, 3)
    loss = net.forward_backward()
    ip = net.blobs["ip"].data
    assert np.isclose(loss, (ip ** 2).sum() + 0.5 * ip.sum(), rtol=1e-5)
    w_grad = (2 * ip + 0.5).T @ net.blobs["bn"].data
    np.testing.assert_allclose(net.params["ip"][0].diff, w_grad, rtol=1e-4, atol=1e-6)
    assert not any(net.layer_dict["bn"].param_propagate_down)


def test_softmax_in_place():
    x = rnd(2, 3)
    b = blob(x)
    layer = create_layer(lp_of('type: "Softmax"'))
    layer.setup([b], [b])
    layer.forward([b], [b])
    e = np.exp(x - x.max(1, keepdims=True))
    y = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(b.data, y, rtol=1e-5)
    dy = rnd(2, 3, seed=1)
    b.diff[...] = dy
    layer.backward([b], [True], [b])
    np.testing.assert_allclose(b.diff, y * (dy - (dy * y).sum(1, keepdims=True)), rtol=1e-4, atol=1e-6)
