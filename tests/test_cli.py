"""tools/solve.py (solvers/cli.py): Caffe's train/test/time verbs, flags, errors before iteration 0,
signals, the progress bar, the log file, and the hand-off to a real pycaffe (--backend caffe)."""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.errors import CaffeError, DataError
from solvers import cli
from solvers.log_parser import parse_log

from helpers import caffemodel_params, make_digits_lmdb

ROOT = Path(__file__).resolve().parents[1]
SOLVE = ROOT / "tools" / "solve.py"

NET = """name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "train_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: %(hidden)d weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 10
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
display: 5
max_iter: 20
snapshot: 10
snapshot_prefix: "snap/tiny"
random_seed: 3
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A training folder (LMDB, net, solver, snap/) that is the working directory."""
    make_digits_lmdb(tmp_path / "train_lmdb", n=64, seed=0)
    (tmp_path / "net.prototxt").write_text(NET % {"hidden": 16})
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    (tmp_path / "snap").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def solver_with(work, name, **changes):
    text = SOLVER
    for key, value in changes.items():
        text = re.sub(r"(?m)^%s: .*$" % key, "%s: %s" % (key, value), text) if re.search(
            r"(?m)^%s: " % key, text) else text + "%s: %s\n" % (key, value)
    (work / name).write_text(text)
    return name


def absolute_net_solver(work):
    """A solver naming the net by absolute path (its data source stays relative)."""
    return str(work / solver_with(work, "abs.prototxt", net='"%s"' % (work / "net.prototxt")))


# -- training ---------------------------------------------------------------------------------

def test_short_form_trains_and_snapshots(work, capsys):
    rc, _, err = run(["solver.prototxt"], capsys)
    assert rc == 0, err
    for it in (10, 20):
        assert (work / "snap" / ("tiny_iter_%d.caffemodel" % it)).is_file()
        assert (work / "snap" / ("tiny_iter_%d.solverstate" % it)).is_file()
    # Caffe's lines, glog-prefixed, on stderr
    assert re.search(r"(?m)^I\d{4} [\d:.]+ +\d+ \S+:\d+\] Iteration 5 \(.*\), loss = [\d.e+-]+$", err)
    assert "Use CPU." in err and "Starting Optimization" in err
    assert err.count("Optimization Done.") == 2      # the solver's and the tool's, as in Caffe
    assert "Traceback" not in err


def test_train_verb_gflags_spelling_and_iterations_override(work, capsys):
    rc, _, err = run(["train", "-solver=solver.prototxt", "-iterations", "7"], capsys)
    assert rc == 0, err
    assert (work / "snap" / "tiny_iter_7.caffemodel").is_file()   # snapshot_after_train at the new max_iter
    assert not (work / "snap" / "tiny_iter_10.caffemodel").exists()


def test_resume_from_snapshot_equals_uninterrupted_run(work, capsys):
    assert run(["train", "--solver", "solver.prototxt"], capsys)[0] == 0
    straight = caffemodel_params(work / "snap" / "tiny_iter_20.caffemodel")
    os.remove(work / "snap" / "tiny_iter_20.caffemodel")
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--snapshot", "snap/tiny_iter_10.solverstate"],
                     capsys)
    assert rc == 0, err
    assert "Resuming from snap/tiny_iter_10.solverstate" in err
    assert "Iteration 0," not in err                # it went on from 10
    resumed = caffemodel_params(work / "snap" / "tiny_iter_20.caffemodel")
    assert straight.keys() == resumed.keys()
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=str(key))


