"""Vision layers: reference results, Caffe's size rules, and float64 gradient checks.

The golden cases from BVLC Caffe run in tests/test_golden_layers.py; here
the layers are checked against direct (slow, obvious) NumPy formulas and
against central finite differences computed in float64 (the layers follow
their input's dtype, so a check can feed them float64 arrays).
"""
import numpy as np
import pytest
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import CaffeError, LayerError
from solvers.blob import Blob
from solvers.layer import create_layer
from solvers.rng import set_random_seed


def make_layer(text, phase=caffe_pb2.TRAIN):
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(text, lp)
    lp.name = lp.name or "layer"
    lp.phase = phase
    return create_layer(lp)


def setup(layer, arrays, num_top=1):
    bottom = []
    for a in arrays:
        b = Blob(a.shape)
        b.data[...] = a
        bottom.append(b)
    top = [Blob() for _ in range(num_top)]
    layer.setup(bottom, top)
    return bottom, top


def to_float64(blobs):
    """Swap a set-up layer's blobs to float64 arrays (for the gradient checks)."""
    for b in blobs:
        b.data = b.data.astype(np.float64)
        b.diff = np.zeros(b.shape, dtype=np.float64)


def gradient_check(text, shapes, phase=caffe_pb2.TRAIN, positive=False, seed=0, check_params=True,
                   propagate=None, rtol=1e-6, atol=1e-8, internal=None):
    """Compare backward with central differences of L = sum(top * R), all in float64.

    ``internal(layer)`` lists work blobs a composite layer keeps (SPP's pooling
    outputs) so they too are switched to float64.
    """
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(0.1, 1.0, s) if positive else rng.standard_normal(s) for s in shapes]
    layer = make_layer(text, phase)
    bottom, top = setup(layer, arrays)
    to_float64(bottom + top + layer.blobs + (internal(layer) if internal else []))
    for b, a in zip(bottom, arrays):
        b.data[...] = a
    for p in layer.blobs:
        p.data[...] = rng.standard_normal(p.shape)
    layer.forward(bottom, top)
    weights = [rng.standard_normal(t.shape) for t in top]

    def loss():
        layer.forward(bottom, top)
        return sum(float((t.data * r).sum()) for t, r in zip(top, weights))

    for t, r in zip(top, weights):
        t.diff[...] = r
    propagate = propagate or [True] * len(bottom)
    layer.backward(top, propagate, bottom)
    checks = [("bottom_%d" % i, b, b.diff.copy()) for i, (b, p) in enumerate(zip(bottom, propagate)) if p]
    if check_params:
        checks += [("param_%d" % j, p, p.diff.copy()) for j, p in enumerate(layer.blobs)]
    eps = 1e-6
    for name, blob, grad in checks:
        flat = blob.data.reshape(-1)
        numeric = np.empty(flat.size)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = loss()
            flat[i] = keep - eps
            down = loss()
            flat[i] = keep
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad.reshape(-1), numeric, rtol=rtol, atol=atol,
                                   err_msg="%s gradient of %s" % (name, text))
    return layer


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------

def test_im2col_matches_loops_and_col2im_is_its_adjoint():
    from solvers.im2col import col2im, im2col, out_shape
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 7, 6))
    k, p, s, d = (3, 2), (1, 2), (2, 1), (1, 2)
    col = im2col(x, k, p, s, d)
    oh, ow = out_shape(x.shape[2:], k, p, s, d)
    assert col.shape == (3 * 6, 2 * oh * ow)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    for c, i, j, n, a, b in [(0, 0, 0, 0, 0, 0), (2, 1, 1, 1, oh - 1, ow - 1), (1, 2, 0, 1, 1, 2)]:
        assert col[(c * 3 + i) * 2 + j, (n * oh + a) * ow + b] == xpad[n, c, a * 2 + i, b + 2 * j]
    # <im2col(x), y> == <x, col2im(y)>, in both column orders.
    y = rng.standard_normal(col.shape)
    lhs = (col * y).sum()
    np.testing.assert_allclose((x * col2im(y, x.shape, k, p, s, d)).sum(), lhs, rtol=1e-12)
    y_last = y.reshape(18, 2, oh * ow).transpose(0, 2, 1).reshape(18, -1)  # columns (pixel, n)
    np.testing.assert_allclose((x * col2im(y_last, x.shape, k, p, s, d, batch_last=True)).sum(), lhs,
                               rtol=1e-12)


