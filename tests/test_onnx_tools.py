"""tools/export_onnx.py and pycaffe's Net.to_onnx on the trained LeNet: the files they write
load in ONNX Runtime and agree with the toolkit's forward."""
import subprocess
import sys

import numpy as np

from onnx_helpers import TOL, onnx, ort  # skips without the onnx extra
from helpers import GOLDEN, ROOT, need_golden

from netspec.io import read_net
from solvers.onnx_export import deploy_net, rel_err


def _agree_with_file(net, path, batch):
    rng = np.random.RandomState(1)
    x = rng.uniform(0, 1, (batch,) + tuple(net.blobs["data"].shape[1:])).astype(np.float32)
    net.blobs["data"].reshape(x.shape)
    net.reshape()
    net.blobs["data"].data[...] = x
    net.forward()
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (prob,) = sess.run(["prob"], {"data": x})
    assert rel_err(net.blobs["prob"].data, prob) <= TOL


def test_export_tool_on_train_test_prototxt(tmp_path):
    need_golden()
    out = tmp_path / "lenet.onnx"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "export_onnx.py"), str(GOLDEN / "lenet_auto_train.prototxt"),
                        str(GOLDEN / "lenet_iter_500.caffemodel"), str(out), "--dynamic-batch",
                        "--input-shape", "data:1,1,28,28", "--check"], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "became a Softmax with top 'prob'" in r.stdout and "check prob:" in r.stdout
    net, _ = deploy_net(read_net(str(GOLDEN / "lenet_auto_train.prototxt")), str(GOLDEN / "lenet_iter_500.caffemodel"),
                        {"data": (1, 1, 28, 28)})
    _agree_with_file(net, out, batch=5)


def test_export_tool_errors_are_one_line(tmp_path):
    need_golden()
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "export_onnx.py"), str(GOLDEN / "lenet_auto_train.prototxt"),
                        str(GOLDEN / "lenet_iter_500.caffemodel"), str(tmp_path / "x.onnx")],
                       capture_output=True, text=True, cwd=str(tmp_path))   # the LMDB is not found from here
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "layer 'data' (type Data)" in r.stderr and "--input-shape data:" in r.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_pycaffe_net_to_onnx_from_a_train_net(tmp_path, monkeypatch):
    need_golden()
    import solvers.caffe as caffe
    monkeypatch.chdir(GOLDEN)     # the net's LMDB paths are relative
    net = caffe.Net("lenet_auto_test.prototxt", caffe.TEST, weights="lenet_iter_500.caffemodel")
    notes = net.to_onnx(str(tmp_path / "lenet.onnx"))
    assert any("Softmax" in n for n in notes)
    deploy, _ = deploy_net(net.net_param, net.to_proto(), {"data": tuple(net.blobs["data"].shape)})
    _agree_with_file(deploy, tmp_path / "lenet.onnx", batch=net.blobs["data"].shape[0])
    model = onnx.load(str(tmp_path / "lenet.onnx"))
    assert [i.name for i in model.graph.input] == ["data"] and [o.name for o in model.graph.output] == ["prob"]


def test_to_onnx_of_a_train_phase_net_with_phase_rules(tmp_path):
    """A train_val net built for TRAIN (as solver.net is): its TRAIN data layer feeds the export,
    Dropout runs as in TEST, loss and accuracy go."""
    from onnx_helpers import input_net  # noqa: F401  (the module skips without onnx)
    import solvers.caffe as caffe
    text = """
layer { name: "d" type: "DummyData" top: "data" top: "label" include { phase: TRAIN }
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 } data_filler { type: "gaussian" } } }
layer { name: "d" type: "DummyData" top: "data" top: "label" include { phase: TEST }
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" dropout_param { dropout_ratio: 0.5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
"""
    proto = tmp_path / "train_val.prototxt"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TRAIN)
    notes = net.to_onnx(str(tmp_path / "m.onnx"))
    assert any("Softmax" in n for n in notes)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data"] and sess.get_inputs()[0].shape == [4, 3]
    x = np.random.RandomState(0).standard_normal((4, 3)).astype(np.float32)
    (prob,) = sess.run(["prob"], {"data": x})
    w, b = (p.data for p in net.params["ip"])
    z = x @ w.T + b                      # no dropout: the deploy form is TEST
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    assert rel_err(want, prob) <= TOL
