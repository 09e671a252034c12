"""The gradient checker catches wrong backward passes (a user's Python layer, a whole net)."""
import sys
import uuid

import numpy as np
import pytest
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import CaffeError, LayerError
from solvers.blob import Blob
from solvers.gradient_check import check_layer_gradient, check_net_gradient
from solvers.layer import create_layer

USER_LAYERS = '''
import numpy as np
from solvers.layers.python_layer import PythonLayer

class Cube(PythonLayer):
    """top = bottom ** 3; param_str "wrong" makes backward forget the factor 3."""
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data ** 3
    def backward(self, top, propagate_down, bottom):
        k = 1.0 if self.param_str == "wrong" else 3.0
        if propagate_down[0]:
            bottom[0].diff[...] = k * bottom[0].data ** 2 * top[0].diff

class Affine(PythonLayer):
    """top = a * bottom + b, learnable a and b; "wrong" drops the accumulation into b."""
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.5
        self.blobs[1].data[...] = -0.5
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data * bottom[0].data + self.blobs[1].data
    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum()
        if self.param_str != "wrong":
            self.blobs[1].diff[...] += top[0].diff.sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data * top[0].diff

class Abs(PythonLayer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        top[0].data[...] = np.abs(bottom[0].data)
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = np.sign(bottom[0].data) * top[0].diff
'''


@pytest.fixture
def mod(tmp_path, monkeypatch):
    name = "gc_layers_%s" % uuid.uuid4().hex[:8]
    (tmp_path / (name + ".py")).write_text(USER_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def py(module, cls, param_str=""):
    lp = caffe_pb2.LayerParameter(name="user", type="Python", top=["out"])
    lp.python_param.module, lp.python_param.layer, lp.python_param.param_str = module, cls, param_str
    return lp


def test_correct_python_layer_passes(mod):
    result = check_layer_gradient(py(mod, "Cube"), [(2, 3)])
    assert result.ok and result.checked == 6
    result = check_layer_gradient(py(mod, "Affine"), [(2, 3)])
    assert result.ok and result.checked == 2 + 6   # both parameters and the bottom


def test_wrong_bottom_gradient_is_caught(mod):
    with pytest.raises(LayerError) as err:
        check_layer_gradient(py(mod, "Cube", "wrong"), [(2, 3)])
    msg = str(err.value)
    assert "'user'" in msg and "bottom 0" in msg and "finite differences" in msg


def test_wrong_parameter_gradient_is_caught(mod):
    result = check_layer_gradient(py(mod, "Affine", "wrong"), [(3,)], raise_on_failure=False)
    assert not result.ok
    assert {label for label, *_ in result.failures} == {"param 1"}


def test_kinks_are_skipped(mod):
    x = Blob((4,))
    x.data[...] = [0.001, -0.002, -2.0, 1.0]
    # Objective: each top entry in turn (|x| itself; half its square would be smooth at 0).
    with pytest.raises(LayerError):   # at 0.001 and -0.002 the step crosses the kink of |x|
        check_layer_gradient(py(mod, "Abs"), [x], exhaustive=True)
    result = check_layer_gradient(py(mod, "Abs"), [x], exhaustive=True, kink=0.0, kink_range=0.01)
    assert result.ok and result.skipped == 4 * 2 and result.checked == 4 * 2


def test_exhaustive_and_single_top_objectives(mod):
    assert check_layer_gradient(py(mod, "Cube"), [(2, 2)], exhaustive=True).checked == 4 * 4
    assert check_layer_gradient(py(mod, "Cube"), [(2, 2)], top_id=0, top_data_id=3).ok
    with pytest.raises(LayerError):
        check_layer_gradient(py(mod, "Cube", "wrong"), [(2, 2)], top_id=0, top_data_id=1)


def test_float64_during_the_check_float32_after():
    layer = create_layer(text_format.Parse(
        'name: "ip" type: "InnerProduct" top: "y" inner_product_param { num_output: 2 '
        'weight_filler { type: "gaussian" std: 1 } }', caffe_pb2.LayerParameter()))
    x = Blob((3, 4))
    x.data[...] = np.random.default_rng(0).standard_normal((3, 4))
    top = [Blob()]
    result = check_layer_gradient(layer, [x], top)
    assert result.ok and result.max_error < 1e-8   # exact arithmetic up to float64 rounding
    assert x.data.dtype == top[0].data.dtype == layer.blobs[0].data.dtype == np.float32
    assert check_layer_gradient('name: "t" type: "Softmax"', [(2, 5)]).ok   # prototxt text works too


def test_in_place_layers_are_refused():
    layer = create_layer(caffe_pb2.LayerParameter(name="s", type="Softmax"))
    x = Blob((2, 3))
    with pytest.raises(LayerError, match="in place"):
        check_layer_gradient(layer, [x], [x])


def _net(mod, param_str):
    import solvers.net as net_mod
    text = '''
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                                      bias_filler { type: "gaussian" std: 0.5 } } }
        layer { name: "aff" type: "Python" bottom: "ip" top: "aff"
                python_param { module: "%s" layer: "Affine" param_str: "%s" } }
        layer { name: "loss" type: "Reduction" bottom: "aff" top: "loss" loss_weight: 1
                reduction_param { operation: SUMSQ } }
    ''' % (mod, param_str)
    net = net_mod.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    net.blobs["x"].data[...] = np.random.default_rng(1).standard_normal((3, 4))
    return net


def test_net_gradient(mod):
    net = _net(mod, "")
    result = check_net_gradient(net)
    assert result.ok and result.checked == 8 + 2 + 1 + 1
    assert all(b.data.dtype == np.float32 for b in net.blobs.values())
    with pytest.raises(CaffeError, match="learnable param 3"):
        check_net_gradient(_net(mod, "wrong"))