@pytest.mark.parametrize("shape,geo", [
    ((2, 3, 7, 6), ((3, 2), (1, 2), (2, 1), (1, 2))),
    ((3, 2, 5, 4, 6), ((2, 3, 2), (1, 0, 1), (1, 2, 2), (2, 1, 1))),
    ((4, 1, 9, 9), ((5, 5), (0, 0), (1, 1), (1, 1))),
])
def test_im2col_batch_last_and_per_image_layouts(shape, geo):
    """The two other column orders hold the same entries; col2im is the adjoint of each."""
    from solvers.im2col import col2im, im2col, im2col_scratch_shape
    rng = np.random.default_rng(14)
    x = rng.standard_normal(shape)
    n = shape[0]
    col = im2col(x, *geo)
    rows = col.shape[0]
    by_image = col.reshape(rows, n, -1)
    scratch = np.full(im2col_scratch_shape(shape, geo[1]), 0.0)
    last = im2col(x, *geo, batch_last=True, scratch=scratch)
    np.testing.assert_array_equal(last, by_image.transpose(0, 2, 1).reshape(rows, -1))
    again = im2col(2 * x, *geo, out=last, batch_last=True, scratch=scratch)  # buffers kept across calls
    assert again is last
    np.testing.assert_array_equal(again, 2 * by_image.transpose(0, 2, 1).reshape(rows, -1))
    per = im2col(x, *geo, per_image=True)
    assert per.shape == (n, rows, col.shape[1] // n)
    np.testing.assert_array_equal(per, by_image.transpose(1, 0, 2))
    y = rng.standard_normal(per.shape)
    np.testing.assert_allclose((x * col2im(y, x.shape, *geo, per_image=True)).sum(), (per * y).sum(),
                               rtol=1e-12)


def _col2im_by_loops(y, x_shape, kernel, pad, stride, dilation):
    """col2im written out: every column entry added to the input pixel it was read from."""
    from solvers.im2col import out_shape
    n, c = x_shape[:2]
    osp = out_shape(x_shape[2:], kernel, pad, stride, dilation)
    blocks = y.reshape((c,) + tuple(kernel) + (n,) + osp)
    acc = np.zeros((n, c) + tuple(s + 2 * p for s, p in zip(x_shape[2:], pad)))
    for idx in np.ndindex(blocks.shape):
        ch, ks, img, os_ = idx[0], idx[1:1 + len(kernel)], idx[1 + len(kernel)], idx[2 + len(kernel):]
        pos = tuple(o * st + k * d for o, st, k, d in zip(os_, stride, ks, dilation))
        acc[(img, ch) + pos] += blocks[idx]
    return acc[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, x_shape[2:]))]


@pytest.mark.parametrize("shape,geo", [
    ((2, 3, 9, 11), ((7, 7), (1, 1), (4, 4), (1, 1))),       # AlexNet-like 11x11 / 4 in small
    ((1, 2, 3, 3), ((9, 9), (4, 4), (5, 5), (1, 1))),         # FCN's k63 s32 Deconvolution in small
    ((2, 2, 8, 7), ((5, 3), (2, 0), (2, 3), (1, 1))),         # uneven kernel/stride, one axis k == s
    ((2, 1, 7, 7), ((2, 2), (0, 0), (3, 3), (1, 1))),         # stride larger than the kernel
    ((1, 2, 6, 5, 7), ((4, 3, 5), (1, 0, 2), (2, 2, 3), (1, 1, 1))),
])
def test_col2im_by_phase_is_the_adjoint_in_every_layout(shape, geo):
    """Strided kernels add by phase (ceil(k/s) adds per axis): the same sums as one add per entry."""
    from solvers.im2col import _by_phase, col2im, im2col
    assert _by_phase(shape, *geo)
    rng = np.random.default_rng(15)
    x = rng.standard_normal(shape)
    n = shape[0]
    col = im2col(x, *geo)
    y = rng.standard_normal(col.shape)
    want = _col2im_by_loops(y, shape, *geo)
    np.testing.assert_allclose(col2im(y, shape, *geo), want, rtol=1e-12, atol=1e-12)
    rows = col.shape[0]
    y_last = y.reshape(rows, n, -1).transpose(0, 2, 1).reshape(rows, -1)
    np.testing.assert_allclose(col2im(y_last, shape, *geo, batch_last=True), want, rtol=1e-12, atol=1e-12)
    y_img = y.reshape(rows, n, -1).transpose(1, 0, 2)
    np.testing.assert_allclose(col2im(y_img, shape, *geo, per_image=True), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((x * want).sum(), (col * y).sum(), rtol=1e-12)


def test_im2col_3d_adjoint():
    from solvers.im2col import col2im, im2col
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 2, 5, 4, 6))
    geo = ((2, 3, 2), (1, 0, 1), (1, 2, 2), (2, 1, 1))
    col = im2col(x, *geo)
    y = rng.standard_normal(col.shape)
    np.testing.assert_allclose((x * col2im(y, x.shape, *geo)).sum(), (col * y).sum(), rtol=1e-12)


# ---------------------------------------------------------------------------
# Convolution family
# ---------------------------------------------------------------------------

