"""Messages a new user meets on a first run: wrong folder, misspelt fields and types, wrong flags.

The command-line cases run the tools as subprocesses, as a user types them.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netspec import NetSpec, caffe_pb2, layers as L
from netspec.errors import CaffeError, NetSpecError, ProtoError, SolverError
from netspec.io import parse_text

ROOT = Path(__file__).resolve().parents[1]
SOLVE = ROOT / "tools" / "solve.py"

# a Python call in a message: name(...), keyword=True/False, or "call ..."
PYTHON_CALL = re.compile(r"\b[a-z_][\w.]*\([^)]*\)|\w=(True|False)\b|\bcall \w")

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 }
                     data_filler { type: "constant" value: %s } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def solve(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, str(SOLVE)] + [str(a) for a in args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=120)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if ": error: " in line]


# -- the wrong working directory --------------------------------------------------

@pytest.fixture
def project(tmp_path):
    """A project laid out as Caffe's examples: paths in the files are relative to its root."""
    root = tmp_path / "proj"
    ex = root / "examples" / "tiny"
    (ex / "db").mkdir(parents=True)
    (ex / "net.prototxt").write_text(NET % 0.5
                                     + 'layer { name: "img" type: "ImageData" top: "img" top: "l2" '
                                       'image_data_param { source: "examples/tiny/list.txt" batch_size: 1 } '
                                       'include { phase: TEST } }\n')
    (ex / "list.txt").write_text("")
    (ex / "solver.prototxt").write_text('net: "examples/tiny/net.prototxt" base_lr: 0.1 max_iter: 2 '
                                        'lr_policy: "fixed" snapshot: 2 snapshot_prefix: "examples/tiny/t" '
                                        'display: 1\n')
    return root, ex


def test_wrong_folder_says_where_to_run_from(project):
    root, ex = project
    r = solve("train", "--solver", "solver.prototxt", cwd=ex)
    assert r.returncode == 1
    first = error_lines(r)[0]
    assert ("solve.py train: error: paths resolve from the working directory %s; run from %s or use "
            "absolute paths" % (ex, root)) in first
    assert "examples/tiny/net.prototxt" in first and "examples/tiny/list.txt" in first
    r = solve("train", "--solver", "examples/tiny/solver.prototxt", cwd=root)   # from the root it trains
    assert r.returncode == 0, r.stderr[-2000:]


def test_wrong_folder_in_python(project, monkeypatch):
    from solvers.sgd_solvers import SGDSolver
    root, ex = project
    monkeypatch.chdir(ex.parent)   # examples/: two levels below the root
    with pytest.raises(SolverError, match="^paths resolve from the working directory %s; run from %s "
                       % (re.escape(str(ex.parent)), re.escape(str(root)))):
        SGDSolver(str(ex / "solver.prototxt"))


def test_no_folder_hint_when_some_path_resolves(project, tmp_path):
    root, ex = project
    (ex / "examples" / "tiny").mkdir(parents=True)   # the snapshot folder resolves from ex
    r = solve("train", "--solver", "solver.prototxt", cwd=ex)
    assert r.returncode == 1 and "paths resolve from the working directory" not in r.stderr
    assert "net.prototxt" in error_lines(r)[0]   # the usual message about the missing net


# -- snapshot_prefix, --weights, early stops -----------------------------------------

def test_snapshot_prefix_under_a_file(tmp_path):
    from solvers.snapshot import check_prefix_writable
    (tmp_path / "model.caffemodel").write_bytes(b"")
    for prefix in ("model.caffemodel/lenet", "model.caffemodel/deeper/lenet"):
        with pytest.raises(SolverError, match="model.caffemodel' is a file, not a directory"):
            check_prefix_writable(str(tmp_path / prefix))
    with pytest.raises(SolverError, match="the directory does not exist"):
        check_prefix_writable(str(tmp_path / "nowhere" / "lenet"))


def _tiny_solver(tmp_path, value="0.5", extra=""):
    (tmp_path / "net.prototxt").write_text(NET % value)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s" base_lr: 0.1 max_iter: 3 lr_policy: "fixed" display: 1 %s\n'
                      % (tmp_path / "net.prototxt", extra))
    return solver


def test_weights_given_a_solverstate_suggests_snapshot(tmp_path):
    solver = _tiny_solver(tmp_path)
    r = solve("train", "--solver", solver, "--weights", "lenet_iter_500.solverstate")
    assert r.returncode == 2
    assert "--snapshot lenet_iter_500.solverstate" in r.stderr and "--weights lenet_iter_500.caffemodel" in r.stderr
    r = solve("test", "--model", tmp_path / "net.prototxt", "--weights", "x_iter_5.solverstate.h5")
    assert r.returncode == 2 and "--weights x_iter_5.caffemodel.h5" in r.stderr


