"""solvers.winograd: Winograd convolution (the layers' F(2x2, 3x3), and F(2x2, 5x5) as a second
case of the general code), input and filter gradients, and the Convolution layer's use of it,
against float64 references and the im2col path."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from netspec import caffe_pb2
from solvers import winograd
from solvers.blob import Blob
from solvers.gradient_check import check_layer_gradient
from test_vision_layers import make_layer

# (N, C, H, W, K, pad, group): odd and even extents, asymmetric pads, a batch, groups, 1x1 maps
CASES = [(2, 5, 7, 9, 4, (0, 0), 1), (2, 6, 7, 9, 4, (1, 2), 2), (3, 3, 8, 5, 6, (2, 1), 1),
         (1, 2, 2, 2, 3, (1, 1), 1), (2, 4, 6, 6, 4, (1, 1), 4), (1, 3, 1, 1, 2, (1, 1), 1)]
TRANSFORMS = [winograd.F2x3, winograd.Winograd(2, 5)]


def test_matrices_compute_a_correlation():
    """Along one axis AT [(G g) * (BT d)] is the correlation of d with g, in exact fractions."""
    from fractions import Fraction
    for f in TRANSFORMS + [winograd.Winograd(4, 3), winograd.Winograd(3, 2)]:
        rng = np.random.default_rng(f.n)
        d = [Fraction(int(v)) for v in rng.integers(-9, 9, f.n)]
        g = [Fraction(int(v)) for v in rng.integers(-9, 9, f.r)]
        gt = [sum(row[k] * g[k] for k in range(f.r)) for row in f.G]
        dt = [sum(row[j] * d[j] for j in range(f.n)) for row in f.BT]
        y = [sum(row[j] * gt[j] * dt[j] for j in range(f.n)) for row in f.AT]
        assert y == [sum(g[k] * d[i + k] for k in range(f.r)) for i in range(f.m)], f


def grown(case, f):
    """A CASES entry for an r x r kernel: the image grown by r - 3, so every pad fits."""
    n, c, h, wd, k, pad, group = case
    return n, c, h + f.r - 3, wd + f.r - 3, k, pad, group


def windows(x, pad, r):
    """x zero-padded in float64, and its r x r windows (N, C, OH, OW, r, r)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    return xp, sliding_window_view(xp, (r, r), axis=(2, 3))


def reference_conv(x, w, pad, group):
    """y[n, k, i, j] = sum over c, u, v of w[k, c, u, v] x[n, c, i + u, j + v] (zero-padded), float64."""
    _, win = windows(x, pad, w.shape[-1])
    cg, kg = x.shape[1] // group, w.shape[0] // group
    return np.concatenate([np.einsum("ncijuv,kcuv->nkij", win[:, g * cg:(g + 1) * cg],
                                     w[g * kg:(g + 1) * kg].astype(np.float64)) for g in range(group)], axis=1)


def reference_gradients(x, w, pad, group, dy):
    """dx and dW of sum(y * dy) for y = reference_conv(x, w, pad, group), float64."""
    n, c, h, wd = x.shape
    cg, kg, r = c // group, w.shape[0] // group, w.shape[-1]
    xp, win = windows(x, pad, r)
    dw = np.concatenate([np.einsum("ncijuv,nkij->kcuv", win[:, g * cg:(g + 1) * cg], dy[:, g * kg:(g + 1) * kg])
                         for g in range(group)], axis=0)
    dxp = np.zeros_like(xp)
    oh, ow = dy.shape[2:]
    for g in range(group):
        for u in range(r):
            for v in range(r):
                dxp[:, g * cg:(g + 1) * cg, u:u + oh, v:v + ow] += np.einsum(
                    "nkij,kc->ncij", dy[:, g * kg:(g + 1) * kg], w[g * kg:(g + 1) * kg, :, u, v])
    return dxp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd], dw


def run_conv(f, x, w, pad, group, bias=None):
    xpad = f.pad_into(x, pad, np.full(f.padded_shape(x.shape, pad), np.nan, x.dtype))
    u = f.transform_filter(w, np.empty((f.n * f.n,) + w.shape[:2], x.dtype))
    oh, ow = x.shape[2] + 2 * pad[0] - f.r + 1, x.shape[3] + 2 * pad[1] - f.r + 1
    y = np.full((x.shape[0], w.shape[0], oh, ow), np.nan, x.dtype)
    f.conv(xpad, u, y, bias, group)
    return y


def tolerance(dtype, ref):
    return (2e-5 if dtype == np.float32 else 1e-12) * np.abs(ref).max()


