"""Stopping `tools/solve.py train` by signal: SIGTERM as SIGINT, and a snapshot whenever one is promised.

Subprocesses, as a scheduler or a user stops a run: SIGTERM snapshots, stops
and exits 143; SIGINT during the iteration-0 test writes the snapshot it
announces; the snapshot each leaves resumes with its side file.
"""
import re
import signal

import pytest

from solvers.snapshot import read_side_file, read_state

from helpers import digits_net, make_digits_lmdb, signal_when_logged

NET = digits_net(test_batch=5)

SOLVER = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
display: 1
max_iter: 100000000
snapshot: 1000000
snapshot_prefix: "snap/tiny"
random_seed: 3
%s
"""


@pytest.fixture
def workdir(tmp_path):
    make_digits_lmdb(tmp_path / "digits", n=30, seed=2)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "snap").mkdir()
    return tmp_path


def _snapshots(log_text):
    return [int(i) for i in re.findall(r"Snapshotting solver state to binary proto file "
                                       r"snap/tiny_iter_(\d+)\.solverstate", log_text)]


def _resume(workdir, iteration, log_name):
    """Resume from snap/tiny_iter_<iteration> for one more iteration; return the log."""
    import subprocess
    import sys
    from helpers import SOLVE
    res = subprocess.run([sys.executable, str(SOLVE), "train", "--solver", "solver.prototxt",
                          "--snapshot", "snap/tiny_iter_%d.solverstate" % iteration,
                          "--iterations", str(iteration + 1), "--log", log_name],
                         cwd=str(workdir), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return (workdir / log_name).read_text()


def test_sigterm_snapshots_stops_and_exits_143(workdir):
    (workdir / "solver.prototxt").write_text(SOLVER % "")
    rc, text, stderr = signal_when_logged(["train", "--solver", "solver.prototxt"], workdir, "run.log",
                                          r"\] Iteration 5 \(", signal.SIGTERM)
    assert rc == 143, stderr[-3000:]
    assert "SIGTERM received: snapshotting and stopping" in text
    assert "Optimization stopped early." in text and "Traceback" not in stderr
    stop = _snapshots(text)[-1]
    last_iter = max(int(i) for i in re.findall(r"\] Iteration (\d+) \(", text))
    assert stop == last_iter + 1 >= 6          # the last update made is saved
    assert read_state(workdir / "snap" / ("tiny_iter_%d.solverstate" % stop))["iter"] == stop
    assert read_side_file(workdir / "snap" / ("tiny_iter_%d.solverstate" % stop))["iter"] == stop
    resumed = _resume(workdir, stop, "resume.log")
    assert "has no side file" not in resumed and "Ignoring" not in resumed


def test_sigterm_effect_stop_does_not_snapshot(workdir):
    (workdir / "solver.prototxt").write_text(SOLVER % "snapshot_after_train: false")
    rc, text, stderr = signal_when_logged(["train", "--solver", "solver.prototxt", "--sigterm_effect",
                                           "stop"], workdir, "run.log", r"\] Iteration 3 \(", signal.SIGTERM)
    assert rc == 143, stderr[-3000:]
    assert "SIGTERM received: stop requested" in text
    assert _snapshots(text) == [] and list((workdir / "snap").iterdir()) == []


def test_sigint_during_the_iteration_0_test_writes_the_snapshot_it_announces(workdir):
    # a test of a million batches: the signal surely comes during it
    (workdir / "solver.prototxt").write_text(SOLVER % "test_iter: 1000000\ntest_interval: 50")
    rc, text, stderr = signal_when_logged(["train", "--solver", "solver.prototxt"], workdir, "run.log",
                                          r"Iteration 0, Testing net \(#0\)", signal.SIGINT)
    assert rc == 0, stderr[-3000:]
    assert "SIGINT received: snapshotting and stopping" in text and "Test interrupted." in text
    assert _snapshots(text) == [0]
    state = workdir / "snap" / "tiny_iter_0.solverstate"
    assert read_state(state)["iter"] == 0 and read_side_file(state)["iter"] == 0
    assert (workdir / "snap" / "tiny_iter_0.caffemodel").is_file()


def test_a_second_sigterm_or_sigint_aborts_with_128_plus_the_signal():
    from solvers.cli import Aborted, SignalHandler
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = SignalHandler()
        handler._on_signal(signum, None)
        with pytest.raises(Aborted) as e:
            handler._on_signal(signum, None)
        assert e.value.signum == signum
        assert handler.action() == "stop" and handler.stopped_by == signum and handler.wants_snapshot


def test_sigterm_effect_none_ignores_it():
    from solvers.cli import SignalHandler
    handler = SignalHandler(sigterm_effect="none")
    handler._on_signal(signal.SIGTERM, None)
    assert handler.action() == "none" and handler.stopped_by is None
