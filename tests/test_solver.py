"""Solver behaviour beyond the golden trajectories: determinism, iter_size,
snapshot/restore, NaN stop, early checks, testing, loss smoothing, logging."""
import logging
import os
import re

import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.errors import CaffeError, SolverError
from netspec.io import read_binary
from solvers.log import GlogFormatter, install_handler
from solvers.sgd_solvers import AdamSolver, NesterovSolver, SGDSolver, get_solver
from solvers.snapshot import read_side_file, read_state
from solvers.solver import Solver, read_solver_param

h5py = pytest.importorskip("h5py")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 6)).astype(np.float32)
Y = RNG.integers(0, 3, size=24).astype(np.float32)


def write_h5(tmp_path, name="train", rows=slice(None)):
    h5 = tmp_path / (name + ".h5")
    with h5py.File(h5, "w") as f:
        f["data"] = X[rows]
        f["label"] = Y[rows]
    listing = tmp_path / (name + ".txt")
    listing.write_text(str(h5) + "\n")
    return listing


def hdf5_net(source, batch=4, shuffle=False, dropout=False, test_source=None):
    """Two InnerProducts over HDF5Data; a TEST-phase data layer when test_source is given."""
    data = []
    for phase, src in (("TRAIN", source), ("TEST", test_source)):
        if src is None:
            continue
        include = ' include { phase: %s }' % phase if test_source is not None else ""
        data.append('layer { name: "data" type: "HDF5Data" top: "data" top: "label"%s '
                    'hdf5_data_param { source: "%s" batch_size: %d shuffle: %s } }'
                    % (include, src, batch, "true" if shuffle and phase == "TRAIN" else "false"))
    drop = ('layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" '
            'dropout_param { dropout_ratio: 0.3 } }') if dropout else ""
    return "\n".join(data) + """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
%s
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
""" % drop


INPUT_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def solver_text(net_text, **fields):
    """Solver prototxt text with an inline net_param and the given fields."""
    fields.setdefault("base_lr", 0.1)
    fields.setdefault("lr_policy", '"fixed"')
    lines = ["%s: %s" % (k, v) for k, v in fields.items()]
    return "net_param {\n%s\n}\n%s\n" % (net_text, "\n".join(lines))


def input_solver(tmp_path, **fields):
    fields.setdefault("snapshot_prefix", '"%s"' % (tmp_path / "snap"))
    solver = Solver(solver_text(INPUT_NET, **fields))
    solver.net.blobs["data"].data[...] = X[:4]
    solver.net.blobs["label"].data[...] = Y[:4]
    return solver


def params_of(net):
    return [b.data.copy() for b in net.learnable_params]


# -- construction -----------------------------------------------------------------

def test_solver_picks_class_from_type_and_legacy_enum(tmp_path):
    assert type(input_solver(tmp_path)) is SGDSolver
    assert type(input_solver(tmp_path, type='"Adam"')) is AdamSolver
    legacy = Solver(solver_text(INPUT_NET, solver_type="NESTEROV"))
    assert type(legacy) is NesterovSolver and legacy.param.type == "Nesterov"
    assert type(get_solver(solver_text(INPUT_NET, type='"Nesterov"'))) is NesterovSolver
    with pytest.raises(SolverError, match="unknown solver type 'Adma'.*'Adam'"):
        Solver(solver_text(INPUT_NET, type='"Adma"'))


