"""Import: prototxt -> ONNX -> prototxt gives a net with equal outputs, for the layer types whose
ONNX form maps back onto Caffe layers, for LeNet and the zoo nets; what cannot map is a clear error."""
import numpy as np
import pytest

from onnx_helpers import assert_same_outputs, fill_inputs, input_net, randomise, round_trip
from helpers import GOLDEN, ROOT, need_golden

from netspec.io import read_net
from solvers.net import Net
from solvers.onnx_export import deploy_net
from solvers.onnx_import import OnnxImportError, onnx_to_caffe


def L(type_, params="", bottoms=("data",), tops=("out",), name="l"):
    return 'layer { name: "%s" type: "%s" %s %s %s }\n' % (
        name, type_, " ".join('bottom: "%s"' % b for b in bottoms), " ".join('top: "%s"' % t for t in tops), params)


CASES = {
    "conv": (L("Convolution", "convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 "
                              "dilation: 1 group: 2 }"), [("data", (2, 4, 7, 6))], {}),
    "deconv": (L("Deconvolution", "convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 1 }"),
               [("data", (2, 2, 4, 4))], {}),
    "ip": (L("InnerProduct", "inner_product_param { num_output: 5 }"), [("data", (2, 3, 2, 2))], {}),
    "ip_axis2": (L("InnerProduct", "inner_product_param { num_output: 5 axis: 2 }"), [("data", (2, 3, 4))], {}),
    "ip_transpose": (L("InnerProduct", "inner_product_param { num_output: 5 transpose: true }"),
                     [("data", (2, 6))], {}),
    "max_pool_ceil": (L("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }"),
                      [("data", (2, 3, 8, 7))], {}),
    "ave_pool_pad": (L("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"),
                     [("data", (2, 3, 8, 7))], {}),
    "ave_pool": (L("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 }"), [("data", (2, 3, 8, 7))], {}),
    "global_pool": (L("Pooling", "pooling_param { pool: AVE global_pooling: true }"), [("data", (2, 3, 4, 5))], {}),
    "neurons": (L("ReLU", "relu_param { negative_slope: 0.1 }", tops=("a",), name="a")
                + L("Sigmoid", "", bottoms=("a",), tops=("b",), name="b")
                + L("TanH", "", bottoms=("b",), tops=("c",), name="c")
                + L("AbsVal", "", bottoms=("c",), tops=("d",), name="d")
                + L("BNLL", "", bottoms=("d",), tops=("e",), name="e")
                + L("ELU", "elu_param { alpha: 0.5 }", bottoms=("e",), tops=("f",), name="f")
                + L("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", bottoms=("f",), tops=("g",), name="g")
                + L("Exp", "exp_param { base: 2 scale: 0.5 }", bottoms=("g",), tops=("h",), name="h")
                + L("Log", "log_param { scale: 2 shift: 1 }", bottoms=("h",), tops=("i",), name="i")
                + L("Clip", "clip_param { min: -0.5 max: 3 }", bottoms=("i",), tops=("j",), name="j")
                + L("Swish", "", bottoms=("j",), tops=("k",), name="k")
                + L("Threshold", "threshold_param { threshold: 1 }", bottoms=("k",), tops=("m",), name="m")
                + L("Dropout", "", bottoms=("e",), tops=("n",), name="n"),
                [("data", (2, 3, 4))], {}),
    "prelu": (L("PReLU"), [("data", (2, 3, 2, 2))], {}),
    "bn_scale_bias": (L("BatchNorm", "", tops=("a",), name="a") + L("Scale", "scale_param { bias_term: true }",
                                                                   bottoms=("a",), tops=("b",), name="b")
                      + L("Bias", "bias_param { axis: 1 num_axes: 2 }", bottoms=("b",), tops=("c",), name="c"),
                      [("data", (2, 3, 4, 2))], {}),
    "eltwise": (L("Eltwise", "eltwise_param { coeff: 0.5 coeff: -1 }", bottoms=("a", "b"), tops=("s",), name="s")
                + L("Eltwise", "eltwise_param { operation: PROD }", bottoms=("s", "a"), tops=("p",), name="p")
                + L("Eltwise", "eltwise_param { operation: MAX }", bottoms=("p", "b"), tops=("m",), name="m"),
                [("a", (2, 3)), ("b", (2, 3))], {}),
    "concat_slice_split": (L("Concat", "concat_param { axis: 1 }", bottoms=("a", "b"), tops=("c",), name="c")
                           + L("Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 4 }", bottoms=("c",),
                               tops=("s0", "s1", "s2"), name="s")
                           + L("Eltwise", "", bottoms=("s0", "s0"), tops=("e",), name="e"),
                           [("a", (2, 2, 3)), ("b", (2, 3, 3))], {}),
    "flatten_reshape_softmax": (L("Flatten", "", tops=("f",), name="f")
                                + L("Reshape", "reshape_param { shape { dim: 0 dim: 3 dim: -1 } }", bottoms=("f",),
                                    tops=("r",), name="r")
                                + L("Softmax", "softmax_param { axis: 1 }", bottoms=("r",), tops=("p",), name="p"),
                                [("data", (2, 3, 2, 2))], {}),
    "lrn": (L("LRN", "lrn_param { local_size: 5 alpha: 0.1 beta: 0.75 }", tops=("a",), name="a")
            + L("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }",
                bottoms=("a",), tops=("b",), name="b"), [("data", (2, 6, 5, 4))], {}),
    "reduction_tile": (L("Reduction", "reduction_param { operation: SUMSQ axis: 2 coeff: 0.5 }", tops=("r",),
                         name="r")
                       + L("Tile", "tile_param { axis: 1 tiles: 3 }", bottoms=("r",), tops=("t",), name="t"),
                       [("data", (2, 3, 4))], {}),
    "crop": (L("Crop", "crop_param { axis: 2 offset: 1 offset: 2 }", bottoms=("data", "ref")),
             [("data", (2, 3, 6, 7)), ("ref", (2, 3, 4, 3))], {}),
    "argmax_power0_mvn": (L("ArgMax", "argmax_param { axis: 1 }", tops=("a",), name="a")
                          + L("ArgMax", "", tops=("b",), name="b")
                          + L("Power", "power_param { power: 0 }", tops=("p",), name="p")
                          + L("MVN", "", tops=("m",), name="m")
                          + L("MVN", "mvn_param { normalize_variance: false across_channels: true }", tops=("m2",),
                              name="m2"),
                          [("data", (2, 3, 4, 2))], {}),
    "embed": (L("Embed", "embed_param { num_output: 3 input_dim: 5 }"), [("data", (2, 4))], {"data": "index:5"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_gives_equal_outputs(case):
    text, inputs, kinds = CASES[case]
    net = Net(input_net(text, inputs), phase="TEST")
    rng = np.random.RandomState(0)
    randomise(net, rng)
    back = round_trip(net)
    assert_same_outputs(net, back, fill_inputs(net, rng, kinds))
    # a dynamic-batch export imports too (its batch given), and agrees at another batch size
    back = round_trip(net, dynamic=True)
    assert_same_outputs(net, back, fill_inputs(net, rng, kinds, batch=3))


def test_round_trip_of_trained_lenet(tmp_path):
    need_golden()
    from solvers.onnx_export import export
    from solvers.onnx_import import import_model
    export(str(GOLDEN / "lenet_auto_test.prototxt"), str(GOLDEN / "lenet_iter_500.caffemodel"),
           str(tmp_path / "lenet.onnx"), input_shapes={"data": (2, 1, 28, 28)})
    import_model(str(tmp_path / "lenet.onnx"), str(tmp_path / "lenet.prototxt"), str(tmp_path / "lenet.caffemodel"))
    net, _ = deploy_net(read_net(str(GOLDEN / "lenet_auto_test.prototxt")), str(GOLDEN / "lenet_iter_500.caffemodel"),
                        {"data": (2, 1, 28, 28)})
    back = Net(str(tmp_path / "lenet.prototxt"), phase="TEST", weights=str(tmp_path / "lenet.caffemodel"))
    assert [lp.type for lp in back.net_param.layer] == ["Input", "Convolution", "Pooling", "Convolution", "Pooling",
                                                        "Flatten", "InnerProduct", "ReLU", "InnerProduct", "Softmax"]
    rng = np.random.RandomState(0)
    assert_same_outputs(net, back, {"data": rng.uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)})


def test_model_from_another_tool():
    """A model written with onnx.helper as another exporter would (MatMul + Add, Relu, Softmax)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=1)],
        "other", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    param, weights = onnx_to_caffe(model, {"x": (5, 4)})
    net = Net(param, phase="TEST")
    net.copy_from(weights)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    z = np.maximum(x @ w + b, 0)
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(net.blobs["y"].data, want, rtol=1e-5, atol=1e-7)


def test_unmappable_operator_names_the_node():
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="gelu_part")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxImportError, match=r"ONNX node 'gelu_part' \(Erf\): no Caffe layer"):
        onnx_to_caffe(model)


def test_unexact_average_pool_is_refused():
    """count_include_pad with end pads beyond the start pads: a divisor Caffe never uses."""
    from onnx import TensorProto, helper
    node = helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[3, 3], strides=[2, 2],
                            pads=[0, 0, 1, 1], count_include_pad=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxImportError, match=r"'ap' \(AveragePool\): .*divisor"):
        onnx_to_caffe(model)


def test_import_tool_writes_net_and_weights(tmp_path):
    need_golden()
    import subprocess
    import sys
    from solvers.onnx_export import export
    export(str(GOLDEN / "lenet_auto_test.prototxt"), str(GOLDEN / "lenet_iter_500.caffemodel"),
           str(tmp_path / "lenet.onnx"), dynamic_batch=True, input_shapes={"data": (1, 1, 28, 28)})
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "import_onnx.py"), str(tmp_path / "lenet.onnx"),
                        str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"), "--input-shape", "data:64,1,28,28"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    net = Net(str(tmp_path / "net.prototxt"), phase="TEST", weights=str(tmp_path / "w.caffemodel"))
    assert net.blobs["data"].shape == (64, 1, 28, 28) and net.outputs == ["prob"]
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "import_onnx.py"), str(tmp_path / "missing.onnx"),
                        str(tmp_path / "n2.prototxt"), str(tmp_path / "w2.caffemodel")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "missing.onnx" in r.stderr
    assert not (tmp_path / "n2.prototxt").exists()


# The round trip runs each net twice; these cover every layer type of the zoo (test_onnx_zoo.py
# runs the export of all eleven): Inception concat and LRN, fire modules, depthwise
# convolution with BatchNorm and Scale, and the FCN's Crop and Deconvolution.
ROUND_TRIP = ("cifar10_quick_train", "squeezenet_v1.1", "mobilenet_v1", "bvlc_googlenet", "fcn_alexnet_voc_train")


def _zoo_params():
    import zoo_cases
    if not zoo_cases.available():
        return [pytest.param(None, marks=pytest.mark.skip(reason="zoo golden files not found at %s" % zoo_cases.ZOO))]
    return [pytest.param(i, marks=pytest.mark.slow) if i.startswith("fcn") else i for i in ROUND_TRIP]


@pytest.mark.parametrize("case_id", _zoo_params())
def test_zoo_round_trip(case_id):
    from onnx_helpers import zoo_case
    net, values = zoo_case(case_id)
    back = round_trip(net)
    assert_same_outputs(net, back, values)


def test_malformed_model_is_one_clear_error(tmp_path):
    from onnx import TensorProto, helper
    # Concat of tensors whose shapes disagree: shape inference fails
    graph = helper.make_graph([helper.make_node("Concat", ["a", "b"], ["y"], axis=1)], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, 3]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxImportError, match="shape inference"):
        onnx_to_caffe(model)
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    with pytest.raises(OnnxImportError, match="junk.onnx: cannot read an ONNX model"):
        onnx_to_caffe(str(tmp_path / "junk.onnx"))


def test_model_with_constant_nodes_and_shape_arithmetic():
    """As PyTorch writes ``x.view(x.size(0), -1)`` and its weights as Constant nodes."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(0)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((4, 3 * 4 * 4)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")),
        helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64), "z")),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["p", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "FC"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "torchlike", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.array([0], np.int64), "ax"),
                               numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
                               numpy_helper.from_array(fc, "FC")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    param, weights = onnx_to_caffe(model, {"x": (2, 2, 8, 8)})
    assert [lp.type for lp in param.layer] == ["Input", "Convolution", "ReLU", "Pooling", "Reshape", "InnerProduct"]
    assert list(param.layer[4].reshape_param.shape.dim) == [0, -1]
    net = Net(param, phase="TEST")
    net.copy_from(weights)
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (2, 5):     # the batch size copied, not baked in
        x = rng.standard_normal((batch, 2, 8, 8)).astype(np.float32)
        net.blobs["x"].reshape(x.shape)
        net.reshape()
        net.blobs["x"].data[...] = x
        net.forward()
        np.testing.assert_allclose(net.blobs["y"].data, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_onnx_lstm_operator_from_another_tool():
    """ONNX's LSTM (gates i, o, f, c; biases Wb + Rb) becomes Caffe's LSTM; with cont 0 then 1 it equals ORT."""
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort
    rng = np.random.RandomState(0)
    T, N, D, H = 4, 3, 2, 5
    w = rng.standard_normal((1, 4 * H, D)).astype(np.float32) * 0.5
    r = rng.standard_normal((1, 4 * H, H)).astype(np.float32) * 0.5
    b = rng.standard_normal((1, 8 * H)).astype(np.float32) * 0.5
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], hidden_size=H, name="lstm")
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, N, D])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, N, H])],
                              [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    param, weights = onnx_to_caffe(model)
    net = Net(param, phase="TEST")
    net.copy_from(weights)
    assert [lp.type for lp in param.layer] == ["Input", "Input", "LSTM", "Reshape"]
    net.blobs["x"].data[...] = x
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    net.blobs["Y_cont"].data[...] = cont
    net.forward()
    np.testing.assert_allclose(net.blobs["Y"].data, want, rtol=1e-5, atol=1e-6)
    bad = helper.make_model(helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], hidden_size=H, clip=1.0, name="clipped")],
        "rnn", graph.input, graph.output, graph.initializer), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxImportError, match=r"'clipped' \(LSTM\): only a forward LSTM"):
        onnx_to_caffe(bad)
