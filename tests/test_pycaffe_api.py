"""pycaffe's API, in pycaffe's test style: only the import line differs from Caffe's own tests.

Every public name of ``caffe`` that the facade promises is exercised here:
Net (constructors, blobs, params, layers, forward/backward with start/end,
forward_all, set_input_arrays, save/copy_from/share_with, reshape, names),
the solvers, modes and seeds, NetSpec, caffe_pb2, Python layers, caffe.io,
caffe.draw, Classifier, and the exceptions that replace Caffe's CHECK aborts.
"""
import os
import shutil
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import solvers.caffe as caffe
from solvers.caffe import layers as L, params as P
from solvers.caffe.proto import caffe_pb2
from netspec.errors import CaffeError, DataError, NetError, ProtoError

from helpers import simple_net_file

ROOT = Path(__file__).resolve().parents[1]




def input_net_file(path, batch=2, extra=""):
    """A deploy-style net fed through an Input blob."""
    path.write_text("""name: 'deploy'
    layer { type: 'Input' name: 'data' top: 'data'
      input_param { shape { dim: %d dim: 3 dim: 6 dim: 6 } } }
    layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
      convolution_param { num_output: 4 kernel_size: 3
        weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'constant' value: 0.1 } } }
    layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip'
      inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.3 } } }
    layer { type: 'Softmax' name: 'prob' bottom: 'ip' top: 'prob' }
    %s""" % (batch, extra))
    return str(path)


@pytest.fixture
def net(tmp_path):
    caffe.set_random_seed(1701)
    return caffe.Net(simple_net_file(tmp_path / "net.prototxt", 13, ip_top="ip_blob"), caffe.TRAIN)


# -- Net -----------------------------------------------------------------------------

def test_memory(net):
    """Arrays outlive the net that made them."""
    params = sum(map(list, net.params.values()), [])
    blobs = net.blobs.values()
    del net
    total = 0
    for p in params:
        total += p.data.sum() + p.diff.sum()
    for bl in blobs:
        total += bl.data.sum() + bl.diff.sum()
    assert np.isfinite(total)


def test_blobs_params_and_layers(net):
    assert isinstance(net.blobs, OrderedDict) and isinstance(net.params, OrderedDict)
    assert list(net.blobs) == ["data", "label", "conv", "ip_blob", "loss"]
    assert list(net.params) == ["conv", "ip"]
    assert net.params["conv"][0].data.shape == (11, 2, 2, 2)
    assert net.params["conv"][1].data.shape == (11,)
    assert net.params["ip"][0].data.shape == (13, 11 * 8 * 9)
    assert net.blobs["conv"].data.dtype == np.float32
    assert [l.type for l in net.layers] == ["DummyData", "Convolution", "InnerProduct", "SoftmaxWithLoss"]
    assert net.layers[1].blobs[0] is net.params["conv"][0]
    assert list(net.layer_dict) == ["data", "conv", "ip", "loss"]
    assert net.layer_dict["conv"] is net.layers[1]
    assert net.layer_dict["conv"].type == "Convolution"
    assert list(net._layer_names) == ["data", "conv", "ip", "loss"]
    assert list(net._blob_names) == ["data", "label", "conv", "ip_blob", "loss"]
    np.testing.assert_array_equal(net.params["conv"][1].data, 2)


def test_forward_backward(net):
    out = net.forward()
    assert set(out) == {"loss"} and np.isfinite(out["loss"])
    diffs = net.backward()
    assert set(diffs) == set(net.inputs)   # no Input blobs here: nothing to return
    assert np.abs(net.params["conv"][0].diff).sum() > 0
    assert np.abs(net.blobs["data"].diff).sum() > 0   # force_backward


