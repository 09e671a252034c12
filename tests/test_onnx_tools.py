"""tools/export_onnx.py and pycaffe's Net.to_onnx on the trained LeNet: the files they write
load in ONNX Runtime and agree with the toolkit's forward."""
import subprocess
import sys

import numpy as np
import pytest

from onnx_helpers import TOL, onnx, ort  # skips without the onnx extra
from helpers import GOLDEN, ROOT, need_golden

from netspec.io import read_net
from solvers.net import Net
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