def test_weights_finetune_copies_into_the_net(work, capsys):
    assert run(["train", "--solver", "solver.prototxt", "--iterations", "3"], capsys)[0] == 0
    trained = caffemodel_params(work / "snap" / "tiny_iter_3.caffemodel")
    solver = solver_with(work, "ft.prototxt", snapshot_prefix='"snap/ft"', max_iter=0, snapshot=0)
    rc, _, err = run(["train", "--solver", solver, "--weights", "snap/tiny_iter_3.caffemodel"], capsys)
    assert rc == 0, err
    assert "Finetuning from snap/tiny_iter_3.caffemodel" in err
    start = caffemodel_params(work / "snap" / "ft_iter_0.caffemodel")   # no update: the copied weights
    for key in trained:
        np.testing.assert_array_equal(start[key], trained[key])


def test_weights_and_snapshot_are_exclusive(work, capsys):
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--weights", "a.caffemodel",
                      "--snapshot", "b.solverstate"], capsys)
    assert rc == 2
    assert "not both" in err and "Traceback" not in err


# -- errors before iteration 0 ----------------------------------------------------------------

def _one_paragraph(err):
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_missing_data_source_is_reported_cleanly(work, capsys, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "snap").mkdir()
    os.chdir(other)
    rc, _, err = run(["train", "--solver", absolute_net_solver(work)], capsys)
    assert rc == 1
    line = _one_paragraph(err)
    assert "layer 'data'" in line and "'train_lmdb'" in line          # the layer, the path as written
    assert str(other / "train_lmdb") in line                          # resolved
    assert "working directory: %s" % other in line
    assert "Iteration 0" not in err


def test_unwritable_snapshot_prefix_is_reported_before_the_nets(work, capsys):
    solver = solver_with(work, "s.prototxt", snapshot_prefix='"no_such_dir/tiny"')
    rc, _, err = run(["train", "--solver", solver], capsys)
    assert rc == 1
    line = _one_paragraph(err)
    assert "no_such_dir/tiny" in line and "does not exist" in line
    assert "Creating training net" not in err


def test_bad_net_names_file_and_line(work, capsys):
    (work / "net.prototxt").write_text('name: "tiny"\nlayer { name: "data" type: "Data" top "data" }\n'
                                       'layer { nme: "x" }\n')
    rc, _, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert rc == 1
    line = _one_paragraph(err)
    assert "net.prototxt" in line and re.search(r"\b[23]\b", line)


def test_weights_mismatch_names_the_layer(work, capsys):
    assert run(["train", "--solver", "solver.prototxt", "--iterations", "1"], capsys)[0] == 0
    (work / "net.prototxt").write_text(NET % {"hidden": 8})
    solver = solver_with(work, "ft.prototxt", snapshot_prefix='"snap/ft"')
    rc, _, err = run(["train", "--solver", solver, "--weights", "snap/tiny_iter_1.caffemodel"], capsys)
    assert rc == 1
    line = _one_paragraph(err)
    assert "'ip1'" in line and "shape mismatch" in line and "tiny_iter_1.caffemodel" in line


def test_missing_weights_and_snapshot_files(work, capsys):
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--weights", "nope.caffemodel"], capsys)
    assert rc == 1 and "nope.caffemodel" in _one_paragraph(err) and "working directory" in err
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--snapshot", "nope.solverstate"], capsys)
    assert rc == 1 and "nope.solverstate" in _one_paragraph(err)


def test_missing_solver_file(work, capsys):
    rc, _, err = run(["train", "--solver", "absent.prototxt"], capsys)
    assert rc == 1 and "absent.prototxt" in _one_paragraph(err)


def test_debug_shows_the_exception(work, capsys):
    shutil.rmtree(work / "train_lmdb")
    with pytest.raises(DataError):
        cli.main(["train", "--solver", "solver.prototxt", "--debug"])


