"""Snapshot files under damage: write order, side-file schema, impossible states, HDF5 readers, modes.

Every damaged or foreign file must give the toolkit's own error naming it
(SolverError, NetError, SideFileError), never an exception from protobuf,
h5py or json; a missing or stale side file is a warning and a Caffe-style
resume; the files are written so that the newest solver state always has
its model and its own side file.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from netspec.errors import CaffeError, NetError, SideFileError, SolverError
from netspec.io import file_digest
from solvers import snapshot as snap
from solvers.solver import Solver

from helpers import digits_net, make_digits_lmdb

NET = digits_net()

SOLVER = """net: "net.prototxt"
type: "%s"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 6
snapshot: 3
snapshot_prefix: "tiny"
snapshot_format: %s
random_seed: 3
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    make_digits_lmdb(tmp_path / "digits", n=30, seed=2)
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_solver(workdir, kind="SGD", fmt="BINARYPROTO"):
    (workdir / "solver.prototxt").write_text(SOLVER % (kind, fmt))
    return Solver(str(workdir / "solver.prototxt"))


@pytest.fixture
def trained(workdir):
    """A solver trained 3 iterations with its snapshot tiny_iter_3.*; and the state's path."""
    solver = make_solver(workdir)
    solver.step(3)
    return solver, workdir / "tiny_iter_3.solverstate"


def data_position(solver):
    return solver.net.layer_by_name("data").get_state()["cursor"]["index"]


# ---------------------------------------------------------------- the pair's order

def test_model_then_side_file_then_state_each_renamed_once(workdir, capfd, monkeypatch):
    solver = make_solver(workdir)
    monkeypatch.setenv("CAFFE_TRACE_WRITE_STEPS", "1")
    solver.snapshot()
    renamed = [line.split("renamed to ")[1] for line in capfd.readouterr().err.splitlines()
               if "renamed to" in line]
    assert [os.path.basename(p) for p in renamed] == [
        "tiny_iter_0.caffemodel", "tiny_iter_0.solverstate.json", "tiny_iter_0.solverstate"]
    side = snap.read_side_file("tiny_iter_0.solverstate")
    assert side["state_sha256"] == file_digest("tiny_iter_0.solverstate", "sha256")


def test_resume_without_side_file_warns_that_data_starts_again(trained, caplog):
    solver, state = trained
    os.unlink(str(state) + ".json")
    fresh = make_solver(state.parent)
    with caplog.at_level(logging.WARNING, logger="caffe"):
        fresh.restore(str(state))
    assert fresh.iter == 3 and data_position(fresh) == 0
    assert "has no side file" in caplog.text and "expected for a snapshot made by Caffe" in caplog.text


def test_side_file_of_another_state_is_ignored_with_a_warning(trained, caplog):
    solver, state = trained
    side = json.loads((state.parent / (state.name + ".json")).read_text())
    side["state_sha256"] = "0" * 64      # a side file left by a run killed before its state was renamed
    (state.parent / (state.name + ".json")).write_text(json.dumps(side))
    fresh = make_solver(state.parent)
    with caplog.at_level(logging.WARNING, logger="caffe"):
        fresh.restore(str(state))
    assert fresh.iter == 3 and data_position(fresh) == 0
    assert "belongs to another solver state" in caplog.text


def test_good_side_file_restores_the_data_position(trained):
    solver, state = trained
    fresh = make_solver(state.parent)
    fresh.restore(str(state))
    assert data_position(fresh) == data_position(solver) == 12


# ---------------------------------------------------------------- the side file's schema

BAD_SIDE_FILES = [
    ("[]", "expected an object"),
    ('{"iter": 3}', "missing"),
    ("not json", "damaged"),
    (b"\xff\xfe", "damaged"),
    ('{"iter": -1, "rng": null, "train_net": {}, "test_nets": []}', "side file.iter"),
    ('{"iter": 3.5, "rng": null, "train_net": {}, "test_nets": []}', "side file.iter"),
    ('{"iter": 3, "rng": 7, "train_net": {}, "test_nets": []}', "side file.rng"),
    ('{"iter": 3, "rng": {"bit_generator": "MT19937", "state": {"state": 1, "inc": 1}, "has_uint32": 0, '
     '"uinteger": 0}, "train_net": {}, "test_nets": []}', "bit_generator"),
    ('{"iter": 3, "rng": null, "train_net": [], "test_nets": []}', "side file.train_net"),
    ('{"iter": 3, "rng": null, "train_net": {}, "test_nets": {}, "x": 1}', "unknown entry 'x'"),
    ('{"iter": 3, "rng": null, "train_net": {}, "test_nets": [], "state_sha256": 5}', "SHA-256"),
    ('[' * 100000 + ']' * 100000, "damaged"),
]


