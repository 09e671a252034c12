"""The first run, as a new user makes it: examples/mnist/create_mnist.py and train_lenet.sh offline.

Everything runs as subprocesses, with the download pointed at a port where
nothing listens (so "no network" is certain and instant). train_lenet.sh runs
in a copy of the project's files in a temporary folder, away from ../shared
and from any LMDB of the checkout.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import records

ROOT = Path(__file__).resolve().parents[1]
CREATE = ROOT / "examples" / "mnist" / "create_mnist.py"
GOLDEN = ROOT.parent / "shared" / "golden" / "lenet"
OFFLINE = ["--mirror", "http://127.0.0.1:9/"]   # the discard port: connection refused at once


def create(out, *args):
    return subprocess.run([sys.executable, str(CREATE), "--out", str(out)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120)


def manifest(out):
    return json.loads((out / "mnist_lmdb.json").read_text())


def count(db):
    return len(records(db))


def test_offline_default_is_the_shipped_test_set(tmp_path):
    r = create(tmp_path, *OFFLINE)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stdout.splitlines() if "could not be downloaded" in line]
    assert len(said) == 1, r.stdout   # one clear line, naming what it does instead
    assert "mnist_test_set" in said[0] and "--split-test 8000" in said[0]
    assert (count(tmp_path / "mnist_train_lmdb"), count(tmp_path / "mnist_test_lmdb")) == (8000, 2000)
    assert manifest(tmp_path)["split_test"] == 8000 and manifest(tmp_path)["complete"]
    if (GOLDEN / "mnist_train_lmdb").is_dir():   # the golden Caffe run's data, record for record
        assert records(tmp_path / "mnist_train_lmdb") == records(GOLDEN / "mnist_train_lmdb")
        assert records(tmp_path / "mnist_test_lmdb") == records(GOLDEN / "mnist_test_lmdb")


def test_rerun_keeps_existing_lmdbs_without_downloading(tmp_path):
    assert create(tmp_path, "--split-test", 8000).returncode == 0
    before = (tmp_path / "mnist_train_lmdb" / "data.mdb").stat().st_mtime_ns
    r = create(tmp_path, *OFFLINE)   # the plain run train_lenet.sh makes
    assert r.returncode == 0, r.stderr
    assert "downloading" not in r.stdout and "keeping the LMDBs" in r.stdout
    assert "split 8000/2000" in r.stdout
    assert (tmp_path / "mnist_train_lmdb" / "data.mdb").stat().st_mtime_ns == before


def test_other_data_rebuilds_never_keeps_stale_lmdbs(tmp_path):
    assert create(tmp_path, "--split-test", 8000).returncode == 0
    r = create(tmp_path, "--split-test", 5000)
    assert r.returncode == 0, r.stderr
    assert "rebuilding" in r.stdout
    assert (count(tmp_path / "mnist_train_lmdb"), count(tmp_path / "mnist_test_lmdb")) == (5000, 5000)
    assert manifest(tmp_path)["split_test"] == 5000
    # after a Fashion-MNIST build, a plain (MNIST) run rebuilds too
    m = manifest(tmp_path)
    m["dataset"] = "fashion-mnist"
    (tmp_path / "mnist_lmdb.json").write_text(json.dumps(m))
    r = create(tmp_path, *OFFLINE)
    assert r.returncode == 0, r.stderr
    assert "hold the Fashion-MNIST test set" in r.stdout and "rebuilding" in r.stdout
    assert manifest(tmp_path)["dataset"] == "mnist"
    assert count(tmp_path / "mnist_train_lmdb") == 8000


def test_interrupted_build_is_rebuilt(tmp_path):
    assert create(tmp_path, "--split-test", 8000).returncode == 0
    m = manifest(tmp_path)
    m["complete"] = False   # as left by a build killed between the two LMDBs
    (tmp_path / "mnist_lmdb.json").write_text(json.dumps(m))
    r = create(tmp_path, "--split-test", 8000)
    assert r.returncode == 0 and "incomplete" in r.stdout and manifest(tmp_path)["complete"]


def test_lmdbs_of_unknown_origin(tmp_path):
    assert create(tmp_path, "--split-test", 8000).returncode == 0
    (tmp_path / "mnist_lmdb.json").unlink()   # as Caffe's convert_mnist_data leaves them
    r = create(tmp_path, "--dataset", "fashion-mnist")
    assert r.returncode == 1 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    r = create(tmp_path, *OFFLINE)   # a plain run uses them, and says what it does not know
    assert r.returncode == 0 and "nothing records which data they hold" in r.stdout
    r = create(tmp_path, "--split-test", 7000, "--overwrite")
    assert r.returncode == 0 and count(tmp_path / "mnist_train_lmdb") == 7000


def _project_copy(dest):
    """The files a clone has (no LMDBs, snapshots, logs or virtual environment)."""
    skip = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", "*_lmdb", "data", "lenet_iter_*",
                                  "*.log", "*.png", "lenet_auto_*", "walkthrough_out", "mnist_lmdb.json",
                                  "tests", "bench", "*.egg-info", "build")
    shutil.copytree(ROOT, dest, ignore=skip)
    return dest


def test_train_lenet_sh_offline_reports_accuracy_and_keeps_earlier_logs(tmp_path):
    repo = _project_copy(tmp_path / "clone")
    env = dict(os.environ, SOLVE_FLAGS="--iterations 10", PYTHONPATH=str(repo))
    run = [shutil.which("bash") or "bash", str(repo / "examples" / "mnist" / "train_lenet.sh")] + OFFLINE
    r = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    mnist = repo / "examples" / "mnist"
    log = (mnist / "lenet_train.log").read_text()
    assert re.search(r"Test net output #0: accuracy = 0\.\d+", log), log[-2000:]
    assert "test_iter: 20" in (mnist / "lenet_auto_solver.prototxt").read_text()
    assert (mnist / "lenet_curve.png").is_file()
    r = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = r.stdout + r.stderr
    assert "keeping the LMDBs" in out and "downloading" not in out
    assert "kept the previous run's examples/mnist/lenet_train.log as examples/mnist/lenet_train.1.log" in out
    assert (mnist / "lenet_train.1.log").read_text() == log
    assert (mnist / "lenet_curve.1.png").is_file() and (mnist / "lenet_curve.png").is_file()