def reference_conv(x, w, b, pad, stride, dilation, group):
    """Direct 2-D convolution: for every output pixel, a dot product with the window."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for o in range(m):
        gi = o // mg
        for i in range(oh):
            for j in range(ow):
                win = xp[:, gi * cg:(gi + 1) * cg,
                         i * stride[0]:i * stride[0] + dilation[0] * (kh - 1) + 1:dilation[0],
                         j * stride[1]:j * stride[1] + dilation[1] * (kw - 1) + 1:dilation[1]]
                y[:, o, i, j] = (win * w[o]).sum(axis=(1, 2, 3)) + (b[o] if b is not None else 0)
    return y


@pytest.mark.parametrize("param,pad,stride,dil,group", [
    ("kernel_size: 3", (0, 0), (1, 1), (1, 1), 1),
    ("kernel_size: 3 pad: 1 stride: 2", (1, 1), (2, 2), (1, 1), 1),
    ("kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride_h: 1 stride_w: 2", (2, 1), (1, 2), (1, 1), 1),
    ("kernel_size: 2 group: 2 dilation: 2 pad: 1", (1, 1), (1, 1), (2, 2), 2),
    ("kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 dilation: 1 dilation: 2 group: 2",
     (0, 0), (2, 1), (1, 2), 2),
])
def test_convolution_matches_direct_formula(param, pad, stride, dil, group):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 6 %s '
                       'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" } }'
                       % param)
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape[:2] == (6, 4 // group)
    want = reference_conv(x.astype(np.float64), w, b, pad, stride, dil, group)
    assert top[0].data.dtype == np.float32
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["per_image", "batch_first", "batch_last"])
@pytest.mark.parametrize("param,pad,stride,dil,group", [
    ("kernel_size: 3 pad: 1 stride: 2", (1, 1), (2, 2), (1, 1), 1),
    ("kernel_size: 2 group: 2 dilation: 2 pad: 1", (1, 1), (1, 1), (2, 2), 2),
    ("kernel_size: 3 bias_term: false", (0, 0), (1, 1), (1, 1), 1),
])
def test_convolution_column_layouts_agree(monkeypatch, layout, param, pad, stride, dil, group):
    """Each column layout the layer may pick gives the direct formula and exact gradients
    (per_image with the bias folded into the product, with groups, and without a bias)."""
    from solvers.layers.vision import ConvolutionLayer
    monkeypatch.setattr(ConvolutionLayer, "_layout", lambda self: layout)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    text = ('type: "Convolution" convolution_param { num_output: 6 %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" } }' % param)
    layer = make_layer(text)
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    bias = layer.blobs[1].data if len(layer.blobs) > 1 else None
    want = reference_conv(x.astype(np.float64), layer.blobs[0].data, bias, pad, stride, dil, group)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-5)
    gradient_check(text, [(2, 4, 5, 6)])


@pytest.mark.parametrize("param", ["kernel_size: 3 pad: 1 stride: 2", "kernel_size: 2 group: 2 dilation: 2 pad: 1",
                                   "kernel_size: 3 bias_term: false"])
def test_convolution_big_columns_are_made_again_in_backward(monkeypatch, param):
    """Per-image columns over the keep limit are not kept: backward makes them again a few
    images at a time (one per pass here) and gives the gradients kept columns give."""
    import solvers.layers.vision as vision
    monkeypatch.setattr(vision.ConvolutionLayer, "_layout", lambda self: "per_image")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    dy = None
    grads = []
    for keep_bytes, pass_bytes in ((1 << 30, 2 << 20), (0, 1)):
        monkeypatch.setattr(vision, "_KEEP_BYTES", keep_bytes)
        monkeypatch.setattr(vision, "_PASS_BYTES", pass_bytes)
        layer = make_layer(CONV_TEXT % param)
        bottom, top = setup(layer, [x])
        rng_w = np.random.default_rng(7)
        for b in layer.blobs:
            b.data[...] = rng_w.standard_normal(b.shape)
        layer.forward(bottom, top)
        assert (0 in layer._kept) == bool(keep_bytes)
        if dy is None:
            dy = rng.standard_normal(top[0].shape).astype(np.float32)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        grads.append([bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
    for kept, again in zip(*grads):
        np.testing.assert_allclose(again, kept, rtol=1e-5, atol=1e-5)


CONV_TEXT = ('type: "Convolution" convolution_param { num_output: 6 %s '
             'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" } }')


def train_and_test_conv(text, x):
    """The same convolution (same weights) in a TRAIN and in a TEST layer, both set up on ``x``."""
    layers = [make_layer(text, caffe_pb2.TRAIN), make_layer(text, caffe_pb2.TEST)]
    blobs = [setup(layer, [x]) for layer in layers]
    for p, q in zip(layers[0].blobs, layers[1].blobs):
        q.data[...] = p.data
    return layers, blobs


@pytest.mark.parametrize("layout", ["per_image", "batch_first", "batch_last"])
@pytest.mark.parametrize("param", ["kernel_size: 3 pad: 1 stride: 2", "kernel_size: 2 group: 2 dilation: 2 pad: 1",
                                   "kernel_size: 3 bias_term: false"])
def test_convolution_forward_only_gives_the_same_bits(monkeypatch, layout, param):
    """A TEST layer keeps no columns (per-image ones are made a few images per pass,
    here 3, 3 and 1 of 7); its top is the TRAIN layer's bit for bit. A backward after
    it recomputes the columns: the gradients are the TRAIN ones bit for bit, and from
    then on it keeps them."""
    from solvers.layers import vision
    monkeypatch.setattr(vision.ConvolutionLayer, "_layout", lambda self: layout)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((7, 4, 9, 8)).astype(np.float32)
    (train, test), ((b_train, t_train), (b_test, t_test)) = train_and_test_conv(CONV_TEXT % param, x)
    assert train.need_backward and not test.need_backward
    image_bytes = 4 * int(np.prod(test._column_shape("per_image", 1)))
    monkeypatch.setattr(vision, "_PASS_BYTES", 3 * image_bytes)
    assert test._images_per_pass(4) == 3
    train.forward(b_train, t_train)
    test.forward(b_test, t_test)
    assert not test._kept and not test.column_store._entries
    np.testing.assert_array_equal(t_test[0].data, t_train[0].data)
    dy = rng.standard_normal(t_train[0].shape).astype(np.float32)
    for layer, bottom, top in ((train, b_train, t_train), (test, b_test, t_test)):
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(b_test[0].diff, b_train[0].diff)
    for p, q in zip(train.blobs, test.blobs):
        np.testing.assert_array_equal(q.diff, p.diff)
    assert test.need_backward
    test.forward(b_test, t_test)
    assert test._kept == {0}


def test_convolution_lenet_test_net_conv1_passes_give_the_same_bits():
    """LeNet's test-net conv1 (batch 100, per-image columns, 6 MB of them) runs in
    passes of a few images; the top equals the one-pass (TRAIN) result bit for bit."""
    rng = np.random.default_rng(8)
    x = rng.random((100, 1, 28, 28), dtype=np.float32)
    text = ('type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 '
            'weight_filler { type: "xavier" } bias_filler { type: "gaussian" } }')
    (train, test), ((b_train, t_train), (b_test, t_test)) = train_and_test_conv(text, x)
    assert test._layout() == "per_image" and test._images_per_pass(4) < 100
    train.forward(b_train, t_train)
    test.forward(b_test, t_test)
    np.testing.assert_array_equal(t_test[0].data, t_train[0].data)


@pytest.mark.parametrize("shape", [(3, 2, 12, 12), (3, 2, 6, 6)])   # per-image and batch-last columns
def test_convolution_layers_sharing_work_memory(shape):
    """A test layer paired with its train layer (Net.share_with) writes its columns into
    the train layer's store; the train layer then recomputes them in backward, with the
    same numbers, and takes them back at its next forward."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    (train, test), ((b_train, t_train), (b_test, t_test)) = train_and_test_conv(CONV_TEXT % "kernel_size: 3", x)
    test.share_work_memory(train)
    assert test.column_store is train.column_store
    dy = rng.standard_normal(t_train[0].shape).astype(np.float32)
    t_train[0].diff[...] = dy

    def train_backward():
        for p in train.blobs:
            p.diff[...] = 0
        train.backward(t_train, [True], b_train)
        return [b_train[0].diff.copy()] + [p.diff.copy() for p in train.blobs]

    train.forward(b_train, t_train)
    kept = train.column_store.take(train, 0, x, train._column_shape(train._layout(), 3))[0]
    want = train_backward()
    train.forward(b_train, t_train)
    test.forward(b_test, t_test)             # takes the store over
    np.testing.assert_array_equal(t_test[0].data, t_train[0].data)
    assert not train.column_store.holds(train, 0)
    assert np.shares_memory(test.column_store.take(test, 0, x, test._column_shape(test._layout(), 3))[0], kept)
    for got, w in zip(train_backward(), want):   # columns recomputed
        np.testing.assert_array_equal(got, w)
    train.forward(b_train, t_train)
    assert train.column_store.holds(train, 0) and 0 in train._kept