def test_no_optimization_done_after_an_early_stop(tmp_path):
    # a Python layer that presses Ctrl-C at the second forward pass
    (tmp_path / "ctrl_c.py").write_text(
        "import os, signal\nfrom solvers.caffe import Layer\n"
        "class CtrlC(Layer):\n"
        "    calls = 0\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top):\n"
        "        CtrlC.calls += 1\n"
        "        if CtrlC.calls == 2: os.kill(os.getpid(), signal.SIGINT)\n"
        "        top[0].data[...] = bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = top[0].diff\n")
    python = 'layer { name: "c" type: "Python" bottom: "ip" top: "ip2" python_param { module: "ctrl_c" layer: "CtrlC" } }\n'
    net = (NET % "0.5").replace('layer { name: "loss" type: "EuclideanLoss" bottom: "ip"',
                                python + 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip2"')
    (tmp_path / "net.prototxt").write_text(net)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s" base_lr: 0.1 max_iter: 50 lr_policy: "fixed" display: 1 snapshot_prefix: "%s"\n'
                      % (tmp_path / "net.prototxt", tmp_path / "s"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    r = solve("train", "--solver", solver, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Optimization stopped early." in r.stderr and "Optimization Done." not in r.stderr
    (tmp_path / "nan").mkdir()
    r = solve("train", "--solver", _tiny_solver(tmp_path / "nan", "nan"), env=env,   # NaN loss: an error
              cwd=tmp_path / "nan")   # its snapshot (prefix "") lands here
    assert r.returncode == 1 and "loss is NaN" in r.stderr and "Optimization Done." not in r.stderr


# -- misspelt names -----------------------------------------------------------------

def _netspec_hint():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    with pytest.raises(NetSpecError) as e:
        n.conv = L.Convolution(n.data, kernel_sise=5)
        n.to_proto()
    return re.search(r"Closest valid fields: ([\w, ]+)\.", str(e.value)).group(1).split(", ")


@pytest.mark.parametrize("where", ["layer", "convolution_param"])
def test_prototxt_misspelt_field_gets_netspecs_suggestion(where):
    field = "kernel_sise: 5"
    text = ('layer {\n  name: "conv"\n  %s\n  type: "Convolution"\n}\n' % field if where == "layer" else
            'layer { name: "conv" type: "Convolution" convolution_param { %s } }\n' % field)
    with pytest.raises(ProtoError) as e:
        parse_text(text, caffe_pb2.NetParameter, "net.prototxt")
    suggested = re.search(r"did you mean ((?:'\w+'(?: or )?)+)\?", str(e.value)).group(1)
    assert [s.strip("'") for s in suggested.split(" or ")] == _netspec_hint()
    if where == "layer":
        assert "kernel_size goes inside convolution_param" in str(e.value)


def test_lowercase_type_suggests_the_right_case_first(tmp_path):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    with pytest.raises(CaffeError, match=r"Did you mean 'Convolution'"):
        n.conv = L.convolution(n.data, kernel_size=3)
        n.to_proto()
    from solvers.net import Net
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
        'layer { name: "conv" type: "convolution" bottom: "data" top: "conv" }\n')
    with pytest.raises(CaffeError, match=r"unknown layer type 'convolution'\. Did you mean 'Convolution'"):
        Net(str(tmp_path / "net.prototxt"), caffe_pb2.TEST)


# -- the command-line tools ---------------------------------------------------------------

def test_draw_net_fails_when_it_cannot_write_the_format(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(NET % "0.5")
    env = dict(os.environ, PATH=str(tmp_path / "no-bin"))   # no Graphviz programs to be found
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "draw_net.py"), str(net), str(tmp_path / "net.png")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "net.dot" in r.stderr and not (tmp_path / "net.png").exists()
    assert (tmp_path / "net.dot").read_text().startswith("digraph")
    if shutil.which("dot"):
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "draw_net.py"), str(net), str(tmp_path / "n.svg")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and (tmp_path / "n.svg").read_text().lstrip().startswith("<?xml")


def test_cli_messages_suggest_flags_not_python_calls(tmp_path):
    solver = _tiny_solver(tmp_path)
    db = tmp_path / "db"
    db.mkdir()
    runs = [
        [SOLVE, "train", "--solver", solver, "--weights", "w.solverstate"],
        [SOLVE, "train", "--solver", tmp_path / "missing.prototxt"],
        [SOLVE, "test", "--model", tmp_path / "net.prototxt"],
        [ROOT / "tools" / "convert_mnist.py", ROOT / "examples" / "mnist" / "mnist_test_set" / "t10k-images-idx3-ubyte.gz",
         ROOT / "examples" / "mnist" / "mnist_test_set" / "t10k-labels-idx1-ubyte.gz", db],
        [ROOT / "examples" / "mnist" / "create_mnist.py", "--out", tmp_path, "--from", tmp_path],
    ]
    for args in runs:
        r = subprocess.run([sys.executable] + [str(a) for a in args], capture_output=True, text=True,
                           timeout=120, cwd=str(tmp_path))
        assert r.returncode != 0, args
        said = "\n".join(line for line in r.stderr.splitlines() if not line.startswith(("I1", "W1")))
        assert said and not PYTHON_CALL.search(said), said


# -- the repository --------------------------------------------------------------------------

def test_gitignore_covers_the_examples_outputs():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    outputs = ["examples/mnist/walkthrough_out/loss_accuracy.png", "examples/mnist/mnist_lmdb.json",
               "examples/mnist/lenet_train.1.log", "examples/mnist/lenet_curve.1.png",
               "examples/mnist/.ipynb_checkpoints/walkthrough-checkpoint.ipynb",
               "examples/mnist/mnist_train_lmdb/data.mdb", "examples/mnist/lenet_iter_500.solverstate.json"]
    r = subprocess.run(["git", "check-ignore", "--no-index"] + outputs, cwd=str(ROOT), capture_output=True,
                       text=True)
    assert sorted(r.stdout.split()) == sorted(outputs)
    r = subprocess.run(["git", "check-ignore", "--no-index", "examples/mnist/mnist_test_set/t10k-images-idx3-ubyte.gz"],
                       cwd=str(ROOT), capture_output=True, text=True)
    assert r.returncode == 1   # the shipped data is not ignored