@pytest.mark.parametrize("content,message", BAD_SIDE_FILES)
def test_bad_side_file_is_a_named_error_and_ignorable(trained, content, message, caplog):
    solver, state = trained
    side_path = state.parent / (state.name + ".json")
    side_path.write_bytes(content.encode() if isinstance(content, str) else content)
    fresh = make_solver(state.parent)
    with pytest.raises(SideFileError, match=message) as e:
        fresh.restore(str(state))
    assert str(side_path) in str(e.value) and "--ignore-side-file" in str(e.value)
    assert fresh.iter == 0          # nothing was restored from the damaged snapshot
    with caplog.at_level(logging.WARNING, logger="caffe"):
        fresh.restore(str(state), ignore_side_file=True)
    assert fresh.iter == 3 and "Ignoring a bad side file" in caplog.text


def _with_layer_state(state, layer_state):
    side_path = state.parent / (state.name + ".json")
    side = json.loads(side_path.read_text())
    side["train_net"]["data"] = layer_state
    side_path.write_text(json.dumps(side))


@pytest.mark.parametrize("layer_state", [
    5, {}, {"cursor": {"index": "x"}}, {"cursor": {"index": 1, "key": 7}},
    {"cursor": {"index": 1e400, "key": "00000001"}},
    {"cursor": {"index": 2, "key": "00000002"}, "rng": {"bit_generator": "PCG64", "state": 1}},
])
def test_layer_state_that_does_not_fit_is_named_and_rolled_back(trained, layer_state, caplog):
    solver, state = trained
    _with_layer_state(state, layer_state)
    fresh = make_solver(state.parent)
    before = fresh.net.layer_by_name("data").get_state()
    with pytest.raises(SideFileError, match="'data'"):
        fresh.restore(str(state))
    fresh2 = make_solver(state.parent)
    with caplog.at_level(logging.WARNING, logger="caffe"):
        fresh2.restore(str(state), ignore_side_file=True)
    assert "Ignoring side file" in caplog.text
    assert fresh2.net.layer_by_name("data").get_state() == before   # put back as it was
    fresh2.step(1)


def test_side_file_naming_a_layer_the_net_lacks(trained):
    solver, state = trained
    side_path = state.parent / (state.name + ".json")
    side = json.loads(side_path.read_text())
    side["train_net"]["gone"] = {}
    side_path.write_text(json.dumps(side))
    with pytest.raises(SideFileError, match="'gone'"):
        make_solver(state.parent).restore(str(state))


# ---------------------------------------------------------------- impossible solver states

def _state_file(workdir, iteration, learned_net):
    from netspec import caffe_pb2
    state = caffe_pb2.SolverState(iter=iteration, current_step=0)
    state.learned_net = "P" * len(learned_net)
    raw = state.SerializeToString().replace(b"P" * len(learned_net), learned_net)
    path = workdir / "odd.solverstate"
    path.write_bytes(raw)
    return path


def test_negative_iteration_is_a_named_error_not_a_zero_division_in_adam(trained):
    solver, good = trained
    path = _state_file(good.parent, -1, b"tiny_iter_3.caffemodel")
    adam = make_solver(good.parent, "Adam")
    with pytest.raises(SolverError, match="iter is -1") as e:
        adam.restore(str(path))
    assert str(path) in str(e.value)


def test_learned_net_that_is_not_utf8_is_a_named_error(trained):
    solver, good = trained
    path = _state_file(good.parent, 3, b"\xff\xfe\x80.caffemodel")
    with pytest.raises(SolverError, match="not UTF-8"):
        make_solver(good.parent).restore(str(path))


# ---------------------------------------------------------------- HDF5 readers

h5py = pytest.importorskip("h5py", reason="the HDF5 snapshot tests need h5py (pip install h5py)")


@pytest.fixture
def h5_trained(workdir):
    solver = make_solver(workdir, fmt="HDF5")
    solver.step(3)
    return solver, workdir / "tiny_iter_3.solverstate.h5", workdir / "tiny_iter_3.caffemodel.h5"


def _foreign_h5(path, fill):
    with h5py.File(path, "w") as f:
        fill(f)
    return path


