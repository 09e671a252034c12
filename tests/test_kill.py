"""kill -9 at every write step of a snapshot and of an --overwrite conversion.

The hook in netspec.atomic (CAFFE_KILL_AT_WRITE_STEP=N) makes the process
SIGKILL itself at its N-th write step, so each instant between creating,
filling and renaming a file is hit deterministically. After each kill:
every final-named file loads, resuming from the newest snapshot ends with
exactly the weights of a run never killed, the next run removes the killed
run's temporaries (and says so), and an --overwrite conversion leaves the old
or the new database at the path, never nothing.
"""
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netspec.atomic import KILL_ENV, TRACE_ENV
from solvers.snapshot import read_side_file, read_state
from solvers.solver import Solver

from helpers import SOLVE, _Quiet, caffemodel_params, digits_net, make_digits_lmdb, records

ROOT = Path(__file__).resolve().parents[1]
CONVERT = ROOT / "tools" / "convert_mnist.py"

NET = digits_net()

SOLVER = """net: "net.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: 6
snapshot: 2
snapshot_prefix: "%s"
random_seed: 3
"""

TEMPORARY = re.compile(r"^\..*\.(tmp|old)-")


def run(args, cwd, kill_at=None, trace=False):
    env = dict(os.environ)
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    if trace:
        env[TRACE_ENV] = "1"
    return subprocess.run([sys.executable] + [str(a) for a in args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=120)


def temporaries(directory):
    return sorted(n for n in os.listdir(directory) if TEMPORARY.match(n))


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """A directory with the tiny net and data; the write steps of one run; its final weights."""
    d = tmp_path_factory.mktemp("kill_train")
    make_digits_lmdb(d / "digits", n=30, seed=2)
    (d / "net.prototxt").write_text(NET)
    (d / "ref.prototxt").write_text(SOLVER % "ref")
    res = run([SOLVE, "ref.prototxt"], d, trace=True)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = re.findall(r"write step (\d+): (.*)", res.stderr)
    return d, steps, caffemodel_params(d / "ref_iter_6.caffemodel")


def test_training_killed_at_every_step_of_a_snapshot_resumes_exactly(training, tmp_path, monkeypatch,
                                                                     caplog):
    d, steps, reference = training
    second = [int(n) for n, what in steps if "_iter_4." in what]   # every step of the 2nd snapshot
    assert len(second) == 9, steps
    monkeypatch.chdir(d)
    for step in second:
        prefix = "k%d" % step
        (d / ("%s.prototxt" % prefix)).write_text(SOLVER % prefix)
        res = run([SOLVE, "%s.prototxt" % prefix], d, kill_at=step)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        # every final-named file loads
        for name in os.listdir(d):
            if name.startswith(prefix + "_iter_"):
                if name.endswith(".caffemodel"):
                    caffemodel_params(d / name)
                elif name.endswith(".solverstate"):
                    read_state(d / name)
                else:
                    assert name.endswith(".solverstate.json"), name
                    read_side_file(d / name[:-5])
        states = sorted(int(m) for m in re.findall(r"%s_iter_(\d+)\.solverstate\b(?!\.)" % prefix,
                                                    " ".join(os.listdir(d))))
        newest = states[-1]
        assert newest in (2, 4)
        left = [n for n in temporaries(d) if n.startswith("." + prefix)]
        # resume from the newest snapshot, as a user would: the stale temporaries go, the side file fits
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="caffe"):
            solver = Solver(str(d / ("%s.prototxt" % prefix)))
            solver.solve("%s_iter_%d.solverstate" % (prefix, newest))
        assert [n for n in temporaries(d) if n.startswith("." + prefix)] == []
        for name in left:
            assert "Removed stale temporary %s" % (d / name) in caplog.text
        assert "side file" not in caplog.text, caplog.text     # no warning: it was its own
        resumed = caffemodel_params(d / ("%s_iter_6.caffemodel" % prefix))
        for key in reference:
            np.testing.assert_array_equal(resumed[key], reference[key], err_msg="kill at step %d" % step)


# ---------------------------------------------------------------- conversion with --overwrite

def _write_idx(d, n):
    """An IDX image/label pair of n 4x4 images."""
    import struct
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    (d / "images.idx").write_bytes(struct.pack(">IIII", 0x803, n, 4, 4) + images.tobytes())
    (d / "labels.idx").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def test_conversion_killed_at_every_step_leaves_the_old_or_the_new_database(tmp_path, monkeypatch, caplog):
    from solvers.data.mnist import convert_mnist
    monkeypatch.chdir(tmp_path)
    new_n, old_n = 2500, 30              # 2500 records: three commits of 1000
    _write_idx(tmp_path, new_n)
    convert = [CONVERT, "images.idx", "labels.idx", "db", "--overwrite"]
    make_digits_lmdb(tmp_path / "db", n=old_n, seed=1)
    traced = run(convert, tmp_path, trace=True)
    assert traced.returncode == 0, traced.stderr
    steps = re.findall(r"write step (\d+): (.*)", traced.stderr)
    assert any("exchanged" in what for _, what in steps), steps   # this system swaps atomically
    assert len(records(tmp_path / "db")) == new_n
    for step in range(1, len(steps) + 1):
        shutil.rmtree(tmp_path / "db")
        make_digits_lmdb(tmp_path / "db", n=old_n, seed=1)
        res = run(convert, tmp_path, kill_at=step)
        assert res.returncode == -signal.SIGKILL, (step, res.stderr[-2000:])
        assert len(records(tmp_path / "db")) in (old_n, new_n), "kill at step %d" % step
        left = temporaries(tmp_path)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="caffe"):      # the next run, in this process
            convert_mnist("images.idx", "labels.idx", "db", overwrite=True, progress=_Quiet())
        assert len(records(tmp_path / "db")) == new_n and temporaries(tmp_path) == []
        for name in left:
            assert "Removed stale temporary %s" % (tmp_path / name) in caplog.text, caplog.text


def test_overwrite_without_an_atomic_swap_is_completed_by_the_next_run(tmp_path, monkeypatch, caplog):
    """Where renameat2 cannot swap, the old database moved aside is put back if the rename never came."""
    from solvers.data import lmdb_source
    make_digits_lmdb(tmp_path / "db", n=30, seed=1)
    monkeypatch.setattr(lmdb_source, "exchange_paths", lambda a, b: False)
    real_rename = os.rename

    def rename_then_die(src, dst):
        real_rename(src, dst)
        if os.path.basename(dst) == "db" and ".old-" in os.path.basename(os.path.dirname(dst)):
            raise KeyboardInterrupt   # "killed" between moving the old one aside and renaming the new
    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        with lmdb_source.LMDBWriter(tmp_path / "db", overwrite=True) as w:
            w.put("00000000", b"x")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (tmp_path / "db").exists()
    # a killed process leaves names with its PID; make them look like a dead one's
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for name in temporaries(tmp_path):
        os.rename(tmp_path / name, tmp_path / re.sub(r"-%d-" % os.getpid(), "-%s-" % dead, name))
    with caplog.at_level(logging.WARNING, logger="caffe"):
        with pytest.raises(Exception, match="already exists"):
            lmdb_source.LMDBWriter(tmp_path / "db")     # the next run puts the old one back first
    assert len(records(tmp_path / "db")) == 30 and "Restored" in caplog.text
    assert temporaries(tmp_path) == []