def test_forward_start_end(net):
    conv_blob = net.blobs["conv"]
    ip_blob = net.blobs["ip_blob"]
    sample_data = np.random.default_rng(0).uniform(size=conv_blob.data.shape).astype(np.float32)
    net.forward()
    out = net.forward(end="conv")
    assert set(out) == {"conv"}
    conv_blob.data[...] = sample_data
    forward_blob = net.forward(start="ip", end="ip")
    assert "ip_blob" in forward_blob
    manual = sample_data.reshape(5, -1) @ net.params["ip"][0].data.T + net.params["ip"][1].data
    np.testing.assert_allclose(ip_blob.data, manual, rtol=1e-5, atol=1e-5)


def test_backward_start_end(net):
    conv_blob = net.blobs["conv"]
    ip_blob = net.blobs["ip_blob"]
    sample_data = np.random.default_rng(0).uniform(size=ip_blob.data.shape).astype(np.float32)
    net.forward()
    ip_blob.diff[...] = sample_data
    backward_blob = net.backward(start="ip", end="ip")
    assert "conv" in backward_blob
    manual = (sample_data @ net.params["ip"][0].data).reshape(conv_blob.diff.shape)
    np.testing.assert_allclose(conv_blob.diff, manual, rtol=1e-4, atol=1e-5)


def test_inputs_outputs(net, tmp_path):
    assert net.inputs == []
    assert net.outputs == ["loss"]
    deploy = caffe.Net(input_net_file(tmp_path / "deploy.prototxt"), caffe.TEST)
    assert deploy.inputs == ["data"] and deploy.outputs == ["prob"]


def test_top_bottom_names(net):
    assert net.top_names == OrderedDict([("data", ["data", "label"]), ("conv", ["conv"]),
                                         ("ip", ["ip_blob"]), ("loss", ["loss"])])
    assert net.bottom_names == OrderedDict([("data", []), ("conv", ["data"]), ("ip", ["conv"]),
                                            ("loss", ["ip_blob", "label"])])


def test_blob_loss_weights(net):
    assert net.blob_loss_weights == OrderedDict([("data", 0.0), ("label", 0.0), ("conv", 0.0),
                                                 ("ip_blob", 0.0), ("loss", 1.0)])


def test_save_and_read(net, tmp_path):
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    proto = str(tmp_path / "net.prototxt")
    for net2 in (caffe.Net(proto, weights, caffe.TRAIN),          # the old signature
                 caffe.Net(proto, caffe.TRAIN, weights=weights),  # the current one
                 caffe.Net(proto, caffe.TRAIN)):                  # then copy_from
        if not np.array_equal(net2.params["conv"][0].data, net.params["conv"][0].data):
            net2.copy_from(weights)
        for name in net.params:
            for i in range(len(net.params[name])):
                np.testing.assert_array_equal(net.params[name][i].data, net2.params[name][i].data)


def test_share_with(net, tmp_path):
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    other.share_with(net)
    net.params["ip"][0].data[...] = 0.25
    np.testing.assert_array_equal(other.params["ip"][0].data, 0.25)


def test_reshape(tmp_path):
    net = caffe.Net(input_net_file(tmp_path / "deploy.prototxt"), caffe.TEST)
    net.blobs["data"].reshape(7, 3, 6, 6)
    net.reshape()
    assert net.blobs["conv"].data.shape == (7, 4, 4, 4)
    assert net.blobs["prob"].data.shape == (7, 5)


def test_forward_all(tmp_path):
    caffe.set_random_seed(3)
    net = caffe.Net(input_net_file(tmp_path / "deploy.prototxt", batch=2), caffe.TEST)
    x = np.random.default_rng(1).standard_normal((5, 3, 6, 6)).astype(np.float32)
    out = net.forward_all(blobs=["conv"], data=x)
    assert set(out) == {"prob", "conv"}
    assert out["prob"].shape == (5, 5) and out["conv"].shape == (5, 4, 4, 4)
    for i in range(0, 4, 2):   # the same as batch-by-batch forward
        np.testing.assert_allclose(out["prob"][i:i + 2], net.forward(data=x[i:i + 2])["prob"], rtol=1e-6)
    last = net.forward(data=np.concatenate([x[4:], np.zeros_like(x[:1])]))["prob"][0]
    np.testing.assert_allclose(out["prob"][4], last, rtol=1e-6)