def _damaged_copies(workdir, good):
    """Empty, truncated, text and foreign-layout versions of the HDF5 file ``good``."""
    raw = good.read_bytes()
    out = {"empty": b"", "truncated": raw[:len(raw) // 2], "text": b"layer { name: 'x' }\n",
           "half-header": raw[:100]}
    paths = []
    for name, data in out.items():
        p = workdir / ("%s_%s" % (name, good.name))
        p.write_bytes(data)
        paths.append(p)
    paths.append(_foreign_h5(workdir / ("foreign_%s" % good.name), lambda f: f.create_dataset("x", data=[1])))
    paths.append(_foreign_h5(workdir / ("groups_%s" % good.name), lambda f: (
        f.create_group("iter"), f.create_group("data/ip/0"), f.create_dataset("history", data=[1]))))
    paths.append(_foreign_h5(workdir / ("strings_%s" % good.name), lambda f: (
        f.create_dataset("iter", data=np.array([b"x"])), f.create_dataset("learned_net", data=[1.5]),
        f.create_group("data").create_dataset("ip", data=[1]))))
    paths.append(_foreign_h5(workdir / ("badutf8_%s" % good.name), lambda f: (
        f.create_dataset("iter", data=np.array([3], np.int32)),
        f.create_dataset("learned_net", data=np.bytes_(b"\xff\xfe")),
        f.create_group("data").create_group("ip").create_dataset("0", data=np.zeros((2, 2))))))
    paths.append(_foreign_h5(workdir / ("negative_%s" % good.name), lambda f: (
        f.create_dataset("iter", data=np.array([-1], np.int32)),
        f.create_group("data").create_group("ip").create_dataset("7", data=np.zeros(3)))))
    return paths


def test_damaged_hdf5_states_and_models_give_named_errors(h5_trained):
    solver, state, model = h5_trained
    for path in _damaged_copies(state.parent, state):
        with pytest.raises(SolverError) as e:
            snap.read_state(str(path))
        assert str(path) in str(e.value), e.value
        with pytest.raises(CaffeError):
            make_solver(state.parent, fmt="HDF5").restore(str(path))
    for path in _damaged_copies(model.parent, model):
        with pytest.raises(NetError) as e:
            solver.net.copy_from(str(path))
        assert str(path) in str(e.value), e.value


def test_hdf5_snapshot_round_trip(h5_trained):
    solver, state, model = h5_trained
    fresh = make_solver(state.parent, fmt="HDF5")
    fresh.restore(str(state))
    assert fresh.iter == 3 and data_position(fresh) == data_position(solver)
    np.testing.assert_array_equal(fresh.net.params["ip"][0].data, solver.net.params["ip"][0].data)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_snapshot_files_get_the_mode_open_would_give(workdir, umask):
    old = os.umask(umask)
    try:
        for fmt in ("BINARYPROTO", "HDF5"):
            model, state = make_solver(workdir, fmt=fmt).snapshot()
            for path in (model, state, state + ".json"):
                assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, (path, oct(os.stat(path).st_mode))
    finally:
        os.umask(old)


# ---------------------------------------------------------------- stale temporaries

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_snapshot_temporaries_of_dead_runs_are_removed_and_logged(workdir, caplog):
    from netspec.atomic import temp_prefix
    dead = _dead_pid()
    ours_dead = temp_prefix("tiny_iter_3.caffemodel").replace("-%d-" % os.getpid(), "-%d-" % dead) + "x1y2z3"
    ours_alive = temp_prefix("tiny_iter_3.solverstate") + "a1b2c3"
    other_prefix = temp_prefix("other_iter_3.caffemodel").replace("-%d-" % os.getpid(), "-%d-" % dead) + "q"
    unrelated = ".tiny_iter_3.caffemodel.abc123.tmp"      # not our pattern: someone else's file
    for name in (ours_dead, ours_alive, other_prefix, unrelated):
        (workdir / name).write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="caffe"):
        make_solver(workdir)
    assert not (workdir / ours_dead).exists()
    assert "Removed stale temporary" in caplog.text and ours_dead in caplog.text
    for name in (ours_alive, other_prefix, unrelated):
        assert (workdir / name).exists(), name


def test_solve_py_reports_a_bad_side_file_and_resumes_when_told_to_ignore_it(trained, capsys):
    from solvers import cli
    solver, state = trained
    (state.parent / (state.name + ".json")).write_text('{"iter": "three"}')
    args = ["train", "--solver", "solver.prototxt", "--snapshot", state.name, "--iterations", "4"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "side file" in err and state.name + ".json" in err and "--ignore-side-file" in err
    assert "Traceback" not in err
    assert cli.main(args + ["--ignore-side-file"]) == 0
    assert "Ignoring a bad side file as asked" in capsys.readouterr().err
    assert read_state_iter(state.parent / "tiny_iter_4.solverstate") == 4


def read_state_iter(path):
    return snap.read_state(str(path))["iter"]
