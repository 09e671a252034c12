"""Solver trajectories against BVLC Caffe (../shared/golden/solvers).

For each of the 17 settings Caffe trained one small net 10 iterations from
known initial weights on one fixed batch and saved the parameters after every
step, the loss per step and snapshots at iterations 5 and 10. We replay the
same run and compare every iteration; we restore from Caffe's own iteration-5
snapshot and continue; and we check the snapshot files we write hold what
Caffe's hold.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.io import read_binary
from solvers.backend import to_numpy
from solvers.solver import Solver, read_solver_param

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "solvers"
PARAMS = [("ip1", 0), ("ip1", 1), ("ip2", 0), ("ip2", 1)]
RTOL, ATOL = 1e-4, 1e-5


def _settings():
    path = GOLDEN / "settings.json"
    if not path.is_file():
        return ["(golden data missing)"]
    return list(json.loads(path.read_text()))


def _require_golden():
    if not (GOLDEN / "settings.json").is_file():
        pytest.skip("golden solver data not found at %s (it lives in the shared folder next to the "
                    "checkout)" % GOLDEN)


def _solver(name, tmp_path):
    """Caffe's solver prototxt, with the net path made absolute and snapshots sent to tmp_path."""
    param = read_solver_param(str(GOLDEN / (name + ".solver.prototxt")))
    param.net = str(GOLDEN / param.net)
    param.snapshot_prefix = str(tmp_path / name)
    solver = Solver(param)
    data = np.load(GOLDEN / "data.npz")
    for name in ("data", "label"):   # xp.asarray: CuPy blobs too
        blob = solver.net.blobs[name]
        blob.data[...] = blob.xp.asarray(data[name])
    return solver


def _set_params(net, golden, key):
    for layer, j in PARAMS:
        param = net.params[layer][j]
        param.data[...] = param.xp.asarray(golden["%s_%s_%d" % (key, layer, j)])


def _check_params(net, golden, key, what):
    for layer, j in PARAMS:
        np.testing.assert_allclose(to_numpy(net.params[layer][j].data), golden["%s_%s_%d" % (key, layer, j)],
                                   rtol=RTOL, atol=ATOL, err_msg="%s: %s param %d" % (what, layer, j))


@pytest.mark.parametrize("name", _settings())
def test_trajectory_matches_caffe(name, tmp_path):
    _require_golden()
    golden = np.load(GOLDEN / (name + ".npz"))
    solver = _solver(name, tmp_path)
    expected_type = json.loads((GOLDEN / "settings.json").read_text())[name]["type"]
    assert solver.param.type == expected_type
    _set_params(solver.net, golden, "init")
    for k in range(1, 11):
        solver.step(1)
        assert solver.iter == k
        _check_params(solver.net, golden, "iter%d" % k, "%s after %d steps" % (name, k))
    np.testing.assert_allclose(solver.losses, golden["loss"], rtol=RTOL, atol=ATOL,
                               err_msg="%s: loss per step" % name)