@pytest.fixture(params=[None, 1], ids=["one band", "bands of one tile row"])
def bands(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(winograd, "BAND_BYTES", request.param)
        monkeypatch.setattr(winograd, "BAND_COLUMNS", request.param)


@pytest.mark.parametrize("f", TRANSFORMS, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_direct_sum(f, case, dtype, bands):
    n, c, h, wd, k, pad, group = grown(case, f)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((k, c // group, f.r, f.r)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    want = reference_conv(x, w, pad, group) + bias[:, None, None]
    got = run_conv(f, x, w, pad, group, bias)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance(dtype, want))


@pytest.mark.parametrize("f", TRANSFORMS, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_gradients_match_direct_sums(f, case, dtype, bands):
    n, c, h, wd, k, pad, group = grown(case, f)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((k, c // group, f.r, f.r)).astype(dtype)
    dy = rng.standard_normal((n, k, h + 2 * pad[0] - f.r + 1, wd + 2 * pad[1] - f.r + 1)).astype(dtype)
    want_dx, want_dw = reference_gradients(x, w, pad, group, dy.astype(np.float64))

    xpad = f.pad_into(x, pad, np.empty(f.padded_shape(x.shape, pad), dtype))
    dypad = f.pad_output(dy, np.full(f.output_gradient_shape(k, xpad.shape), np.nan, dtype))
    dw = np.full(w.shape, 3.0, dtype)          # the gradient is added to what the diff holds
    f.filter_gradient(xpad, dypad, dw, group)
    np.testing.assert_allclose(dw - 3.0, want_dw, rtol=0, atol=tolerance(dtype, want_dw) + 4 * np.finfo(dtype).eps)

    flipped = f.flipped_transposed(w, np.empty((c, k // group, f.r, f.r), dtype), group)
    dx = run_conv(f, dy, flipped, (f.r - 1 - pad[0], f.r - 1 - pad[1]), group)
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=tolerance(dtype, want_dx))


def conv_layer(c, k, pad, group=1, phase=caffe_pb2.TRAIN, kernel=3):
    return make_layer('name: "c" type: "Convolution" convolution_param { num_output: %d kernel_size: %d '
                      'pad: %d group: %d weight_filler { type: "gaussian" std: 0.1 } '
                      'bias_filler { type: "gaussian" std: 1 } }' % (k, kernel, pad, group), phase)


def forward_backward(layer, x, dy, params=None):
    bottom, top = [Blob(x.shape)], [Blob()]
    bottom[0].data[...] = x
    layer.setup(bottom, top)
    for p, value in zip(layer.blobs, params or []):
        p.data[...] = value
    layer.forward(bottom, top)
    y = top[0].data.copy()
    top[0].diff[...] = dy
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True], bottom)
    return y, bottom[0].diff.copy(), [p.diff.copy() for p in layer.blobs]


def count_calls(monkeypatch, name):
    """Count the calls of a Winograd method (on every transform)."""
    used = []
    real = getattr(winograd.Winograd, name)
    monkeypatch.setattr(winograd.Winograd, name, lambda *a, **kw: (used.append(a[0]), real(*a, **kw))[1])
    return used


@pytest.mark.parametrize("group", [1, 2])
def test_layer_by_winograd_agrees_with_im2col(monkeypatch, group):
    """A layer big enough for the default rule takes the Winograd path, and its forward and every
    gradient equal the im2col path's to float32 rounding."""
    n, c, h, k = 2, 64, 24, 64
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    dy = rng.standard_normal((n, k, h, h)).astype(np.float32)
    params = [rng.standard_normal((k, c // group, 3, 3)).astype(np.float32),
              rng.standard_normal(k).astype(np.float32)]
    used = count_calls(monkeypatch, "conv")
    fast = forward_backward(conv_layer(c, k, 1, group), x, dy, params)
    assert len(used) == 2                          # forward, and backward's input gradient
    monkeypatch.setattr(winograd, "ENABLED", False)
    plain = forward_backward(conv_layer(c, k, 1, group), x, dy, params)
    assert len(used) == 2
    for got, want in zip([fast[0], fast[1]] + fast[2], [plain[0], plain[1]] + plain[2]):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_small_layers_keep_im2col(monkeypatch):
    used = count_calls(monkeypatch, "conv")
    forward_backward(conv_layer(16, 64, 1), np.ones((2, 16, 24, 24), np.float32), np.ones((2, 64, 24, 24), np.float32))
    forward_backward(conv_layer(64, 64, 1), np.ones((1, 64, 8, 8), np.float32), np.ones((1, 64, 8, 8), np.float32))
    forward_backward(conv_layer(64, 64, 2, kernel=5), np.ones((2, 64, 24, 24), np.float32),
                     np.ones((2, 64, 24, 24), np.float32))      # 5x5: F(2x2, 5x5) measured slower
    assert used == []


def test_test_net_remakes_kept_filters_when_weights_change():
    """A TEST-phase layer keeps its transformed filters between forwards; writing new weights
    (as pycaffe users do, net.params[...][0].data[...] = w) must show in the next forward."""
    layer = conv_layer(64, 64, 1, phase=caffe_pb2.TEST)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 64, 16, 16)).astype(np.float32)
    bottom, top = [Blob(x.shape)], [Blob()]
    bottom[0].data[...] = x
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    first = top[0].data.copy()
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, first)
    layer.blobs[0].data[...] *= -2
    layer.forward(bottom, top)
    want = reference_conv(x, layer.blobs[0].data, (1, 1), 1) + layer.blobs[1].data[:, None, None]
    np.testing.assert_allclose(top[0].data, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("group,pad", [(1, 1), (2, 0), (1, 2)])
def test_layer_gradient_check_through_winograd(monkeypatch, group, pad):
    for name in ("MIN_CHANNELS", "MIN_PIXELS", "MIN_PIXELS_KEPT"):
        monkeypatch.setattr(winograd, name, 1)
    used = count_calls(monkeypatch, "filter_gradient")
    check_layer_gradient(conv_layer(4, 4, pad, group), [(2, 4, 6, 7)])
    assert used