def test_forward_backward_all(tmp_path):
    net = caffe.Net(input_net_file(tmp_path / "deploy.prototxt", batch=2, extra="force_backward: true"),
                    caffe.TEST)
    x = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(np.float32)
    g = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    blobs, diffs = net.forward_backward_all(data=x, prob=g)
    assert blobs["prob"].shape == (3, 5) and diffs["data"].shape == (3, 3, 6, 6)
    net.forward(data=x[:2])
    np.testing.assert_allclose(diffs["data"][:2], net.backward(prob=g[:2])["data"], rtol=1e-5, atol=1e-6)


def test_set_input_arrays(tmp_path):
    path = tmp_path / "mem.prototxt"
    path.write_text("""name: 'mem'
    layer { type: 'MemoryData' name: 'data' top: 'data' top: 'label'
      memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
    layer { type: 'Power' name: 'double' bottom: 'data' top: 'double' power_param { scale: 2 } }""")
    net = caffe.Net(str(path), caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    labels = np.array([3, 1, 4, 1], np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["double"].data, 2 * data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data, labels[:2])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, labels[2:])
    with pytest.raises(CaffeError, match="multiple of batch_size"):
        net.set_input_arrays(data[:3], labels[:3])


# -- exceptions instead of CHECK aborts ---------------------------------------------------

def test_bad_prototxt_path_raises(tmp_path):
    with pytest.raises(ProtoError, match="no such file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)
    with pytest.raises(CaffeError, match="not found"):
        caffe.Net(input_net_file(tmp_path / "d.prototxt"), str(tmp_path / "missing.caffemodel"), caffe.TEST)


def test_wrong_input_shape_raises(tmp_path):
    net = caffe.Net(input_net_file(tmp_path / "deploy.prototxt", batch=2), caffe.TEST)
    with pytest.raises(NetError, match="not batch sized"):
        net.forward(data=np.zeros((3, 3, 6, 6), np.float32))
    with pytest.raises(NetError, match=r"has shape \(2, 1, 6, 6\)"):
        net.forward(data=np.zeros((2, 1, 6, 6), np.float32))
    with pytest.raises(NetError, match="do not match the net's inputs"):
        net.forward(image=np.zeros((2, 3, 6, 6), np.float32))


def test_unknown_names_raise(net):
    with pytest.raises(NetError, match="no blob"):
        net.forward(blobs=["nope"])
    with pytest.raises(NetError, match="no layer 'nope'"):
        net.forward(start="nope")
    with pytest.raises(NetError, match="no blob"):
        net.backward(diffs=["nope"])
    with pytest.raises(NetError, match="MemoryData"):
        net.set_input_arrays(np.zeros((5, 2, 3, 4), np.float32), np.zeros(5, np.float32))


# -- solvers ---------------------------------------------------------------------------

SOLVER_TYPES = {"SGD": "SGDSolver", "Nesterov": "NesterovSolver", "AdaGrad": "AdaGradSolver",
                "RMSProp": "RMSPropSolver", "AdaDelta": "AdaDeltaSolver", "Adam": "AdamSolver"}


def solver_file(tmp_path, solver_type="SGD", max_iter=10, extra=""):
    net_f = simple_net_file(tmp_path / "net.prototxt", 13, ip_top="ip_blob")
    extras = {"SGD": "momentum: 0.9", "Nesterov": "momentum: 0.9", "AdaGrad": "", "RMSProp": "rms_decay: 0.98",
              "AdaDelta": "momentum: 0.95 delta: 1e-6", "Adam": "momentum: 0.9 momentum2: 0.999"}
    path = tmp_path / ("%s_solver.prototxt" % solver_type)
    base_lr = 1.0 if solver_type == "AdaDelta" else 0.01
    path.write_text("""net: '%s'
    test_iter: 3 test_interval: 5 base_lr: %g weight_decay: 0.0005
    lr_policy: 'inv' gamma: 0.0001 power: 0.75 display: 0 max_iter: %d
    snapshot_after_train: false snapshot_prefix: '%s' type: '%s' %s %s
    random_seed: 5""" % (net_f, base_lr, max_iter, tmp_path / "model", solver_type, extras[solver_type], extra))
    return str(path)


@pytest.mark.parametrize("solver_type", sorted(SOLVER_TYPES))
def test_solver_classes_and_get_solver(tmp_path, solver_type):
    path = solver_file(tmp_path, solver_type)
    solver = getattr(caffe, SOLVER_TYPES[solver_type])(path)
    assert type(solver).__name__ == SOLVER_TYPES[solver_type]
    before = solver.net.params["ip"][0].data.copy()
    solver.step(2)
    assert solver.iter == 2
    assert not np.array_equal(before, solver.net.params["ip"][0].data)
    other = caffe.get_solver(path)
    assert type(other) is type(solver)


def test_solve(tmp_path):
    solver = caffe.SGDSolver(solver_file(tmp_path, max_iter=10))
    assert solver.param.max_iter == 10 and solver.param.base_lr == pytest.approx(0.01)
    assert solver.iter == 0
    assert len(solver.test_nets) == 1
    assert solver.test_nets[0].params["ip"][0].data.shape == solver.net.params["ip"][0].data.shape
    solver.solve()
    assert solver.iter == 10
    # the test net shares the trained weights after testing
    np.testing.assert_array_equal(solver.test_nets[0].params["ip"][0].data, solver.net.params["ip"][0].data)


def test_apply_update(tmp_path):
    solver = caffe.SGDSolver(solver_file(tmp_path))
    net = solver.net
    before = net.params["conv"][0].data.copy()
    net.forward()
    net.backward()
    assert np.abs(net.params["conv"][0].diff).sum() > 0
    solver.apply_update()
    assert not np.array_equal(before, net.params["conv"][0].data)


def test_add_callback(tmp_path):
    solver = caffe.SGDSolver(solver_file(tmp_path))
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("grad"))
    solver.step(3)
    assert calls == ["start", "grad"] * 3