def test_solver_from_file_resolves_net_against_working_directory(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(INPUT_NET)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    monkeypatch.chdir(tmp_path)
    solver = Solver("solver.prototxt")
    assert solver.net.layer_names[-1] == "loss"
    assert solver.train_state.phase == caffe_pb2.TRAIN and solver.test_nets == []


def test_bad_settings_fail_before_iteration_0(tmp_path):
    with pytest.raises(SolverError, match="lr_policy"):
        input_solver(tmp_path, lr_policy='"stp"')
    with pytest.raises(SolverError, match="stepsize"):
        input_solver(tmp_path, lr_policy='"step"')
    with pytest.raises(SolverError, match="average_loss"):
        input_solver(tmp_path, average_loss=0)
    with pytest.raises(SolverError, match="regularization_type"):
        input_solver(tmp_path, weight_decay=0.1, regularization_type='"L3"')
    with pytest.raises(SolverError, match="momentum"):
        input_solver(tmp_path, type='"AdaGrad"', momentum=0.9)
    with pytest.raises(SolverError, match="test_interval"):
        input_solver(tmp_path, test_iter=2)


def test_unwritable_snapshot_prefix_is_refused_up_front(tmp_path):
    prefix = tmp_path / "no" / "such" / "dir" / "lenet"
    with pytest.raises(SolverError) as err:
        input_solver(tmp_path, snapshot=5, snapshot_prefix='"%s"' % prefix)
    msg = str(err.value)
    assert str(prefix) in msg and str(prefix.parent) in msg and os.getcwd() in msg
    with pytest.raises(SolverError, match="snapshot_prefix is not"):
        Solver(solver_text(INPUT_NET, snapshot=5))
    # snapshot_after_train alone: checked when solve() starts, before any iteration
    solver = input_solver(tmp_path, max_iter=3, snapshot_prefix='"%s"' % prefix)
    with pytest.raises(SolverError, match="does not exist"):
        solver.solve()
    assert solver.iter == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_snapshot_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(SolverError, match="writable"):
            input_solver(tmp_path, snapshot=5, snapshot_prefix='"%s"' % (ro / "x"))
    finally:
        ro.chmod(0o700)


# -- the loop ------------------------------------------------------------------------

def test_random_seed_makes_runs_repeatable(tmp_path):
    source = write_h5(tmp_path)
    text = solver_text(hdf5_net(source, shuffle=True, dropout=True), random_seed=5, momentum=0.9,
                       weight_decay=0.001)
    runs = []
    for _ in range(2):
        solver = Solver(text)
        solver.step(7)
        runs.append((params_of(solver.net), solver.losses))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]
    other = Solver(text.replace("random_seed: 5", "random_seed: 6"))
    assert not np.array_equal(params_of(other.net)[0], Solver(text).net.learnable_params[0].data)