def test_convolution_backward_twice_after_one_forward():
    """The input gradient overwrites the kept columns; a second backward recomputes them."""
    rng = np.random.default_rng(9)
    for layout in ("per_image", "batch_last"):
        x = rng.standard_normal((2, 3, 20, 20) if layout == "per_image" else (2, 3, 6, 6)).astype(np.float32)
        layer = make_layer(CONV_TEXT % "kernel_size: 3")
        bottom, top = setup(layer, [x])
        assert layer._layout() == layout
        layer.forward(bottom, top)
        top[0].diff[...] = rng.standard_normal(top[0].shape)
        layer.backward(top, [True], bottom)
        first = [bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs]
        layer.backward(top, [True], bottom)
        np.testing.assert_array_equal(bottom[0].diff, first[0])
        for p, d in zip(layer.blobs, first[1:]):
            np.testing.assert_allclose(p.diff, 2 * d, rtol=1e-6)


def test_net_tells_layers_which_need_backward():
    """Convolutions in a TEST net, and those the net never runs backward, keep no columns."""
    from solvers.net import Net
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } } '
            'layer { name: "frozen" type: "Convolution" bottom: "data" top: "a" param { lr_mult: 0 } '
            '  param { lr_mult: 0 } convolution_param { num_output: 2 kernel_size: 3 '
            '  weight_filler { type: "gaussian" } } } '
            'layer { name: "learn" type: "Convolution" bottom: "a" top: "b" '
            '  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } } } '
            'layer { name: "loss" type: "Reduction" bottom: "b" top: "loss" loss_weight: 1 }')
    train, test = Net(text, caffe_pb2.TRAIN), Net(text, caffe_pb2.TEST)
    assert not train.layer_by_name("frozen").need_backward and train.layer_by_name("learn").need_backward
    assert not test.layer_by_name("frozen").need_backward and not test.layer_by_name("learn").need_backward
    test.share_with(train)
    x = np.random.default_rng(10).standard_normal((2, 1, 8, 8))
    for net in (train, test):
        net.blobs["data"].data[...] = x
    train.forward_backward()
    test.forward_backward()      # backward on a TEST net still works (the columns are recomputed)
    np.testing.assert_array_equal(test.blobs["b"].data, train.blobs["b"].data)
    np.testing.assert_array_equal(test.blobs["a"].diff, train.blobs["a"].diff)
    assert not train.layer_by_name("frozen")._kept


