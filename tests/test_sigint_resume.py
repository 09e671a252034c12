"""Ctrl-C during `tools/solve.py train`, then `--snapshot` resume, ends with the weights of a run never stopped.

This is the user's story end to end, in subprocesses as a user runs it: a
small net (LMDB data, Dropout so the random generator matters, a test net
every 10 iterations, snapshots every 10) is interrupted with SIGINT once the
log shows iterations; the tool must snapshot, stop and exit 0; resuming from
that snapshot to iteration F must give exactly the weights and solver history
of an uninterrupted run to F.
"""
import re
import signal
import subprocess
import sys

import numpy as np

from solvers.log_parser import parse_log

from helpers import SOLVE, caffemodel_params, make_digits_lmdb, signal_when_logged


NET = """name: "resume"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "digits_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "digits_lmdb" batch_size: 10 backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 20 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
test_iter: 3
test_interval: 10
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.5
stepsize: 25
display: 1
max_iter: 1000000
snapshot: 10
snapshot_prefix: "snap/%s"
random_seed: 5
"""

WAIT_FOR = 25          # iterations the log must show before the SIGINT
EXTRA = 17             # iterations trained after the stop (crosses a test and a snapshot)


def solve(args, cwd, log_name, timeout=120):
    """Run tools/solve.py to completion; return its log text."""
    with open(cwd / (log_name + ".stderr"), "w") as err:
        res = subprocess.run([sys.executable, str(SOLVE)] + args + ["--log", log_name], cwd=str(cwd),
                             stdout=subprocess.DEVNULL, stderr=err, timeout=timeout)
    text = (cwd / log_name).read_text()
    assert res.returncode == 0, (cwd / (log_name + ".stderr")).read_text()[-3000:]
    return text


def test_sigint_snapshot_and_resume_equal_uninterrupted(tmp_path):
    make_digits_lmdb(tmp_path / "digits_lmdb", n=70, seed=1)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "snap").mkdir()
    for name in ("a", "b"):
        (tmp_path / ("%s.prototxt" % name)).write_text(SOLVER % name)

    # 1. train, interrupted by Ctrl-C once some iterations are logged
    rc, text, stderr = signal_when_logged(["train", "--solver", "a.prototxt"], tmp_path, "a.log",
                                          r"\] Iteration %d \(" % WAIT_FOR, signal.SIGINT)
    assert rc == 0, text[-3000:]
    assert "SIGINT received" in text and "Optimization stopped early." in text
    assert "Traceback" not in stderr
    states = re.findall(r"Snapshotting solver state to binary proto file snap/a_iter_(\d+)\.solverstate", text)
    stop = int(states[-1])
    assert WAIT_FOR <= stop < 1000000
    last_iter = max(int(i) for i in re.findall(r"\] Iteration (\d+) \(", text))
    assert stop == last_iter + 1          # the snapshot holds the last update made, nothing was lost
    for ext in (".caffemodel", ".solverstate"):
        assert (tmp_path / "snap" / ("a_iter_%d%s" % (stop, ext))).is_file()
    assert 10 in [int(s) for s in states] and 20 in [int(s) for s in states]    # the periodic ones too

    final = stop + EXTRA
    # 2. resume from the SIGINT snapshot to `final`
    resumed_log = solve(["train", "--solver", "a.prototxt", "--snapshot", "snap/a_iter_%d.solverstate" % stop,
                         "--iterations", str(final)], tmp_path, "c.log")
    assert "Resuming from snap/a_iter_%d.solverstate" % stop in resumed_log
    # 3. the same training, never interrupted
    straight_log = solve(["train", "--solver", "b.prototxt", "--iterations", str(final)], tmp_path, "b.log")

    resumed = caffemodel_params(tmp_path / "snap" / ("a_iter_%d.caffemodel" % final))
    straight = caffemodel_params(tmp_path / "snap" / ("b_iter_%d.caffemodel" % final))
    assert resumed.keys() == straight.keys() and len(straight) == 4
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg="%s blob %d" % key)

    from solvers.snapshot import read_state
    state_a = read_state(str(tmp_path / "snap" / ("a_iter_%d.solverstate" % final)))
    state_b = read_state(str(tmp_path / "snap" / ("b_iter_%d.solverstate" % final)))
    assert state_a["iter"] == state_b["iter"] == final
    assert len(state_a["history"]) == len(state_b["history"]) == 4
    for h_a, h_b in zip(state_a["history"], state_b["history"]):
        np.testing.assert_array_equal(h_a, h_b)

    # the raw training losses after the stop agree iteration by iteration
    def losses(log_text):
        rows, _ = parse_log(log_text.splitlines())
        return {r["NumIters"]: r["loss"] for r in rows if "loss" in r and r["NumIters"] >= stop}
    after_resume, uninterrupted = losses(resumed_log), losses(straight_log)
    assert sorted(after_resume) == list(range(stop, final))
    assert after_resume == {i: uninterrupted[i] for i in after_resume}