def test_iter_size_equals_a_bigger_batch(tmp_path):
    source = write_h5(tmp_path, rows=slice(0, 16))
    fields = dict(random_seed=3, momentum=0.9, weight_decay=0.01)
    big = Solver(solver_text(hdf5_net(source, batch=8), iter_size=1, **fields))
    small = Solver(solver_text(hdf5_net(source, batch=4), iter_size=2, **fields))
    for a, b in zip(small.net.learnable_params, big.net.learnable_params):
        a.data[...] = b.data
    big.step(4)
    small.step(4)
    for a, b in zip(params_of(small.net), params_of(big.net)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small.losses, big.losses, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshot_restore_equals_uninterrupted_run(tmp_path, fmt):
    """Adam (two history sets), shuffled HDF5 data and Dropout: the side file makes it exact."""
    source = write_h5(tmp_path)
    prefix = tmp_path / "adam"
    text = solver_text(hdf5_net(source, shuffle=True, dropout=True), type='"Adam"', base_lr=0.01,
                       random_seed=11, max_iter=9, snapshot=4, snapshot_prefix='"%s"' % prefix,
                       snapshot_format=fmt, snapshot_after_train="false")
    whole = Solver(text)
    whole.solve()
    assert whole.iter == 9
    ext = ".h5" if fmt == "HDF5" else ""
    state_file = "%s_iter_4.solverstate%s" % (prefix, ext)
    assert os.path.isfile("%s_iter_4.caffemodel%s" % (prefix, ext))
    assert os.path.isfile(state_file) and read_side_file(state_file)["iter"] == 4
    state = read_state(state_file)
    assert state["iter"] == 4 and len(state["history"]) == 2 * len(whole.net.learnable_params)
    assert state["learned_net"] == "%s_iter_4.caffemodel%s" % (prefix, ext)

    resumed = Solver(text)
    resumed.solve(resume_file=state_file)
    assert resumed.iter == 9
    for a, b in zip(params_of(resumed.net), params_of(whole.net)):
        np.testing.assert_array_equal(a, b)
    assert resumed.losses == whole.losses[4:]


def test_restore_without_side_file_works_like_caffe(tmp_path):
    solver = input_solver(tmp_path, type='"Nesterov"', momentum=0.9, snapshot=3)
    solver.step(3)
    state_file = str(tmp_path / "snap_iter_3.solverstate")
    os.remove(state_file + ".json")
    history = [h.copy() for h in solver.history]
    other = input_solver(tmp_path, type='"Nesterov"', momentum=0.9)
    other.restore(state_file)
    assert other.iter == 3
    for a, b in zip(other.history + params_of(other.net), history + params_of(solver.net)):
        np.testing.assert_array_equal(a, b)


def test_restore_refuses_a_state_of_another_solver_type(tmp_path):
    solver = input_solver(tmp_path, type='"Adam"')
    model, state = solver.snapshot()
    with pytest.raises(SolverError, match="history blobs"):
        input_solver(tmp_path).restore(state)


def test_snapshot_diff_and_names(tmp_path):
    solver = input_solver(tmp_path, snapshot_diff="true")
    solver.step(2)
    model, state = solver.snapshot()
    assert model == str(tmp_path / "snap_iter_2.caffemodel")
    assert state == str(tmp_path / "snap_iter_2.solverstate")
    net = read_binary(model, caffe_pb2.NetParameter)
    ip = [l for l in net.layer if l.name == "ip1"][0]
    assert len(ip.blobs[0].diff) == 18
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_nan_loss_stops_with_snapshot_and_names_the_iteration(tmp_path):
    solver = input_solver(tmp_path, max_iter=10)

    def poison():
        if solver.iter == 3:
            solver.net.blobs["data"].data[0, 0] = np.nan
    solver.add_callback(poison, lambda: None)
    with pytest.raises(SolverError, match="NaN at iteration 3") as err:
        solver.solve()
    assert "snap_iter_3.caffemodel" in str(err.value)
    assert os.path.isfile(tmp_path / "snap_iter_3.caffemodel")
    assert solver.iter == 3 and np.isfinite(solver.net.learnable_params[0].data).all()


def test_average_loss_smooths_the_displayed_loss(tmp_path, caplog):
    solver = input_solver(tmp_path, average_loss=3, display=1, lr_policy='"step"', stepsize=2,
                          gamma=2.0)
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.step(6)
    losses = np.array(solver.losses, dtype=np.float32)
    assert len(losses) == 6 and len(set(losses.tolist())) == 6
    assert solver.smoothed_loss == pytest.approx(losses[-3:].mean(), rel=1e-6)
    shown = [float(m.group(2)) for m in (re.search(r"Iteration (\d+) \(.*\), loss = (\S+)", r.getMessage())
                                         for r in caplog.records) if m]
    expected = [losses[:k + 1][-3:].mean() for k in range(6)]
    np.testing.assert_allclose(shown, expected, rtol=1e-5)


def test_callbacks_and_action_requests(tmp_path, caplog):
    solver = input_solver(tmp_path, max_iter=10, display=1)
    calls = []
    solver.add_callback(lambda: calls.append(("start", solver.iter)),
                        lambda: calls.append(("ready", solver.iter)))
    answers = {2: "snapshot", 4: "stop"}
    solver.action_request = lambda: answers.get(solver.iter, "none")
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.solve()
    assert calls[:4] == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]
    assert solver.iter == 4 and solver.requested_early_exit
    assert os.path.isfile(tmp_path / "snap_iter_2.solverstate")   # requested
    assert os.path.isfile(tmp_path / "snap_iter_4.solverstate")   # snapshot_after_train
    text = caplog.text
    assert "Optimization stopped early." in text and "Optimization Done." not in text
    solver.action_request = lambda: "reboot"
    with pytest.raises(SolverError, match="action_request"):
        solver.step(1)