def test_tiled_max_pooling_in_passes_gives_the_same_results(monkeypatch):
    """Tiled MAX pooling runs its scratch planes a few images at a time; top, mask and
    gradient are those of one pass."""
    from solvers.layers import vision
    rng = np.random.default_rng(12)
    x = rng.standard_normal((7, 3, 8, 6)).astype(np.float32)
    x[:, :, 0, 0] = x[:, :, 0, 1]    # ties: the first maximum wins
    text = 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }'
    results = []
    for pass_bytes in (vision._PASS_BYTES, 2 * x[0].nbytes):
        monkeypatch.setattr(vision, "_PASS_BYTES", pass_bytes)
        layer = make_layer(text)
        bottom, top = setup(layer, [x], num_top=2)
        assert layer.tiled
        layer.forward(bottom, top)
        top[0].diff[...] = np.arange(top[0].count, dtype=np.float32).reshape(top[0].shape)
        layer.backward(top, [True], bottom)
        results.append([top[0].data.copy(), top[1].data.copy(), bottom[0].diff.copy()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_convolution_layout_choice():
    """Large output maps use per-image columns, small ones batch-last (LeNet's conv1 and conv2)."""
    for shape, num_output, want in (((2, 1, 28, 28), 20, "per_image"), ((2, 20, 12, 12), 50, "batch_last"),
                                    ((2, 3, 24, 24), 500, "batch_first")):
        layer = make_layer('type: "Convolution" convolution_param { num_output: %d kernel_size: 5 }'
                           % num_output)
        setup(layer, [np.zeros(shape, np.float32)])
        assert layer._layout() == want


def test_convolution_3d_matches_direct_formula():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 6, 4))
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 '
                       'kernel_size: 3 kernel_size: 2 pad: 1 stride: 2 bias_term: false '
                       'weight_filler { type: "gaussian" } }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    w = layer.blobs[0].data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1)))
    shape = top[0].shape
    assert shape == (2, 2, 3, 3, 3)
    want = np.zeros(shape)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                win = xp[:, :, 2 * a:2 * a + 2, 2 * b:2 * b + 3, 2 * c:2 * c + 2]
                want[:, :, a, b, c] = np.einsum("ncijk,mcijk->nm", win, w)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-4, atol=1e-5)


def test_convolution_axis_and_several_bottoms():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((2, 3, 7)).astype(np.float32)  # axis 1 channels, 1 spatial axis
    x1 = rng.standard_normal((2, 3, 7)).astype(np.float32)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                       'weight_filler { type: "gaussian" } }')
    b0, b1 = Blob(x0.shape), Blob(x1.shape)
    b0.data[...], b1.data[...] = x0, x1
    t0, t1 = Blob(), Blob()
    layer.setup([b0, b1], [t0, t1])
    layer.forward([b0, b1], [t0, t1])
    w = layer.blobs[0].data
    for x, t in ((x0, t0), (x1, t1)):
        want = np.stack([np.einsum("nck,mck->nm", x[:, :, i:i + 3], w) for i in range(5)], axis=-1)
        np.testing.assert_allclose(t.data, want, rtol=1e-4, atol=1e-5)


def test_convolution_param_diffs_accumulate():
    rng = np.random.default_rng(4)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 2 '
                       'weight_filler { type: "gaussian" } }')
    bottom, top = setup(layer, [rng.standard_normal((2, 2, 4, 4))])
    layer.forward(bottom, top)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward(top, [True], bottom)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d, rtol=1e-6)


def test_convolution_uses_embedded_blobs():
    lp = caffe_pb2.LayerParameter(name="c", type="Convolution")
    text_format.Merge('convolution_param { num_output: 2 kernel_size: 1 '
                      'weight_filler { type: "gaussian" } }', lp)
    w = Blob((2, 3, 1, 1))
    w.data[...] = np.arange(6).reshape(2, 3, 1, 1)
    bias = Blob((2,))
    bias.data[...] = [10, 20]
    lp.blobs.extend([w.to_proto(), bias.to_proto()])
    layer = create_layer(lp)
    bottom, top = setup(layer, [np.ones((1, 3, 2, 2), np.float32)])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0, :, 0, 0], [0 + 1 + 2 + 10, 3 + 4 + 5 + 20])


@pytest.mark.parametrize("text", [
    'convolution_param { num_output: 4 kernel_size: 2 group: 3 }',          # 4 % 3
    'convolution_param { num_output: 3 kernel_size: 2 group: 2 }',          # channels 4, out 3
    'convolution_param { num_output: 2 kernel_size: 2 kernel_h: 2 kernel_w: 2 }',
    'convolution_param { num_output: 2 }',
    'convolution_param { num_output: 2 kernel_size: 9 }',
])
def test_convolution_bad_parameters_name_the_layer(text):
    layer = make_layer('name: "conv7" type: "Convolution" ' + text)
    with pytest.raises(LayerError, match="conv7"):
        setup(layer, [np.zeros((1, 4, 5, 5), np.float32)])


