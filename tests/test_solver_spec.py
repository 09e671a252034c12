"""Solver files from Python, and the MNIST LeNet example that writes nets and solver."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

import netspec
from netspec import NetSpec, caffe_pb2, layers as L
from netspec.errors import NetSpecError
from netspec.solver_spec import solver, to_prototxt, write_prototxt, write_solver

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"


def parse(path, message_class):
    message = message_class()
    text_format.Parse(Path(path).read_text(), message)
    return message


# -- solver(**fields) -----------------------------------------------------------

def test_solver_sets_fields_and_enums_by_name():
    s = solver(train_net="train.prototxt", test_net=["test.prototxt"], test_iter=100,
               test_interval=500, base_lr=0.01, lr_policy="step", stepsize=10, gamma=0.1,
               stepvalue=[1, 2], solver_mode="CPU", snapshot_format="HDF5", type="Adam",
               regularization_type="L1")
    assert isinstance(s, caffe_pb2.SolverParameter)
    assert s.solver_mode == caffe_pb2.SolverParameter.CPU
    assert s.snapshot_format == caffe_pb2.SolverParameter.HDF5
    assert list(s.test_iter) == [100] and list(s.test_net) == ["test.prototxt"]
    assert list(s.stepvalue) == [1, 2] and s.type == "Adam"
    assert s.base_lr == pytest.approx(0.01)
    assert netspec.solver is solver


def test_solver_unknown_field_suggests():
    with pytest.raises(NetSpecError) as err:
        solver(base_rl=0.1)
    assert "'base_rl'" in str(err.value) and "'base_lr'" in str(err.value)
    with pytest.raises(NetSpecError, match="'GPU'"):
        solver(solver_mode="GPUU")
    with pytest.raises(NetSpecError, match="max_iter"):
        solver(max_iter="many")


def test_solver_rejects_what_caffe_rejects_at_train_time():
    with pytest.raises(NetSpecError, match="'Adam'"):
        solver(type="adam")
    with pytest.raises(NetSpecError, match="'inv'"):
        solver(lr_policy="invv")
    with pytest.raises(NetSpecError, match="test_iter"):
        solver(train_net="a", test_net=["b", "c"], test_iter=[10], test_interval=5)
    with pytest.raises(NetSpecError, match="test_interval"):
        solver(net="a", test_iter=[10])
    with pytest.raises(NetSpecError, match="one train net"):
        solver(net="a", train_net="b")
    solver(net="a", test_iter=[10, 20], test_interval=5)  # a generic net may be tested many times


def test_solver_takes_net_messages_and_netspecs():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.out = L.ReLU(n.data)
    s = solver(train_net_param=n, test_net_param=[n.to_proto()], test_iter=1, test_interval=1)
    assert s.train_net_param == n.to_proto() == s.test_net_param[0]
    s2 = solver(net_param=dict(name="inline", layer=[dict(name="x", type="Input", top=["x"])]))
    assert s2.net_param.layer[0].type == "Input"


# -- text output ----------------------------------------------------------------

def test_to_prototxt_parses_back():
    s = solver(train_net="t.prototxt", base_lr=0.5, solver_mode="GPU", device_id=0)
    text = to_prototxt(s)
    assert 'solver_mode: GPU' in text and 'train_net: "t.prototxt"' in text
    assert text_format.Parse(text, caffe_pb2.SolverParameter()) == s


def test_write_solver_from_kwargs_or_message_atomically(tmp_path):
    path = tmp_path / "solver.prototxt"
    write_solver(dict(train_net="t.prototxt", base_lr=0.1, max_iter=3), path)
    first = parse(path, caffe_pb2.SolverParameter)
    assert first.max_iter == 3 and first.base_lr == pytest.approx(0.1)
    bindings = caffe_pb2.SolverParameter()
    bindings.train_net = "t.prototxt"
    bindings.max_iter = 9
    write_solver(bindings, path)
    assert parse(path, caffe_pb2.SolverParameter) == bindings
    assert sorted(os.listdir(tmp_path)) == ["solver.prototxt"]  # no temp file left behind
    with pytest.raises(NetSpecError, match="bogus"):
        write_solver(dict(bogus=1), tmp_path / "other.prototxt")
    assert not (tmp_path / "other.prototxt").exists()
    with pytest.raises(NetSpecError):
        write_solver("base_lr: 1", path)


def test_write_prototxt_of_a_net(tmp_path):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.out = L.ReLU(n.data)
    write_prototxt(n.to_proto(), tmp_path / "net.prototxt")
    assert parse(tmp_path / "net.prototxt", caffe_pb2.NetParameter) == n.to_proto()


# -- examples/mnist/lenet.py ------------------------------------------------------

@pytest.fixture(scope="module")
def lenet_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("lenet")
    done = subprocess.run([sys.executable, "examples/mnist/lenet.py", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def test_lenet_example_writes_three_files(lenet_out):
    assert sorted(os.listdir(lenet_out)) == ["lenet_auto_solver.prototxt", "lenet_auto_test.prototxt",
                                             "lenet_auto_train.prototxt"]
    train = parse(lenet_out / "lenet_auto_train.prototxt", caffe_pb2.NetParameter)
    test = parse(lenet_out / "lenet_auto_test.prototxt", caffe_pb2.NetParameter)
    assert train.layer[0].data_param.source == "examples/mnist/mnist_train_lmdb"
    assert train.layer[0].data_param.batch_size == 64
    assert test.layer[0].data_param.source == "examples/mnist/mnist_test_lmdb"
    assert test.layer[0].data_param.batch_size == 100
    assert train.layer[0].transform_param.scale == pytest.approx(1 / 255)
    assert [lay.type for lay in train.layer] == ["Data", "Convolution", "Pooling", "Convolution",
                                                 "Pooling", "InnerProduct", "ReLU", "InnerProduct",
                                                 "Accuracy", "SoftmaxWithLoss"]
    # accuracy only in the TEST phase (BVLC's lenet_train_test.prototxt), before the loss so
    # that the log's "Test net output #0" is the accuracy
    accuracy = test.layer[8]
    assert (accuracy.type, list(accuracy.bottom), list(accuracy.top)) == ("Accuracy", ["score", "label"],
                                                                         ["accuracy"])
    assert [r.phase for r in accuracy.include] == [caffe_pb2.TEST]


def test_lenet_accuracy_is_in_the_test_net_only(lenet_out):
    from solvers.net_state import filter_net
    for phase, names in ((caffe_pb2.TRAIN, ["loss"]), (caffe_pb2.TEST, ["accuracy", "loss"])):
        net = parse(lenet_out / "lenet_auto_train.prototxt", caffe_pb2.NetParameter)
        net.state.phase = phase
        kept = filter_net(net).layer
        assert [lay.name for lay in kept if lay.type in ("Accuracy", "SoftmaxWithLoss")] == names


def test_lenet_example_solver_is_the_seeds(lenet_out):
    s = parse(lenet_out / "lenet_auto_solver.prototxt", caffe_pb2.SolverParameter)
    out = lenet_out.resolve().as_posix()
    assert s.train_net == out + "/lenet_auto_train.prototxt"  # outside the repo: absolute
    assert list(s.test_net) == [out + "/lenet_auto_test.prototxt"]
    assert s.snapshot_prefix == out + "/lenet"
    assert list(s.test_iter) == [_one_pass(REPO / "examples" / "mnist" / "mnist_test_lmdb")]
    assert s.test_interval == 500
    assert s.base_lr == pytest.approx(0.01) and s.momentum == pytest.approx(0.9)
    assert s.weight_decay == pytest.approx(5e-4) and s.lr_policy == "inv"
    assert s.gamma == pytest.approx(1e-4) and s.power == pytest.approx(0.75)
    assert (s.display, s.max_iter, s.snapshot) == (100, 10000, 5000)
    assert s.solver_mode == caffe_pb2.SolverParameter.CPU


def _one_pass(db):
    """Batches of 100 that see a test LMDB once (100 for 10,000 digits when it is not built yet)."""
    if not (db / "data.mdb").is_file():
        return 100
    import lmdb
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        return -(-env.stat()["entries"] // 100)
    finally:
        env.close()


@pytest.mark.parametrize("records, batches", [(2000, 20), (250, 3)])
def test_lenet_test_iter_fits_the_test_set(tmp_path, records, batches):
    import numpy as np
    from solvers.data.mnist import write_mnist_lmdb
    db = tmp_path / "test_lmdb"
    write_mnist_lmdb(np.zeros((records, 28, 28), np.uint8), np.zeros(records, np.int64), db)
    done = subprocess.run([sys.executable, "examples/mnist/lenet.py", "--out", str(tmp_path / "nets"),
                           "--test-source", str(db)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    s = parse(tmp_path / "nets" / "lenet_auto_solver.prototxt", caffe_pb2.SolverParameter)
    assert list(s.test_iter) == [batches]


def test_lenet_example_paths_are_repo_relative_inside_the_repo():
    spec = importlib.util.spec_from_file_location("lenet_example", REPO / "examples" / "mnist" / "lenet.py")
    lenet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lenet)
    assert lenet._as_written(REPO / "examples" / "mnist" / "lenet") == "examples/mnist/lenet"
    s = lenet.lenet_solver("examples/mnist/lenet_auto_train.prototxt",
                           "examples/mnist/lenet_auto_test.prototxt", "examples/mnist/lenet")
    assert s.snapshot_prefix == "examples/mnist/lenet"


def test_lenet_example_matches_golden(lenet_out):
    if not GOLDEN.is_dir():
        pytest.skip("golden data folder %s is absent" % GOLDEN)
    for phase in ("train", "test"):
        ours = parse(lenet_out / ("lenet_auto_%s.prototxt" % phase), caffe_pb2.NetParameter)
        pycaffe = parse(GOLDEN / "netspec" / ("lenet_%s.prototxt" % phase), caffe_pb2.NetParameter)
        # the seed's nets plus one layer: the TEST-phase Accuracy (pycaffe wrote the notebook's without)
        assert [lay.name for lay in ours.layer if lay.type == "Accuracy"] == ["accuracy"]
        seed = caffe_pb2.NetParameter()
        seed.CopyFrom(ours)
        del seed.layer[:]
        seed.layer.extend(lay for lay in ours.layer if lay.type != "Accuracy")
        assert seed == pycaffe, phase
    # the golden run's solver differs only in paths, schedule length and test size
    ours = parse(lenet_out / "lenet_auto_solver.prototxt", caffe_pb2.SolverParameter)
    caffe = parse(GOLDEN / "lenet" / "lenet_auto_solver.prototxt", caffe_pb2.SolverParameter)
    for field in ("base_lr", "momentum", "weight_decay", "lr_policy", "gamma", "power",
                  "random_seed", "solver_mode"):
        assert getattr(ours, field) == getattr(caffe, field), field