def test_snapshot_and_restore(tmp_path):
    path = solver_file(tmp_path)
    solver = caffe.SGDSolver(path)
    solver.step(3)
    solver.snapshot()
    model, state = tmp_path / "model_iter_3.caffemodel", tmp_path / "model_iter_3.solverstate"
    assert model.is_file() and state.is_file()
    weights = solver.net.params["conv"][0].data.copy()
    solver.step(2)
    resumed = caffe.SGDSolver(path)
    resumed.restore(str(state))
    assert resumed.iter == 3
    np.testing.assert_array_equal(resumed.net.params["conv"][0].data, weights)
    resumed.step(2)
    np.testing.assert_allclose(resumed.net.params["conv"][0].data, solver.net.params["conv"][0].data,
                               rtol=1e-6)


def test_share_weights(tmp_path):
    solver = caffe.SGDSolver(solver_file(tmp_path))
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    solver.share_weights(net)
    solver.step(1)
    np.testing.assert_array_equal(net.params["conv"][0].data, solver.net.params["conv"][0].data)


def test_bad_solver_path_raises(tmp_path):
    with pytest.raises(ProtoError, match="no such file"):
        caffe.SGDSolver(str(tmp_path / "missing_solver.prototxt"))


# -- modes, seeds, layer registry ------------------------------------------------------------

def test_modes_and_device():
    caffe.set_mode_cpu()
    caffe.set_device(0)
    import importlib.util
    if importlib.util.find_spec("cupy") is None:
        with pytest.raises(CaffeError, match="CuPy"):
            caffe.set_mode_gpu()
    caffe.set_mode_cpu()


def test_random_seed(tmp_path):
    path = simple_net_file(tmp_path / "net.prototxt", 7, ip_top="ip_blob")
    caffe.set_random_seed(42)
    a = caffe.Net(path, caffe.TRAIN).params["conv"][0].data.copy()
    caffe.set_random_seed(42)
    b = caffe.Net(path, caffe.TRAIN).params["conv"][0].data.copy()
    c = caffe.Net(path, caffe.TRAIN).params["conv"][0].data.copy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_layer_type_list():
    types = caffe.layer_type_list()
    assert types == sorted(types)
    for name in ("Convolution", "InnerProduct", "Pooling", "Data", "Python", "SoftmaxWithLoss"):
        assert name in types