def test_deconvolution_is_convolution_transposed():
    """<deconv(x), y> == <x, conv^T... >: deconv forward is conv's input gradient."""
    rng = np.random.default_rng(5)
    params = 'num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 bias_term: false'
    deconv = make_layer('type: "Deconvolution" convolution_param { %s }' % params)
    x = rng.standard_normal((2, 6, 4, 5)).astype(np.float32)
    bottom, top = setup(deconv, [x])
    deconv.blobs[0].data[...] = rng.standard_normal(deconv.blobs[0].shape)
    deconv.forward(bottom, top)
    assert top[0].shape == (2, 4, 7, 9)
    # A convolution from 4 to 6 channels with the same weights maps top-shaped to bottom-shaped.
    conv = make_layer('type: "Convolution" convolution_param { %s }' % params.replace("num_output: 4",
                                                                                      "num_output: 6"))
    y = rng.standard_normal(top[0].shape).astype(np.float32)
    cb, ct = setup(conv, [y])
    conv.blobs[0].data[...] = deconv.blobs[0].data
    conv.forward(cb, ct)
    lhs = float((top[0].data.astype(np.float64) * y).sum())
    rhs = float((x.astype(np.float64) * ct[0].data).sum())
    assert abs(lhs - rhs) < 1e-4 * max(1.0, abs(lhs))


def test_deconvolution_bilinear_upsampling():
    """FCN's fixed upsampling: group = channels, bilinear weights, kernel 4, stride 2, pad 1."""
    x = np.full((1, 3, 4, 5), 2.0, np.float32)
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 3 group: 3 kernel_size: 4 '
                       'stride: 2 pad: 1 bias_term: false weight_filler { type: "bilinear" } }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    assert top[0].shape == (1, 3, 8, 10)
    np.testing.assert_allclose(top[0].data[:, :, 1:-1, 1:-1], 2.0, rtol=1e-6)
    ramp = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5) * np.ones((1, 3, 4, 1), np.float32)
    bottom[0].data[...] = ramp
    layer.forward(bottom, top)
    # A linear ramp stays linear (half steps) away from the border.
    np.testing.assert_allclose(np.diff(top[0].data[0, 0, 3, 1:9]), 0.5, rtol=1e-5)


def test_im2col_layer_layout():
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 8, 2, 2)
    # Channel c*4 + kh*2 + kw at (i, j) holds x[c, i + kh, j + kw].
    for c in range(2):
        for kh in range(2):
            for kw in range(2):
                np.testing.assert_array_equal(top[0].data[:, c * 4 + kh * 2 + kw],
                                              x[:, c, kh:kh + 2, kw:kw + 2])


@pytest.mark.parametrize("text", [
    'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 }',
    'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 dilation: 2 pad: 2 }',
    'type: "Convolution" convolution_param { num_output: 2 kernel_h: 1 kernel_w: 3 stride_h: 2 stride_w: 1 '
    'bias_term: false }',
    'type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 }',
    'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 dilation: 2 }',
    'type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 1 }',
])
def test_convolution_family_gradients(text):
    gradient_check(text, [(2, 4, 5, 5)])


def test_convolution_3d_gradients():
    gradient_check('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 pad: 1 stride: 2 }',
                   [(1, 2, 3, 4, 3)])


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size,k,s,p,mode,want", [
    (6, 3, 2, 1, "CEIL", 4),
    (5, 2, 2, 1, "CEIL", 3),    # ceil gives 4, but that window would start in the bottom pad
    (7, 3, 2, 0, "CEIL", 3),
    (8, 3, 2, 0, "CEIL", 4),    # ceil((8-3)/2)+1 = 4: the last window hangs over the edge
    (8, 3, 2, 0, "FLOOR", 3),
    (5, 2, 2, 1, "FLOOR", 3),
])
def test_pooling_output_size(size, k, s, p, mode, want):
    layer = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: %d stride: %d pad: %d '
                       'round_mode: %s }' % (k, s, p, mode))
    _, top = setup(layer, [np.zeros((1, 1, size, size), np.float32)])
    assert top[0].shape == (1, 1, want, want)


@pytest.mark.parametrize("geo", ["kernel_size: 3 stride: 2", "kernel_size: 3 stride: 1 pad: 1",
                                 "kernel_size: 2 stride: 2", "kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2"])
