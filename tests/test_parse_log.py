"""The log parser reads Caffe's own logs and ours into train/test series."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from solvers.log_parser import parse_log

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden"

OUR_LOG = """\
I1126 10:00:00.000000  1234 solver.cpp:347] Iteration 0, Testing net (#0)
I1126 10:00:00.500000  1234 solver.cpp:414]     Test net output #0: accuracy = 0.1
I1126 10:00:00.500000  1234 solver.cpp:414]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1126 10:00:01.000000  1234 solver.cpp:239] Iteration 0 (0 iter/s, 1s/10 iters), loss = 2.4
I1126 10:00:01.000000  1234 solver.cpp:258]     Train net output #0: loss = 2.4 (* 1 = 2.4 loss)
I1126 10:00:01.000000  1234 sgd_solver.cpp:112] Iteration 0, lr = 0.01
I1126 10:00:02.000000  1234 solver.cpp:239] Iteration 10 (10 iter/s, 1s/10 iters), loss = 1.5
I1126 10:00:02.000000  1234 solver.cpp:258]     Train net output #0: loss = 1.4 (* 1 = 1.4 loss)
I1126 10:00:02.000000  1234 sgd_solver.cpp:112] Iteration 10, lr = 0.009
I1126 10:00:03.000000  1234 solver.cpp:347] Iteration 20, Testing net (#0)
I1126 10:00:03.250000  1234 solver.cpp:414]     Test net output #0: accuracy = 0.9
I1126 10:00:03.250000  1234 solver.cpp:414]     Test net output #1: loss = 0.3 (* 1 = 0.3 loss)
I1126 10:00:03.300000  1234 solver.cpp:332] Optimization Done.
"""


def test_parses_a_glog_style_log():
    train, test = parse_log(OUR_LOG.splitlines(), year=2026)
    assert [r["NumIters"] for r in train] == [0, 10]
    assert [r["loss"] for r in train] == [2.4, 1.4]
    assert [r["smoothed_loss"] for r in train] == [2.4, 1.5]
    assert [r["LearningRate"] for r in train] == [0.01, 0.009]
    assert [r["NumIters"] for r in test] == [0, 20]
    assert [r["accuracy"] for r in test] == [0.1, 0.9]
    assert [r["loss"] for r in test] == [2.3, 0.3]
    assert test[1]["Seconds"] == pytest.approx(3.25)


def _golden(path):
    if not path.exists():
        pytest.skip("golden data from BVLC Caffe not found at %s (a user's own clone has no ../shared)" % path)
    return path


def test_parses_caffes_lenet_log():
    log = _golden(GOLDEN / "lenet" / "train.log")
    train, test = parse_log(log)
    text = log.read_text()
    # one row per display, plus Caffe's closing "Iteration 500, loss = ..." line
    assert len(train) == text.count("Train net output #0") + 1
    assert train[-1]["NumIters"] == 500 and train[-1]["smoothed_loss"] == pytest.approx(0.0385736)
    assert len(test) == text.count("Test net output #0")
    assert train[0]["NumIters"] == 0 and train[0]["loss"] == pytest.approx(2.42288)
    assert train[1]["NumIters"] == 10 and train[1]["LearningRate"] == pytest.approx(0.00999251)
    assert test[-1]["NumIters"] == 500 and test[-1]["loss"] == pytest.approx(0.111263)
    assert all(b["Seconds"] >= a["Seconds"] for a, b in zip(train, train[1:]))


def test_parse_log_tool_writes_csv(tmp_path):
    log = _golden(GOLDEN / "solvers" / "sgd_fixed.log")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "parse_log.py"), str(log), str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "sgd_fixed.log.train") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["NumIters"]) for r in rows] == list(range(10))
    assert rows[0].keys() >= {"NumIters", "Seconds", "LearningRate", "loss"}
    assert (tmp_path / "sgd_fixed.log.test").exists()


def test_plot_log_tool_writes_png(tmp_path):
    log = tmp_path / "ours.log"
    log.write_text(OUR_LOG)
    png = tmp_path / "curve.png"
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_log.py"), str(log), str(png)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    assert mpimg.imread(str(png)).shape[:2] == (500, 800)


def test_missing_log_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "parse_log.py"), str(tmp_path / "nope.log"),
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "no such log file" in out.stderr