def test_solve_logs_in_caffes_words(tmp_path, caplog):
    solver = input_solver(tmp_path, max_iter=4, display=2, snapshot=2)
    with caplog.at_level(logging.INFO, logger="caffe"):
        solver.solve()
    text = caplog.text
    assert re.search(r"Iteration 0 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = [\d.]+", text)
    assert re.search(r"    Train net output #0: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)", text)
    assert "Iteration 2, lr = 0.1" in text and "Iteration 1, lr" not in text
    assert "Snapshotting to binary proto file %s" % (tmp_path / "snap_iter_2.caffemodel") in text
    state = tmp_path / "snap_iter_4.solverstate"
    assert "Snapshotting solver state to binary proto file %s" % state in text
    assert re.search(r"Iteration 4, loss = [\d.]+", text)
    assert text.rstrip().endswith("Optimization Done.")
    assert not os.path.exists(tmp_path / "snap_iter_5.caffemodel")


# -- testing --------------------------------------------------------------------------

def _numpy_scores(net, x, y):
    w1, b1 = [b.data for b in net.params["ip1"]]
    w2, b2 = [b.data for b in net.params["ip2"]]
    h = np.maximum(x @ w1.T + b1, 0)
    z = h @ w2.T + b2
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -logp[np.arange(len(y)), y.astype(int)].mean()
    acc = (z.argmax(1) == y).mean()
    return loss, acc


def test_test_nets_average_outputs_over_test_iter(tmp_path, caplog):
    train = write_h5(tmp_path, "train")
    test = write_h5(tmp_path, "test", rows=slice(0, 12))
    solver = Solver(solver_text(hdf5_net(train, test_source=test), test_iter="3\ntest_iter: 1",
                                test_interval=100, test_compute_loss="true", random_seed=2,
                                test_initialization="false"))
    assert len(solver.test_nets) == 2
    assert all(n.phase == caffe_pb2.TEST for n in solver.test_nets)
    solver.step(2)
    with caplog.at_level(logging.INFO, logger="caffe"):
        scores = solver.test(0)
    batches = [_numpy_scores(solver.net, X[i:i + 4], Y[i:i + 4]) for i in (0, 4, 8)]
    assert list(scores) == ["acc", "loss"]
    assert scores["loss"] == pytest.approx(np.mean([b[0] for b in batches]), rel=1e-5)
    assert scores["acc"] == pytest.approx(np.mean([b[1] for b in batches]), rel=1e-6)
    assert solver.mean_scores[0] == pytest.approx([scores["acc"], scores["loss"]])
    assert "Iteration 2, Testing net (#0)" in caplog.text
    assert re.search(r"    Test net output #0: acc = [\d.]+\n", caplog.text + "\n")
    assert re.search(r"    Test net output #1: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)", caplog.text)
    assert "Test loss: " in caplog.text
    one = solver.test(1)   # second instance of the generic net: its own test_iter (1 batch)
    assert one["loss"] == pytest.approx(batches[0][0], rel=1e-5)
    with pytest.raises(SolverError, match="test net #2"):
        solver.test(2)


def test_test_interval_and_initialization(tmp_path, caplog):
    train = write_h5(tmp_path, "train")
    test = write_h5(tmp_path, "test", rows=slice(0, 8))
    base = dict(test_iter=2, test_interval=2, max_iter=5)
    for init, expected in (("true", [0, 2, 4]), ("false", [2, 4])):
        solver = Solver(solver_text(hdf5_net(train, test_source=test), test_initialization=init,
                                    **base))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="caffe"):
            solver.step(5)
        tested = [int(m) for m in re.findall(r"Iteration (\d+), Testing net \(#0\)", caplog.text)]
        assert tested == expected