def test_subprocess_error_has_no_traceback(work):
    env = dict(os.environ, PYTHONPATH="")
    os.mkdir(work / "snap" / "snap")
    res = subprocess.run([sys.executable, str(SOLVE), "train", "--solver", absolute_net_solver(work)],
                         cwd=str(work / "snap"), capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert re.search(r"solve.py train: error: .*layer 'data'.*'train_lmdb'.*working directory", res.stderr)


def test_usage_errors(work, capsys):
    assert run(["frobnicate"], capsys)[0] == 2
    rc, _, err = run(["test", "--model", "net.prototxt"], capsys)
    assert rc == 2 and "--weights" in err
    rc, _, err = run(["train"], capsys)
    assert rc == 2 and "--solver" in err
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--gpu", "x"], capsys)
    assert rc == 2 and "--gpu" in err
    assert run([], capsys)[0] == 2


def test_gpu_without_cupy_is_a_clear_error(work, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed: --gpu works here")
    except ImportError:
        pass
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--gpu", "0"], capsys)
    assert rc == 1
    line = _one_paragraph(err)
    assert "--gpu 0" in line and "CuPy" in line
    from solvers import backend
    assert backend.mode() == "CPU"


def test_gpu_flag_selects_the_device_then_the_mode(work, capsys, monkeypatch):
    from solvers import backend
    calls = []
    monkeypatch.setattr(backend, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(backend, "set_mode_gpu", lambda: calls.append(("set_mode_gpu",)))
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--gpu", "2,3", "--iterations", "1"], capsys)
    assert rc == 0, err
    assert calls == [("set_device", 2), ("set_mode_gpu",)]
    assert "using GPU 2 only" in err and "Use GPU with device ID 2" in err


def test_solver_mode_gpu_without_cupy_falls_back_to_cpu(work, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    solver = solver_with(work, "g.prototxt", solver_mode="GPU", max_iter=1)
    rc, _, err = run(["train", "--solver", solver], capsys)
    assert rc == 0, err
    assert "solver_mode: GPU but CuPy is not installed" in err and "Use CPU." in err


# -- test and time ------------------------------------------------------------------------------

def test_test_verb_prints_batches_and_means(work, capsys):
    assert run(["train", "--solver", "solver.prototxt"], capsys)[0] == 0
    rc, _, err = run(["test", "--model", "net.prototxt", "--weights", "snap/tiny_iter_20.caffemodel",
                      "--iterations", "3"], capsys)
    assert rc == 0, err
    acc = [float(v) for v in re.findall(r"\] Batch \d, accuracy = ([\d.e+-]+)", err)]
    losses = [float(v) for v in re.findall(r"\] Batch \d, loss = ([\d.e+-]+)", err)]
    assert len(acc) == 3 and len(losses) == 3
    mean_acc = float(re.search(r"\] accuracy = ([\d.e+-]+)$", err, re.M).group(1))
    mean_loss = re.search(r"\] loss = ([\d.e+-]+) \(\* 1 = ([\d.e+-]+) loss\)$", err, re.M)
    assert mean_acc == pytest.approx(np.mean(acc), rel=1e-4)
    assert float(mean_loss.group(1)) == pytest.approx(np.mean(losses), rel=1e-4)
    assert float(re.search(r"\] Loss: ([\d.e+-]+)", err).group(1)) == pytest.approx(np.mean(losses), rel=1e-4)


def test_test_verb_level_and_stage_select_layers(work, capsys):
    assert run(["train", "--solver", "solver.prototxt", "--iterations", "1"], capsys)[0] == 0
    (work / "staged.prototxt").write_text(NET.replace('include { phase: TEST } }', 'include { phase: TEST '
                                                      'stage: "score" min_level: 2 } }') % {"hidden": 16})
    base = ["test", "--model", "staged.prototxt", "--weights", "snap/tiny_iter_1.caffemodel", "--iterations", "1"]
    for extra, has_accuracy in (([], False), (["--stage", "score"], False), (["--level", "2"], False),
                                (["--stage", "x,score", "--level", "3"], True)):
        rc, _, err = run(base + extra, capsys)
        assert rc == 0, err
        assert ("Batch 0, accuracy = " in err) is has_accuracy, extra


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy's overflow, expected here
def test_nan_loss_mid_run_is_reported_cleanly(work, capsys):
    solver = solver_with(work, "nan.prototxt", base_lr="1e30")
    rc, _, err = run(["train", "--solver", solver], capsys)
    assert rc == 1
    line = _one_paragraph(err)
    assert "NaN" in line and "snap/tiny_iter_1.caffemodel" in line
    assert (work / "snap" / "tiny_iter_1.caffemodel").is_file()


def test_test_verb_returns_the_means(work, capsys):
    assert run(["train", "--solver", "solver.prototxt", "--iterations", "2"], capsys)[0] == 0
    args = cli.parse_args(["test", "--model", "net.prototxt", "--weights", "snap/tiny_iter_2.caffemodel",
                           "--iterations", "4"])
    means = cli.test(args)
    assert set(means) == {"accuracy", "loss"}
    assert 0.0 <= means["accuracy"] <= 1.0 and means["loss"] > 0


def test_time_verb_uses_tools_time(work, capsys):
    rc, _, err = run(["time", "--model", "net.prototxt", "--iterations", "2"], capsys)
    assert rc == 0, err
    assert "Average Forward pass" in err and "ip1\tforward" in err.replace("      ip1", "ip1")


def test_backend_caffe_refuses_test_and_time(work, capsys):
    rc, _, err = run(["time", "--model", "net.prototxt", "--backend", "caffe"], capsys)
    assert rc == 2 and "train only" in err


# -- log file and log parser ----------------------------------------------------------------------

def test_log_file_is_parsed_by_log_parser(work, capsys):
    rc, _, err = run(["solver.prototxt", "--log", "train.log"], capsys)
    assert rc == 0, err
    text = (work / "train.log").read_text()
    assert "Iteration 15 (" in text and "\x1b" not in text
    train_rows, test_rows = parse_log(str(work / "train.log"))
    assert [r["NumIters"] for r in train_rows] == [0, 5, 10, 15, 20]
    logged = [float(v) for v in re.findall(r"\] Iteration \d+.*, loss = ([\d.e+-]+)", text)]
    assert [r["smoothed_loss"] for r in train_rows] == pytest.approx(logged)
    outputs = [float(v) for v in re.findall(r"Train net output #0: loss = ([\d.e+-]+)", text)]
    assert [r["loss"] for r in train_rows[:4]] == pytest.approx(outputs)
    assert all(r["LearningRate"] == pytest.approx(0.05) for r in train_rows)
    assert [r["NumIters"] for r in test_rows] == [0, 10, 20]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in test_rows)
    assert all(r["Seconds"] >= 0 for r in train_rows)


def test_errors_go_to_the_log_file_too(work, capsys):
    solver = solver_with(work, "s.prototxt", snapshot_prefix='"no_such_dir/tiny"')
    rc, _, _ = run(["train", "--solver", solver, "--log", "bad.log"], capsys)
    assert rc == 1
    assert re.search(r"(?m)^E\d{4} .*\] cannot write snapshots", (work / "bad.log").read_text())


def test_loggers_are_put_back(work, capsys):
    import logging
    logger = logging.getLogger("caffe")
    before = (list(logger.handlers), logger.level, logger.propagate)
    assert run(["solver.prototxt", "--iterations", "1", "--log", "x.log"], capsys)[0] == 0
    assert (list(logger.handlers), logger.level, logger.propagate) == before


# -- progress bar ----------------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_only(work, capsys, monkeypatch):
    tty, captured = _Tty(), sys.stderr
    monkeypatch.setattr(sys, "stderr", tty)
    assert cli.main(["solver.prototxt", "--log", "t.log"]) == 0
    shown = tty.getvalue()
    assert "\r\x1b[K[" in shown and "it/s" in shown and "ETA" in shown and "20/20 iters" in shown
    assert shown.endswith("Optimization Done.\n")                 # no stale bar after training
    logged = (work / "t.log").read_text()
    assert "ETA" not in logged and "\x1b" not in logged
    monkeypatch.setattr(sys, "stderr", captured)
    capsys.readouterr()
    rc, _, err = run(["solver.prototxt"], capsys)
    assert rc == 0 and "\x1b" not in err and "ETA" not in err


def test_progress_bar_rate_and_eta():
    now = [100.0]
    out = io.StringIO()
    bar = cli.ProgressBar(out, total=110, width=10, clock=lambda: now[0], min_interval=0)
    bar.update(11)              # first update: iteration 10 just finished
    now[0] += 2.0
    bar.update(21)              # 10 iterations in 2 s
    assert bar.line() == "[#.........] 21/110 iters  5.0 it/s  ETA 0:00:18"
    bar.clear()
    assert out.getvalue().endswith("\r\x1b[K")


# -- signals ------------------------------------------------------------------------------------

def test_signal_handler_effects():
    before = signal.getsignal(signal.SIGINT)
    with cli.SignalHandler() as h:
        assert h.action() == "none"
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.action() == "snapshot"
        assert h.action() == "none"
        os.kill(os.getpid(), signal.SIGINT)
        assert h.action() == "stop" and h.wants_snapshot
        with pytest.raises(KeyboardInterrupt):   # a second Ctrl-C aborts
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with cli.SignalHandler("none", "stop") as h:
        os.kill(os.getpid(), signal.SIGINT)
        assert h.action() == "none"
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.action() == "stop" and not h.wants_snapshot


def _signal_at(monkeypatch, iteration, signum):
    """Send ``signum`` to this process while the solver runs ``iteration``."""
    original = cli._attach_progress_bar

    def attach(solver, stream):
        def on_start():
            if solver.iter == iteration:
                os.kill(os.getpid(), signum)
        solver.add_callback(on_start, lambda: None)
        return original(solver, stream)
    monkeypatch.setattr(cli, "_attach_progress_bar", attach)


def test_sigint_snapshots_then_stops(work, capsys, monkeypatch):
    _signal_at(monkeypatch, 7, signal.SIGINT)
    solver = solver_with(work, "s.prototxt", snapshot_after_train="false", max_iter=1000)
    rc, _, err = run(["train", "--solver", solver], capsys)
    assert rc == 0, err
    assert "SIGINT received" in err and "Optimization stopped early." in err
    assert (work / "snap" / "tiny_iter_8.caffemodel").is_file()     # the update of iteration 7 is kept
    assert (work / "snap" / "tiny_iter_8.solverstate").is_file()
    assert not list((work / "snap").glob("tiny_iter_9.*"))


def test_sigint_effect_none_trains_on_and_sighup_snapshots(work, capsys, monkeypatch):
    _signal_at(monkeypatch, 3, signal.SIGINT)
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--sigint_effect", "none"], capsys)
    assert rc == 0 and "stopped early" not in err
    assert (work / "snap" / "tiny_iter_20.caffemodel").is_file()
    monkeypatch.undo()
    _signal_at(monkeypatch, 3, signal.SIGHUP)
    os.chdir(work)
    rc, _, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert rc == 0 and (work / "snap" / "tiny_iter_4.solverstate").is_file()
    assert (work / "snap" / "tiny_iter_20.caffemodel").is_file()


# -- --backend caffe -------------------------------------------------------------------------------

def test_backend_caffe_without_pycaffe(work, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "caffe", None)      # import caffe fails
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--backend", "caffe"], capsys)
    assert rc == 1
    line = _one_paragraph(err)
    assert "import caffe" in line and "apt-get install caffe-cpu" in line and "pycaffe" in line
    assert "Jetson" in line


def test_backend_caffe_rejects_a_module_that_is_not_pycaffe(work, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "caffe", types.ModuleType("caffe"))
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--backend", "caffe"], capsys)
    assert rc == 1 and "not BVLC Caffe's pycaffe" in _one_paragraph(err)


class _FakeNet:
    def __init__(self, calls, name):
        self.calls, self.name = calls, name

    def copy_from(self, path):
        self.calls.append(("copy_from", self.name, path))


class _FakeSolver:
    def __init__(self, calls, path):
        self.calls = calls
        self.solver_text = Path(path).read_text()
        self.net = _FakeNet(calls, "train")
        self.test_nets = [_FakeNet(calls, "test0")]

    def restore(self, path):
        self.calls.append(("restore", path))

    def solve(self):
        self.calls.append(("solve", signal.getsignal(signal.SIGINT) == signal.SIG_DFL))


def fake_pycaffe(calls):
    caffe = types.ModuleType("caffe")
    caffe.__file__ = "/fake/caffe/__init__.py"
    caffe.set_mode_cpu = lambda: calls.append(("set_mode_cpu",))
    caffe.set_mode_gpu = lambda: calls.append(("set_mode_gpu",))
    caffe.set_device = lambda i: calls.append(("set_device", i))

    def get_solver(path):
        calls.append(("get_solver", path))
        return _FakeSolver(calls, path)
    caffe.get_solver = get_solver
    return caffe


def test_backend_caffe_hands_the_solver_file_to_pycaffe(work, capsys, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "caffe", fake_pycaffe(calls))
    before = signal.getsignal(signal.SIGINT)
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--backend", "caffe"], capsys)
    assert rc == 0, err
    assert calls == [("set_mode_cpu",), ("get_solver", "solver.prototxt"), ("solve", True)]
    assert not list((work / "snap").iterdir())     # Caffe (here: nobody) writes the snapshots
    assert signal.getsignal(signal.SIGINT) is before


def test_backend_caffe_gpu_weights_and_snapshot(work, capsys, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "caffe", fake_pycaffe(calls))
    (work / "w1.caffemodel").write_bytes(b"")
    (work / "w2.caffemodel").write_bytes(b"")
    (work / "s.solverstate").write_bytes(b"")
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--backend", "caffe", "--gpu", "1",
                      "--weights", "w1.caffemodel,w2.caffemodel"], capsys)
    assert rc == 0, err
    assert calls[:3] == [("set_device", 1), ("set_mode_gpu",), ("get_solver", "solver.prototxt")]
    assert calls[3:7] == [("copy_from", "train", "w1.caffemodel"), ("copy_from", "test0", "w1.caffemodel"),
                          ("copy_from", "train", "w2.caffemodel"), ("copy_from", "test0", "w2.caffemodel")]
    del calls[:]
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--backend", "caffe",
                      "--snapshot", "s.solverstate"], capsys)
    assert rc == 0, err
    assert calls == [("set_mode_cpu",), ("get_solver", "solver.prototxt"), ("restore", "s.solverstate"),
                     ("solve", True)]


def test_backend_caffe_gets_command_line_overrides_in_a_solver_copy(work, capsys, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "caffe", fake_pycaffe(calls))
    solvers = []
    real = sys.modules["caffe"].get_solver
    sys.modules["caffe"].get_solver = lambda path: solvers.append(real(path)) or solvers[-1]
    rc, _, err = run(["train", "--solver", "solver.prototxt", "--backend", "caffe", "--iterations", "77",
                      "--stage", "a,b"], capsys)
    assert rc == 0, err
    path = calls[1][1]
    assert path != "solver.prototxt" and not os.path.exists(path)    # a temporary copy, removed after
    from google.protobuf import text_format
    param = text_format.Parse(solvers[0].solver_text, caffe_pb2.SolverParameter())
    assert param.max_iter == 77 and list(param.train_state.stage) == ["a", "b"]
    assert param.net == "net.prototxt" and param.snapshot_prefix == "snap/tiny"


def test_error_type_is_caffe_error():
    with pytest.raises(CaffeError):
        cli.parse_args(["nonsense"])