@pytest.mark.parametrize("name", _settings())
def test_resume_from_caffe_snapshot(name, tmp_path):
    """Caffe's iteration-5 .solverstate + .caffemodel, then 5 more steps = Caffe's run."""
    _require_golden()
    golden = np.load(GOLDEN / (name + ".npz"))
    solver = _solver(name, tmp_path)
    solver.restore(str(GOLDEN / (name + "_iter_5.solverstate")))
    assert solver.iter == 5
    _check_params(solver.net, golden, "iter5", "%s restored at 5" % name)
    for k in range(6, 11):
        solver.step(1)
        _check_params(solver.net, golden, "iter%d" % k, "%s resumed, after %d steps" % (name, k))
    np.testing.assert_allclose(solver.losses, golden["loss"][5:], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", _settings())
def test_snapshots_match_caffe(name, tmp_path):
    """The files we write at 5 and 10 parse as Caffe's do and hold the same numbers."""
    _require_golden()
    golden = np.load(GOLDEN / (name + ".npz"))
    solver = _solver(name, tmp_path)
    _set_params(solver.net, golden, "init")
    solver.step(10)
    for it in (5, 10):
        ours = read_binary(tmp_path / ("%s_iter_%d.solverstate" % (name, it)), caffe_pb2.SolverState)
        theirs = read_binary(GOLDEN / ("%s_iter_%d.solverstate" % (name, it)), caffe_pb2.SolverState)
        assert [f.name for f, _ in ours.ListFields()] == [f.name for f, _ in theirs.ListFields()]
        assert ours.iter == theirs.iter == it
        assert ours.current_step == theirs.current_step
        # Caffe writes the model name as prefix + suffix; our prefix is a tmp path
        assert ours.learned_net == str(tmp_path / os.path.basename(theirs.learned_net))
        assert len(ours.history) == len(theirs.history)
        for i, (a, b) in enumerate(zip(ours.history, theirs.history)):
            assert list(a.shape.dim) == list(b.shape.dim)
            np.testing.assert_allclose(a.data, b.data, rtol=RTOL, atol=ATOL,
                                       err_msg="%s iter %d history %d" % (name, it, i))

        model = read_binary(tmp_path / ("%s_iter_%d.caffemodel" % (name, it)), caffe_pb2.NetParameter)
        ref = read_binary(GOLDEN / ("%s_iter_%d.caffemodel" % (name, it)), caffe_pb2.NetParameter)
        assert model.name == ref.name
        assert [(l.name, l.type, len(l.blobs)) for l in model.layer] == \
            [(l.name, l.type, len(l.blobs)) for l in ref.layer]
        for la, lb in zip(model.layer, ref.layer):
            assert la.phase == lb.phase
            for a, b in zip(la.blobs, lb.blobs):
                assert list(a.shape.dim) == list(b.shape.dim)
                np.testing.assert_allclose(a.data, b.data, rtol=RTOL, atol=ATOL)
            assert not any(len(b.diff) for b in la.blobs)   # snapshot_diff is off


# -- LeNet on MNIST (../shared/golden/lenet): the solver on a real net and Data layers ----------

LENET = GOLDEN.parent / "lenet"


def _lenet_solver(tmp_path, monkeypatch, weights=None):
    if not (LENET / "lenet_auto_solver.prototxt").is_file():
        pytest.skip("golden LeNet data not found at %s" % LENET)
    monkeypatch.chdir(LENET)   # the solver names its nets and LMDBs relative to this folder
    param = read_solver_param("lenet_auto_solver.prototxt")
    param.snapshot_prefix = str(tmp_path / "lenet")
    return Solver(param, weights=weights)


def _logged(pattern):
    import re
    text = (LENET / "train.log").read_text()
    return float(re.search(pattern, text).group(1))


def test_lenet_from_caffes_init_follows_its_curve(tmp_path, monkeypatch):
    solver = _lenet_solver(tmp_path, monkeypatch, weights=["lenet_init.caffemodel"])
    solver.step(11)   # tests at iteration 0 first (test_initialization)
    curve = np.load(LENET / "curve.npz")
    assert list(curve["train_iter"][:2]) == [0, 10]
    np.testing.assert_allclose([solver.losses[0], solver.losses[10]], curve["train_loss"][:2], rtol=RTOL)
    test_loss = _logged(r"Iteration 0, Testing net \(#0\)\n(?:.*\n)*?.*Test net output #0: "
                        r"loss = (\S+)")
    assert solver.mean_scores[0][0] == pytest.approx(test_loss, rel=RTOL)


def test_lenet_resumes_from_caffes_snapshot(tmp_path, monkeypatch):
    """At iteration 250 Caffe's data layer had read exactly two epochs, so resuming from its
    snapshot (which forgets the position) sees the same batches as its uninterrupted run."""
    solver = _lenet_solver(tmp_path, monkeypatch)
    solver.restore("lenet_iter_250.solverstate")
    assert solver.iter == 250 and len(solver.history) == 8
    solver.step(11)
    np.testing.assert_allclose(
        [solver.losses[0], solver.losses[10]],
        [_logged(r"Iteration 250 \(.*loss = (\S+)"),
         _logged(r"Iteration 260 \(.*loss = (\S+)")], rtol=RTOL)
    assert solver.learning_rate == pytest.approx(_logged(r"Iteration 260, lr = (\S+)"), rel=RTOL)


def test_lenet_final_snapshot_tests_like_caffe(tmp_path, monkeypatch):
    solver = _lenet_solver(tmp_path, monkeypatch, weights=["lenet_iter_500.caffemodel"])
    scores = solver.test(0)
    assert scores["loss"] == pytest.approx(
        _logged(r"Iteration 500, Testing net \(#0\)\n(?:.*\n)*?.*Test net output #0: "
                r"loss = (\S+)"), rel=RTOL)
