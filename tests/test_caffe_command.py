"""The ``caffe`` console command (solvers/caffe_tool.py): Caffe's tool lines, run as a user would.

Each test runs the installed ``caffe`` script (``python -m solvers.caffe_tool``
where the package is not installed) in a subprocess, in a folder holding a
tiny DummyData net, so nothing but the command line is shared with the tests.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netspec import caffe_pb2
from netspec.io import read_binary

ROOT = Path(__file__).resolve().parents[1]

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
base_lr: 0.1
lr_policy: "fixed"
display: 1
max_iter: 3
snapshot_prefix: "snap/tiny"
solver_mode: CPU
random_seed: 5
"""


def caffe_command():
    script = Path(sys.executable).with_name("caffe")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "solvers.caffe_tool"]


def caffe(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(caffe_command() + list(args), cwd=str(cwd), capture_output=True, text=True,
                         timeout=120, env=env)
    return res.returncode, res.stdout, res.stderr


@pytest.fixture
def work(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    (tmp_path / "snap").mkdir()
    return tmp_path


def test_train_test_time_as_in_caffes_tutorials(work):
    rc, _, err = caffe(["train", "--solver=solver.prototxt", "-iterations", "2"], work)
    assert rc == 0, err
    assert "Iteration 0" in err and "Iteration 1" in err and "Optimization Done." in err
    model = work / "snap" / "tiny_iter_2.caffemodel"        # -iterations overrides max_iter
    assert model.is_file()
    params = read_binary(str(model), caffe_pb2.NetParameter)
    assert [l.name for l in params.layer if l.blobs] == ["ip"]

    rc, _, err = caffe(["test", "-model", "net.prototxt", "-weights=snap/tiny_iter_2.caffemodel",
                        "-iterations", "3"], work)
    assert rc == 0, err
    assert "Running for 3 iterations." in err
    assert re.search(r"Batch 2, loss = [-+.\de]+", err)
    assert re.search(r"\] loss = [-+.\de]+ \(\* 1 = [-+.\de]+ loss\)", err)

    rc, _, err = caffe(["time", "-model", "net.prototxt", "-iterations", "2"], work)
    assert rc == 0, err
    assert "Average Forward pass" in err and "Average Forward-Backward" in err


def test_resume_from_snapshot_and_weights(work):
    assert caffe(["train", "-solver", "solver.prototxt", "-iterations=2"], work)[0] == 0
    rc, _, err = caffe(["train", "-solver", "solver.prototxt", "-snapshot",
                        "snap/tiny_iter_2.solverstate"], work)
    assert rc == 0, err
    assert "Resuming from snap/tiny_iter_2.solverstate" in err
    assert "Iteration 2" in err and "Iteration 0," not in err
    assert (work / "snap" / "tiny_iter_3.caffemodel").is_file()
    rc, _, err = caffe(["train", "-solver", "solver.prototxt", "-weights", "snap/tiny_iter_2.caffemodel",
                        "-snapshot", "snap/tiny_iter_2.solverstate"], work)
    assert rc == 2 and "not both" in err


def test_device_query_and_version(work):
    rc, _, err = caffe(["device_query"], work)
    assert rc == 0, err
    assert "Querying GPUs" in err
    rc, out, _ = caffe(["--version"], work)
    assert rc == 0 and out.startswith("caffe version 1.0.0") and "caffe-toolkit" in out


@pytest.mark.parametrize("args, rc, words", [
    ([], 2, ["usage: caffe <command>", "device_query"]),
    (["train", "-solver", "solver.prototxt", "-frobnicate", "3"], 2, ["unrecognized", "-frobnicate"]),
    (["brew"], 2, ["unknown command 'brew'"]),
    (["train"], 2, ["needs a solver"]),
    (["train", "-solver", "absent.prototxt"], 1, ["absent.prototxt"]),
])
def test_bad_command_lines_are_one_line_errors(work, args, rc, words):
    code, _, err = caffe(args, work)
    assert code == rc, err
    assert "Traceback" not in err
    for word in words:
        assert word in err
    if args:      # the error is one line (INFO lines of the log may come before it)
        lines = [line for line in err.splitlines() if line.strip() and not re.match(r"[IW]\d{4} ", line)]
        assert len(lines) == 1 and lines[0].startswith("caffe"), err


def test_device_query_prints_each_gpus_properties(monkeypatch, capsys):
    """In process, with a stand-in for CuPy's CUDA runtime (no GPU needed)."""
    import types
    from solvers import caffe_tool
    props = {"name": b"Fake GPU", "major": 9, "minor": 0, "totalGlobalMem": 1 << 30,
             "multiProcessorCount": 7, "deviceOverlap": 1, "kernelExecTimeoutEnabled": 0}
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 2,
                                    getDeviceProperties=lambda i: dict(props) if i < 2 else 1 / 0)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    assert caffe_tool.main(["device_query", "-gpu", "all"]) == 0
    err = capsys.readouterr().err
    assert "Querying GPUs all" in err
    assert re.search(r"Device id: +0\n", err) and re.search(r"Device id: +1\n", err)
    assert re.search(r"Name: +Fake GPU", err) and re.search(r"Number of multiprocessors: +7", err)
    assert re.search(r"Concurrent copy and execution: +Yes", err)
    assert caffe_tool.main(["device_query", "--gpu=5"]) == 1
    assert "cannot query GPU 5" in capsys.readouterr().err


def test_every_cli_flag_takes_the_gflags_spellings():
    """Flags added to solvers/cli.py (signals, MPI, ...) work as -flag v, -flag=v, --flag=v."""
    from solvers import cli
    parser = cli.build_parser("caffe")
    names = [o[2:] for o in parser._option_string_actions if o.startswith("--") and o != "--help"]
    assert {"solver", "weights", "snapshot", "gpu", "iterations", "sigint_effect"} <= set(names)
    for name in names:
        assert cli._normalise_flags(["-%s=v" % name, "-" + name, "--%s=v" % name], parser) == \
            ["--%s=v" % name, "--" + name, "--%s=v" % name]
    args = cli.parse_args(["train", "-solver=s.prototxt", "-sighup_effect", "stop", "-gpu=0"], "caffe")
    assert (args.solver, args.sighup_effect, args.gpu) == ("s.prototxt", "stop", "0")