def test_phase_constants():
    assert caffe.TRAIN == caffe_pb2.TRAIN == 0 and caffe.TEST == caffe_pb2.TEST == 1


# -- NetSpec and caffe_pb2 ---------------------------------------------------------------------

def test_proto_module_is_the_schema():
    import netspec.caffe_pb2
    import solvers.caffe.proto.caffe_pb2 as pb2
    assert caffe_pb2 is netspec.caffe_pb2 is pb2 is caffe.proto.caffe_pb2
    assert caffe_pb2.SolverParameter().base_lr == 0   # defaults from the schema
    assert caffe_pb2.PoolingParameter().pool == caffe_pb2.PoolingParameter.MAX


def test_netspec_to_a_running_net(tmp_path):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[4, 1, 8, 8]), dict(dim=[4])],
                                  data_filler=[dict(type="gaussian"), dict(type="constant")], ntop=2)
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=6, weight_filler=dict(type="xavier"))
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.score = L.InnerProduct(n.pool, num_output=3, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    proto = n.to_proto()
    assert isinstance(proto, caffe_pb2.NetParameter)
    auto = caffe.to_proto(n.loss)   # names made up from the types, as pycaffe's to_proto does
    assert [l.type for l in auto.layer] == [l.type for l in proto.layer]
    assert auto.layer[0].name == "DummyData1"
    path = tmp_path / "spec.prototxt"
    path.write_text(str(proto))
    net = caffe.Net(str(path), caffe.TRAIN)
    assert net.blobs["pool"].data.shape == (4, 6, 3, 3)
    loss = float(net.forward()["loss"])
    assert np.isfinite(loss) and loss > 0
    assert caffe.net_spec.NetSpec is caffe.NetSpec


class TimesTenLayer(caffe.Layer):
    """A Python layer (pycaffe's test_python_layer.py)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


def test_python_layer(tmp_path):
    path = tmp_path / "py.prototxt"
    path.write_text("""name: 'pythonnet' force_backward: true
    input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }
    layer { type: 'Python' name: 'one' bottom: 'data' top: 'one'
      python_param { module: '%s' layer: 'TimesTenLayer' } }
    layer { type: 'Python' name: 'two' bottom: 'one' top: 'two'
      python_param { module: '%s' layer: 'TimesTenLayer' } }""" % (__name__, __name__))
    net = caffe.Net(str(path), caffe.TRAIN)
    x = 8
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs["two"].data, 100 * x)
    net.blobs["two"].diff[...] = x
    net.backward()
    np.testing.assert_array_equal(net.blobs["data"].diff, 100 * x)


# -- caffe.io ------------------------------------------------------------------------------------

def test_blobproto_round_trip():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    diff = -arr
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), diff)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=list(range(6)))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)


def test_blobprotovector_round_trip():
    arrays = [np.ones((1, 2, 3, 4), np.float32), np.arange(5, dtype=np.float32)]
    s = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert len(back) == 2
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)


def test_datum_round_trip():
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(pixels, label=7)
    assert datum.label == 7 and datum.data == pixels.tobytes() and not len(datum.float_data)
    np.testing.assert_array_equal(caffe.io.datum_to_array(datum), pixels)
    floats = np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(floats)
    assert len(datum.float_data) == 24 and datum.label == 0
    np.testing.assert_allclose(caffe.io.datum_to_array(datum), floats)
    with pytest.raises(DataError, match="3-d"):
        caffe.io.array_to_datum(np.zeros((2, 2)))


def test_load_image(tmp_path):
    import cv2
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 255    # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    img = caffe.io.load_image(str(tmp_path / "blue.png"))
    assert img.shape == (5, 7, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[0, 0], [0, 0, 1])   # RGB in [0, 1]
    gray = caffe.io.load_image(str(tmp_path / "blue.png"), color=False)
    assert gray.shape == (5, 7, 1)
    np.testing.assert_allclose(gray[0, 0, 0], 0.0721, atol=1e-4)
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 4), 51, np.uint8))
    assert caffe.io.load_image(str(tmp_path / "g.png")).shape == (4, 4, 3)
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "g.png"), color=False), 0.2)
    with pytest.raises(DataError, match="cannot read"):
        caffe.io.load_image(str(tmp_path / "missing.jpg"))


def test_resize_image():
    im = np.random.default_rng(0).uniform(size=(10, 12, 3)).astype(np.float32)
    out = caffe.io.resize_image(im, (5, 6))
    assert out.shape == (5, 6, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(), im.mean(), atol=0.05)
    many = np.random.default_rng(1).uniform(size=(4, 4, 7)).astype(np.float32)
    assert caffe.io.resize_image(many, (8, 2)).shape == (8, 2, 7)
    const = np.full((3, 3, 1), 0.5, np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(const, (6, 6)), 0.5)
    nearest = caffe.io.resize_image(np.arange(4, dtype=np.float32).reshape(2, 2, 1), (4, 4), interp_order=0)
    np.testing.assert_array_equal(nearest[:, :, 0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_oversample():
    images = np.arange(2 * 6 * 8 * 3, dtype=np.float32).reshape(2, 6, 8, 3)
    crops = caffe.io.oversample(images, (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    np.testing.assert_array_equal(crops[0], images[0, :4, :4])      # top-left
    np.testing.assert_array_equal(crops[1], images[0, :4, 4:])      # top-right
    np.testing.assert_array_equal(crops[3], images[0, 2:, 4:])      # bottom-right
    np.testing.assert_array_equal(crops[4], images[0, 1:5, 2:6])    # centre
    np.testing.assert_array_equal(crops[5], images[0, :4, :4][:, ::-1])   # mirrored top-left
    np.testing.assert_array_equal(crops[10], images[1, :4, :4])


def test_transformer():
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10, 20, 30], np.float32))
    t.set_input_scale("data", 0.5)
    img = np.random.default_rng(0).uniform(size=(4, 5, 3)).astype(np.float32)
    keep = img.copy()
    x = t.preprocess("data", img)
    np.testing.assert_array_equal(img, keep)   # the caller's image is untouched
    assert x.shape == (3, 4, 5) and x.dtype == np.float32
    expected = (img.transpose(2, 0, 1)[::-1] * 255 - np.array([10, 20, 30])[:, None, None]) * 0.5
    np.testing.assert_allclose(x, expected, rtol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x), img, rtol=1e-5, atol=1e-5)
    resized = t.preprocess("data", np.zeros((8, 10, 3), np.float32))
    assert resized.shape == (3, 4, 5)
    with pytest.raises(DataError, match="not one of the net inputs"):
        t.preprocess("image", img)
    with pytest.raises(DataError, match="channel"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(DataError, match="does not match"):
        t.set_mean("data", np.zeros((3, 2, 2)))
    t.set_mean("data", np.zeros((3, 4, 5)))   # an elementwise mean of the input's size


# -- caffe.draw and tools/draw_net.py --------------------------------------------------------------

def _lenet_param():
    from netspec.io import read_net
    golden = ROOT.parent / "shared" / "golden" / "lenet" / "lenet_auto_train.prototxt"
    if not golden.is_file():
        pytest.skip("golden LeNet prototxt missing: %s" % golden)
    return read_net(str(golden))


def test_draw_dot_text():
    dot = caffe.draw.draw_net(_lenet_param(), "LR", ext="dot").decode()
    assert dot.startswith("digraph")
    assert '"conv1_Convolution" [' in dot and "kernel size: 5" in dot
    assert '(MAX Pooling)' in dot
    assert '[label="Batch 64"]' in dot and '[label="500"]' in dot
    assert '"fc1_blob" -> "relu1_ReLU"' in dot and "#90EE90" in dot   # in-place ReLU in green
    tb = caffe.draw.draw_net(_lenet_param(), "TB", ext="dot").decode()
    assert "conv1 (Convolution) kernel size: 5" in tb


def test_draw_phase_filter():
    param = caffe_pb2.NetParameter(name="phased")
    for name, phase in (("train_data", caffe.TRAIN), ("test_data", caffe.TEST)):
        layer = param.layer.add(name=name, type="Input", top=["data"])
        layer.include.add(phase=phase)
    dot_train = caffe.draw.draw_net(param, "LR", ext="dot", phase=caffe.TRAIN).decode()
    dot_all = caffe.draw.draw_net(param, "LR", ext="dot").decode()
    assert "train_data" in dot_train and "test_data" not in dot_train
    assert "train_data" in dot_all and "test_data" in dot_all


def test_draw_net_to_file_falls_back_to_dot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)          # no pydot ...
    monkeypatch.setattr(caffe.draw.shutil, "which", lambda name: None)   # ... and no Graphviz
    with pytest.warns(RuntimeWarning, match="DOT"):
        written = caffe.draw.draw_net_to_file(_lenet_param(), str(tmp_path / "net.png"))
    assert written == str(tmp_path / "net.dot")
    assert (tmp_path / "net.dot").read_text().startswith("digraph")
    assert not (tmp_path / "net.png").exists()
    with pytest.raises(caffe.draw.GraphvizMissing, match="Graphviz"):
        caffe.draw.draw_net(_lenet_param(), "LR", ext="png")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
def test_draw_net_to_png_with_graphviz(tmp_path):
    written = caffe.draw.draw_net_to_file(_lenet_param(), str(tmp_path / "net.png"), "TB")
    assert written == str(tmp_path / "net.png")
    assert (tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_net_tool(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import draw_net
    finally:
        sys.path.remove(str(ROOT / "tools"))
    _lenet_param()
    golden = ROOT.parent / "shared" / "golden" / "lenet" / "lenet_auto_train.prototxt"
    assert draw_net.main([str(golden), str(tmp_path / "lenet.dot"), "--rankdir", "TB", "--phase", "TRAIN"]) == 0
    assert "conv1 (Convolution)" in (tmp_path / "lenet.dot").read_text()
    monkeypatch.setitem(sys.modules, "pydot", None)
    monkeypatch.setattr(caffe.draw.shutil, "which", lambda name: None)
    assert draw_net.main([str(golden), str(tmp_path / "lenet.svg")]) == 1   # no SVG: a failure
    err = capsys.readouterr().err
    assert "the DOT file %s was written instead" % (tmp_path / "lenet.dot") in err
    assert draw_net.main([str(tmp_path / "missing.prototxt"), str(tmp_path / "x.png")]) == 1
    assert "no such file" in capsys.readouterr().err


# -- Classifier -----------------------------------------------------------------------------------

def test_classifier(tmp_path):
    caffe.set_random_seed(9)
    deploy = input_net_file(tmp_path / "deploy.prototxt", batch=4)
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(deploy, caffe.TEST).save(weights)
    clf = caffe.Classifier(deploy, weights, image_dims=(8, 8), raw_scale=255, channel_swap=(2, 1, 0),
                           mean=np.array([100, 110, 120], np.float32))
    assert isinstance(clf, caffe.Net)
    images = [np.random.default_rng(i).uniform(size=(10, 9, 3)).astype(np.float32) for i in range(3)]
    probs = clf.predict(images)
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    centre = clf.predict(images, oversample=False)
    assert centre.shape == (3, 5)
    # by hand: resize to 8x8, centre crop 6x6, preprocess, forward
    im = caffe.io.resize_image(images[0], (8, 8))[1:7, 1:7]
    x = clf.transformer.preprocess("data", im)
    manual = clf.forward_all(data=x[None])["prob"][0]
    np.testing.assert_allclose(centre[0], manual, rtol=1e-5, atol=1e-6)


def test_no_stray_warnings_on_import():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import importlib
        importlib.reload(caffe.io)
    assert os.path.basename(caffe.__file__) == "__init__.py"