def test_max_pooling_in_a_test_net_finds_its_winners_when_backward_comes(geo):
    """A TEST layer keeps no winners in forward; a backward call finds them from the bottom
    (the top, changed in place since, is left alone) and gives the TRAIN layer's gradient."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (2, 3, 8, 9)).astype(np.float32)   # many ties: the first maximum must win
    text = 'type: "Pooling" pooling_param { pool: MAX %s }' % geo
    train, test = make_layer(text), make_layer(text, caffe_pb2.TEST)
    (b1, t1), (b2, t2) = setup(train, [x]), setup(test, [x])
    assert train.need_backward and not test.need_backward
    train.forward(b1, t1)
    test.forward(b2, t2)
    np.testing.assert_array_equal(t2[0].data, t1[0].data)
    dy = rng.standard_normal(t1[0].shape).astype(np.float32)
    t1[0].diff[...] = t2[0].diff[...] = dy
    t2[0].data[...] = -7   # an in-place layer (ReLU) after the pool changed the top
    train.backward(t1, [True], b1)
    test.backward(t2, [True], b2)
    np.testing.assert_array_equal(b2[0].diff, b1[0].diff)
    assert (t2[0].data == -7).all()


def test_max_pooling_ignores_nan_as_caffe_does():
    x = np.array([[np.nan, 1], [2, np.nan]], np.float32).reshape(1, 1, 2, 2)
    layer = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', caffe_pb2.TEST)
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    assert top[0].data.item() == 2


def test_max_pooling_takes_first_maximum_and_reports_it():
    x = np.array([[3, 1, 3], [3, 2, 0], [0, 3, 3]], np.float32).reshape(1, 1, 3, 3)
    layer = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 1 }')
    bottom, top = setup(layer, [x], num_top=2)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0, 0], [[3, 3], [3, 3]])
    np.testing.assert_array_equal(top[1].data[0, 0], [[0, 2], [3, 7]])
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff[0, 0], [[1, 0, 1], [1, 0, 0], [0, 1, 0]])


def test_tiled_max_pooling_takes_first_maximum_and_reports_it():
    # 2x2 windows tiling a 2x4 input: ties everywhere, the first in row-major order wins.
    x = np.array([[1, 2, 5, 5], [2, 0, 5, 5]], np.float32).reshape(1, 1, 2, 4)
    layer = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
    bottom, top = setup(layer, [x], num_top=2)
    assert layer.tiled
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0, 0], [[2, 5]])
    np.testing.assert_array_equal(top[1].data[0, 0], [[1, 2]])
    top[0].diff[...] = [[[[3, 4]]]]
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff[0, 0], [[0, 3, 4, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("text,shape,tiled", [
    ("kernel_size: 2 stride: 2", (3, 4, 8, 6), True),
    ("kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2", (2, 3, 9, 4), True),
    ("kernel_h: 1 kernel_w: 3 stride_h: 1 stride_w: 3", (2, 2, 3, 6), True),
    ("kernel_size: 1 stride: 1", (2, 2, 3, 3), True),
    ("global_pooling: true", (2, 3, 4, 5), True),
    ("kernel_size: 2 stride: 2", (2, 3, 7, 6), False),   # the last window overhangs
    ("kernel_size: 2 stride: 2 pad: 1", (2, 3, 6, 6), False),
])
def test_tiled_max_pooling_matches_general_path(text, shape, tiled):
    """The fast path for windows that tile the input gives the general path's outputs, mask and gradient."""
    rng = np.random.default_rng(9)
    x = rng.integers(0, 3, shape).astype(np.float32)   # many ties
    dy = None
    results = []
    for force_general in (False, True):
        layer = make_layer('type: "Pooling" pooling_param { pool: MAX %s }' % text)
        bottom, top = setup(layer, [x], num_top=2)
        assert layer.tiled == tiled
        if force_general:
            layer.tiled = False
        if dy is None:
            dy = rng.standard_normal(top[0].shape).astype(np.float32)
        for _ in range(2):   # buffers kept across calls
            layer.forward(bottom, top)
            top[0].diff[...] = dy
            layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), top[1].data.copy(), bottom[0].diff.copy()))
    for fast, general in zip(*results):
        np.testing.assert_array_equal(fast, general)


def test_ave_pooling_divisor_counts_padding_up_to_the_pad_border():
    x = np.ones((1, 1, 4, 4), np.float32)
    layer = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    # Windows start at -1, 1, 3 (ceil gives 3 outputs); the last ends at the pad border 4 + 1,
    # so it counts 2 rows of which 1 is real: per axis real/size = 2/3, 3/3, 1/2.
    ramp = np.array([2 / 3, 1, 1 / 2])
    np.testing.assert_allclose(top[0].data[0, 0], np.outer(ramp, ramp), rtol=1e-6)


def test_global_pooling():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    for pool, ref in (("MAX", x.max(axis=(2, 3))), ("AVE", x.mean(axis=(2, 3)))):
        layer = make_layer('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % pool)
        bottom, top = setup(layer, [x])
        layer.forward(bottom, top)
        assert top[0].shape == (2, 3, 1, 1)
        np.testing.assert_allclose(top[0].data[..., 0, 0], ref, rtol=1e-5, atol=1e-6)


def test_pooling_bad_parameters():
    with pytest.raises(LayerError, match="kernel"):
        setup(make_layer('type: "Pooling" pooling_param { pool: MAX }'), [np.zeros((1, 1, 4, 4), np.float32)])
    with pytest.raises(LayerError, match="pad"):
        setup(make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 pad: 2 }'),
              [np.zeros((1, 1, 4, 4), np.float32)])
    with pytest.raises(LayerError, match="second top"):
        setup(make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }'),
              [np.zeros((1, 1, 4, 4), np.float32)], num_top=2)
    with pytest.raises(LayerError, match="4 axes"):
        setup(make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }'),
              [np.zeros((1, 4, 4), np.float32)])


def test_stochastic_pooling_train_samples_in_proportion_to_value():
    set_random_seed(11)
    window = np.array([1, 2, 3, 4], np.float32).reshape(2, 2)
    x = np.tile(window, (4000, 1, 1, 1))  # 4000 independent 2x2 windows
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    picks = top[0].data.reshape(-1)
    freq = np.array([(picks == v).mean() for v in (1, 2, 3, 4)])
    np.testing.assert_allclose(freq, np.array([1, 2, 3, 4]) / 10, atol=0.025)
    # The gradient goes to the sampled element only.
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert np.all(bottom[0].diff.reshape(4000, 4).sum(axis=1) == 1)
    chosen = (bottom[0].diff * x).reshape(4000, 4).sum(axis=1)
    np.testing.assert_array_equal(chosen, picks)


def test_stochastic_pooling_test_is_probability_weighted_average():
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, (2, 3, 4, 6)).astype(np.float32)
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }',
                       phase=caffe_pb2.TEST)
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    w = x.reshape(2, 3, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 3, 4)
    np.testing.assert_allclose(top[0].data, (w * w).sum(-1) / w.sum(-1), rtol=1e-5)