def test_finetuning_weights_reach_train_and_test_nets(tmp_path):
    train = write_h5(tmp_path, "train")
    text = solver_text(hdf5_net(train, test_source=train), test_iter=1, test_interval=10,
                       random_seed=1)
    donor = Solver(text)
    donor.net.params["ip1"][0].data[...] = 0.25
    donor.net.save(str(tmp_path / "donor.caffemodel"))
    solver = Solver(text.replace("random_seed: 1", "random_seed: 9"),
                    weights=[str(tmp_path / "donor.caffemodel")])
    np.testing.assert_array_equal(solver.net.params["ip1"][0].data, 0.25)
    np.testing.assert_array_equal(solver.test_nets[0].params["ip1"][0].data, 0.25)
    np.testing.assert_array_equal(solver.net.params["ip2"][0].data, donor.net.params["ip2"][0].data)
    with pytest.raises(CaffeError, match="missing.caffemodel"):
        Solver(text, weights=[str(tmp_path / "missing.caffemodel")])


# -- logging --------------------------------------------------------------------------

def test_glog_format_is_what_caffe_log_parsers_expect(tmp_path):
    import io
    stream = io.StringIO()
    handler = install_handler(stream)
    try:
        input_solver(tmp_path, display=1).step(1)
    finally:
        for name in ("caffe", "solvers"):
            logging.getLogger(name).removeHandler(handler)
    lines = [ln for ln in stream.getvalue().splitlines() if "Iteration 0 (" in ln]
    assert len(lines) == 1
    assert re.match(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.py:\d+\] Iteration 0 \(", lines[0])
    record = logging.LogRecord("caffe", logging.WARNING, "/x/sgd_solvers.py", 7, "careful", None, None)
    assert re.match(r"^W\d{4} [\d:.]+ +\d+ sgd_solvers\.py:7\] careful$", GlogFormatter().format(record))


def test_stale_side_file_is_ignored_with_a_warning(tmp_path, caplog):
    import json
    solver = input_solver(tmp_path, snapshot=2)
    solver.step(2)
    side = tmp_path / "snap_iter_2.solverstate.json"
    payload = json.loads(side.read_text())
    payload["iter"] = 7
    side.write_text(json.dumps(payload))
    other = input_solver(tmp_path)
    with caplog.at_level(logging.WARNING, logger="caffe"):
        other.restore(str(tmp_path / "snap_iter_2.solverstate"))
    assert other.iter == 2 and "Ignoring side file" in caplog.text


def test_lmdb_data_position_survives_snapshot_and_restore(tmp_path, monkeypatch):
    """Caffe's LeNet over its MNIST LMDBs (prefetching Data layers, train and test): resuming
    from our snapshot reads the same batches as the run that never stopped."""
    from pathlib import Path
    lenet = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "lenet"
    if not (lenet / "lenet_auto_solver.prototxt").is_file():
        pytest.skip("golden LeNet data not found at %s" % lenet)
    monkeypatch.chdir(lenet)
    param = read_solver_param("lenet_auto_solver.prototxt")
    param.snapshot_prefix = str(tmp_path / "lenet")
    param.max_iter, param.snapshot, param.test_interval = 12, 6, 5
    param.test_iter[0] = 3
    param.snapshot_after_train = False
    whole = Solver(param, weights=["lenet_init.caffemodel"])
    whole.solve()
    resumed = Solver(param)
    resumed.solve(str(tmp_path / "lenet_iter_6.solverstate"))
    side = read_side_file(str(tmp_path / "lenet_iter_6.solverstate"))
    assert set(side["train_net"]) == {"data"} and set(side["test_nets"][0]) == {"data"}
    for a, b in zip(params_of(resumed.net), params_of(whole.net)):
        np.testing.assert_array_equal(a, b)
    assert resumed.losses == whole.losses[6:]
