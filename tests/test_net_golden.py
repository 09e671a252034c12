"""Whole nets against BVLC Caffe: losses and gradients it computed for the same weights and data.

* ``solvers/``: the small solver net with its init params and data; the
  first loss of every run is ``loss[0]``, and one plain SGD step made from our
  gradients must land on Caffe's ``iter1`` params (that checks every
  parameter gradient, the lr_mult/decay_mult bookkeeping and ``update``).
* ``lenet/``: the seed's LeNet reading Caffe's own LMDBs, with Caffe's
  initial and trained weights; losses and accuracy are those in ``train.log``
  and ``final_accuracy.txt`` (printed by Caffe with 6 significant digits).
"""
import re
from pathlib import Path

import numpy as np
import pytest

from netspec import caffe_pb2
from solvers.net import Net

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
SOLVERS = GOLDEN / "solvers"
LENET = GOLDEN / "lenet"
RTOL, ATOL = 1e-4, 1e-5

if not GOLDEN.is_dir():
    pytest.skip("golden data from BVLC Caffe not found at %s (it lives beside the checkout in "
                "../shared/golden); nothing to compare against" % GOLDEN, allow_module_level=True)


def _solver_net(case):
    gold = np.load(SOLVERS / (case + ".npz"))
    data = np.load(SOLVERS / "data.npz")
    net = Net(str(SOLVERS / "net.prototxt"), phase="TRAIN")
    for name, blobs in net.params.items():
        for j, blob in enumerate(blobs):
            blob.data[...] = gold["init_%s_%d" % (name, j)]
    net.blobs["data"].data[...] = data["data"]
    net.blobs["label"].data[...] = data["label"]
    return net, gold


@pytest.mark.parametrize("case", ["sgd_fixed", "adam", "sgd_l1"])
def test_first_loss_equals_caffe(case):
    net, gold = _solver_net(case)
    loss = net.forward_from_to(0, len(net.layers) - 1)
    np.testing.assert_allclose(loss, gold["loss"][0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(net.forward()["loss"], gold["loss"][0], rtol=RTOL, atol=ATOL)


def test_one_sgd_step_from_our_gradients_matches_caffe():
    # sgd_fixed: base_lr 0.1, momentum 0.9 (no history yet), weight_decay 0.01 (L2).
    net, gold = _solver_net("sgd_fixed")
    net.clear_param_diffs()
    loss = net.forward_backward()
    np.testing.assert_allclose(loss, gold["loss"][0], rtol=RTOL, atol=ATOL)
    assert net.params_lr == [1.0, 2.0, 1.0, 1.0]
    assert net.params_weight_decay == [1.0, 0.0, 1.0, 1.0]
    for blob, lr_mult, decay_mult in zip(net.learnable_params, net.params_lr, net.params_weight_decay):
        blob.diff[...] = 0.1 * lr_mult * (blob.diff + 0.01 * decay_mult * blob.data)
    net.update()
    for name, blobs in net.params.items():
        for j, blob in enumerate(blobs):
            key = "iter1_%s_%d" % (name, j)
            np.testing.assert_allclose(blob.data, gold[key], rtol=RTOL, atol=ATOL, err_msg=key)


def _logged(pattern):
    """A number Caffe wrote in train.log, found by regular expression."""
    m = re.search(pattern, (LENET / "train.log").read_text())
    assert m, "train.log has no line matching %r" % pattern
    return float(m.group(1))


def _lenet(prototxt, weights, monkeypatch):
    if "Data" not in __import__("solvers.layer", fromlist=["x"]).layer_type_list():
        pytest.skip("the Data layer is not registered yet")
    monkeypatch.chdir(LENET)   # the nets name their LMDBs relative to this folder, as Caffe ran them
    net = Net(prototxt, phase="TRAIN" if "train" in prototxt else "TEST")
    net.copy_from(weights)
    return net


def test_lenet_first_train_loss(monkeypatch):
    net = _lenet("lenet_auto_train.prototxt", "lenet_init.caffemodel", monkeypatch)
    expected = _logged(r"Iteration 0 \(.*\), loss = ([0-9.e+-]+)")
    np.testing.assert_allclose(net.forward_from_to(0, len(net.layers) - 1), expected, rtol=RTOL)


@pytest.mark.parametrize("weights, test_at", [("lenet_init.caffemodel", 0), ("lenet_iter_500.caffemodel", 500)])
def test_lenet_test_loss_and_accuracy(monkeypatch, weights, test_at):
    net = _lenet("lenet_auto_test.prototxt", weights, monkeypatch)
    batches = 20   # test_iter in lenet_auto_solver.prototxt: 20 x 100 = the whole test LMDB
    losses, correct = [], 0
    for _ in range(batches):
        losses.append(net.forward_from_to(0, len(net.layers) - 1))
        correct += int((net.blobs["score"].data.argmax(axis=1) == net.blobs["label"].data).sum())
    expected = _logged(r"(?s)Iteration %d, Testing net \(#0\).*?Test net output #0: loss = ([0-9.e+-]+)" % test_at)
    np.testing.assert_allclose(np.mean(losses), expected, rtol=RTOL)
    if test_at == 500:
        accuracy = float((LENET / "final_accuracy.txt").read_text().split()[0])
        assert correct / (batches * 100) == pytest.approx(accuracy, abs=1e-9)


def test_lenet_caffemodel_round_trip(tmp_path):
    from solvers.layer import layer_type_list
    if "Data" not in layer_type_list():
        pytest.skip("the Data layer is not registered yet")
    gold = caffe_pb2.NetParameter.FromString((LENET / "lenet_iter_250.caffemodel").read_bytes())
    text = (LENET / "lenet_auto_train.prototxt").read_text().replace(
        'source: "mnist_train_lmdb"', 'source: "%s"' % (LENET / "mnist_train_lmdb"))
    net = Net(text, phase="TRAIN", weights=str(LENET / "lenet_iter_250.caffemodel"))
    net.save(str(tmp_path / "again.caffemodel"))
    ours = caffe_pb2.NetParameter.FromString((tmp_path / "again.caffemodel").read_bytes())
    assert [lp.name for lp in ours.layer] == [lp.name for lp in gold.layer]
    for a, b in zip(ours.layer, gold.layer):
        assert a.loss_weight == b.loss_weight and a.phase == b.phase
        assert [list(x.shape.dim) for x in a.blobs] == [list(x.shape.dim) for x in b.blobs]
        for x, y in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(np.asarray(x.data, np.float32), np.asarray(y.data, np.float32))


def test_legacy_input_dim_net_gets_an_input_layer():
    net = Net(str(GOLDEN / "legacy" / "deploy_input_dim.prototxt"), phase="TEST")
    assert net.layer_names == ["input", "conv1", "prob"]   # Caffe's upgrade names the layer "input"
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert net.blobs["data"].shape == (10, 1, 28, 28)
    out = net.forward(data=np.ones((10, 1, 28, 28), np.float32))
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1, rtol=1e-5)