@pytest.mark.parametrize("text,phase,positive", [
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", caffe_pb2.TRAIN, False),
    ("pool: MAX kernel_h: 2 kernel_w: 7 stride_h: 2 stride_w: 7", caffe_pb2.TRAIN, False),   # tiled
    ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2", caffe_pb2.TRAIN, False),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", caffe_pb2.TRAIN, False),
    ("pool: AVE kernel_size: 2 stride: 2 pad: 1", caffe_pb2.TRAIN, False),
    ("pool: AVE kernel_size: 3 stride: 1", caffe_pb2.TRAIN, False),
    ("pool: AVE global_pooling: true", caffe_pb2.TRAIN, False),
    ("pool: STOCHASTIC kernel_size: 3 stride: 2", caffe_pb2.TEST, True),
    ("pool: STOCHASTIC kernel_size: 2 stride: 1", caffe_pb2.TEST, True),
])
def test_pooling_gradients(text, phase, positive):
    gradient_check('type: "Pooling" pooling_param { %s }' % text, [(2, 3, 6, 7)], phase=phase,
                   positive=positive)


# ---------------------------------------------------------------------------
# LRN, SPP, Crop
# ---------------------------------------------------------------------------

def test_lrn_across_channels_formula():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 7, 3, 4)).astype(np.float32)
    layer = make_layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.3 beta: 0.6 k: 2 }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    x64 = x.astype(np.float64)
    want = np.empty_like(x64)
    for c in range(7):
        s = (x64[:, max(0, c - 2):c + 3] ** 2).sum(axis=1)
        want[:, c] = x64[:, c] * (2 + 0.3 / 5 * s) ** -0.6
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)


def test_lrn_within_channel_formula():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.7 beta: 0.75 '
                       'norm_region: WITHIN_CHANNEL }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    x64 = x.astype(np.float64)
    sq = np.pad(x64 ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    box = sum(sq[:, :, i:i + 5, j:j + 4] for i in range(3) for j in range(3))
    np.testing.assert_allclose(top[0].data, x64 * (1 + 0.7 / 9 * box) ** -0.75, rtol=1e-5, atol=1e-6)


def test_spp_level_whose_padding_reaches_the_kernel_is_rejected():
    # 5 rows into 4 bins: kernel 2, padding 2 -- Caffe's Pooling refuses pad >= kernel too.
    with pytest.raises(LayerError, match="pad"):
        setup(make_layer('type: "SPP" spp_param { pyramid_height: 3 }'), [np.zeros((1, 1, 5, 8), np.float32)])


def test_lrn_even_size_rejected():
    with pytest.raises(LayerError, match="odd"):
        setup(make_layer('type: "LRN" lrn_param { local_size: 4 }'), [np.zeros((1, 4, 3, 3), np.float32)])


@pytest.mark.parametrize("text", [
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 1.5 }',
    'type: "LRN" lrn_param { local_size: 5 alpha: 2 beta: 0.6 }',
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }',
])
def test_lrn_gradients(text):
    gradient_check(text, [(2, 3, 5, 6)])


@pytest.mark.parametrize("pool,height", [("AVE", 3), ("MAX", 2), ("MAX", 1)])
def test_spp_gradients(pool, height):
    gradient_check('type: "SPP" spp_param { pyramid_height: %d pool: %s }' % (height, pool), [(2, 3, 8, 6)],
                   internal=lambda layer: layer.outs + [layer.scratch])


def test_spp_bins_and_single_level():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 8, 6)).astype(np.float32)
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 3 }')
    bottom, top = setup(layer, [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3 * (1 + 4 + 16))
    np.testing.assert_allclose(top[0].data[:, :3], x.max(axis=(2, 3)))
    one = make_layer('type: "SPP" spp_param { pyramid_height: 1 pool: AVE }')
    bottom, top = setup(one, [x])
    one.forward(bottom, top)
    assert top[0].shape == (2, 3, 1, 1)
    np.testing.assert_allclose(top[0].data[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_crop_forward_backward():
    rng = np.random.default_rng(11)
    a = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    b = np.zeros((2, 3, 4, 3), np.float32)
    layer = make_layer('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }')
    bottom, top = setup(layer, [a, b])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, a[:, :, 1:5, 2:5])
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    want = np.zeros_like(a)
    want[:, :, 1:5, 2:5] = 1
    np.testing.assert_array_equal(bottom[0].diff, want)
    one = make_layer('type: "Crop" crop_param { axis: 1 offset: 0 }')
    bottom, top = setup(one, [a, np.zeros((2, 2, 2, 2), np.float32)])
    one.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, a[:, :2, :2, :2])


def test_crop_too_small_names_axis():
    layer = make_layer('name: "crop1" type: "Crop" crop_param { axis: 2 offset: 3 }')
    with pytest.raises(CaffeError, match="crop1.*axis 2"):
        setup(layer, [np.zeros((1, 1, 5, 5), np.float32), np.zeros((1, 1, 3, 3), np.float32)])


def test_crop_gradient():
    gradient_check('type: "Crop" crop_param { axis: 1 offset: 1 }', [(2, 4, 5, 6), (2, 2, 3, 3)],
                   propagate=[True, False])
