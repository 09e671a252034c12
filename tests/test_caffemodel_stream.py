"""Net.copy_from reads a .caffemodel layer by layer (solvers/caffemodel.py) with the numbers the
whole-message parse gives, and hands every file it does not expect to that parse."""
import struct
from pathlib import Path

import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.errors import CaffeError
from solvers import caffemodel
from solvers.net import Net

NET = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 3 } }
"""


def weights_param(seed=0):
    """A NetParameter with seeded blobs for NET, plus a layer the net lacks."""
    rng = np.random.default_rng(seed)
    param = caffe_pb2.NetParameter(name="n")
    for name, shapes in (("conv", [(4, 3, 3, 3), (4,)]), ("extra", [(2,)]), ("ip", [(3, 36), (3,)])):
        lp = param.layer.add(name=name, type="X")
        for shape in shapes:
            b = lp.blobs.add()
            b.shape.dim.extend(shape)
            b.data.extend(rng.standard_normal(int(np.prod(shape))).astype(np.float32).tolist())
    return param


def params_of(net):
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def test_stream_equals_whole_message(tmp_path):
    param = weights_param()
    path = tmp_path / "w.caffemodel"
    path.write_bytes(param.SerializeToString())
    layers = list(caffemodel.iter_layers(str(path)))
    assert [name for name, _ in layers] == ["conv", "extra", "ip"]
    streamed, whole = Net(NET, phase="TEST"), Net(NET, phase="TEST")
    streamed.copy_from(str(path))
    whole.copy_from(param)   # a message: the whole-message path
    for name, blobs in params_of(whole).items():
        for a, b in zip(blobs, params_of(streamed)[name]):
            np.testing.assert_array_equal(a, b)
    assert np.abs(streamed.params["conv"][0].data).sum() > 0


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_unpacked_floats_fall_back_to_the_whole_parse(tmp_path):
    """Field 5 written element by element (legal protobuf, not what Caffe writes)."""
    param = weights_param(1)
    want = Net(NET, phase="TEST")
    want.copy_from(param)
    conv = param.layer[0]
    bias = conv.blobs[1]
    unpacked = _field(7, bias.shape.SerializeToString()) + b"".join(
        bytes([5 << 3 | 5]) + struct.pack("<f", v) for v in bias.data)
    weights_only = caffe_pb2.LayerParameter(name=conv.name, type=conv.type)
    weights_only.blobs.add().CopyFrom(conv.blobs[0])
    layer = weights_only.SerializeToString() + _field(7, unpacked)
    del param.layer[0]
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(_field(100, layer) + param.SerializeToString())
    with pytest.raises(caffemodel.NotStreamable):
        list(caffemodel.iter_layers(str(path)))
    net = Net(NET, phase="TEST")
    net.copy_from(str(path))
    for name in ("conv", "ip"):
        for a, b in zip(net.params[name], want.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_damaged_file_is_reported_by_the_whole_parse(tmp_path):
    data = weights_param().SerializeToString()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CaffeError) as e:
        Net(NET, phase="TEST").copy_from(str(path))
    assert str(path) in str(e.value) or "cut.caffemodel" in str(e.value)


def test_shape_mismatch_names_layer_and_file(tmp_path):
    param = weights_param()
    param.layer[2].blobs[0].shape.dim[1] = 35
    del param.layer[2].blobs[0].data[-3:]
    path = tmp_path / "wrong.caffemodel"
    path.write_bytes(param.SerializeToString())
    with pytest.raises(CaffeError, match=r"layer 'ip' blob 0: shape mismatch.*wrong.caffemodel"):
        Net(NET, phase="TEST").copy_from(str(path))


def test_golden_lenet_streams_like_the_whole_parse():
    golden = Path(__file__).resolve().parents[2] / "shared" / "golden" / "lenet" / "lenet_iter_500.caffemodel"
    if not golden.is_file():
        pytest.skip("golden LeNet weights from BVLC Caffe not found at %s" % golden)
    whole = caffe_pb2.NetParameter.FromString(golden.read_bytes())
    streamed = {name: blobs for name, blobs in caffemodel.iter_layers(str(golden))}
    for lp in whole.layer:
        assert len(streamed[lp.name]) == len(lp.blobs)
        for (meta, data, _), proto in zip(streamed[lp.name], lp.blobs):
            assert list(meta.shape.dim) == list(proto.shape.dim)
            np.testing.assert_array_equal(data, np.asarray(proto.data, np.float32))
