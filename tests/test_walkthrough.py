"""The LeNet walkthrough (examples/mnist/walkthrough.py and .ipynb) on the golden MNIST LMDBs.

The script runs as a user runs it, from another working directory, on the
LMDBs BVLC Caffe's convert_mnist_data made (digits 0-7999 to train,
8000-9999 to test; read-only). It must print the notebook's shape lists
exactly, write its figures, and reach the notebook's accuracy (> 90%)
after 200 iterations. The test set has 2,000 digits, so 20 test batches
of 100 see each once: the same accuracy as the notebook's 100 batches.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import png_size

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "mnist" / "walkthrough.py"
NOTEBOOK = ROOT / "examples" / "mnist" / "walkthrough.ipynb"
GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
LMDBS = GOLDEN / "lenet"

BLOB_SHAPES = ("[('data', (64, 1, 28, 28)), ('label', (64,)), ('conv1', (64, 20, 24, 24)), "
               "('pool1', (64, 20, 12, 12)), ('conv2', (64, 50, 8, 8)), ('pool2', (64, 50, 4, 4)), "
               "('fc1', (64, 500)), ('score', (64, 10)), ('loss', ())]")
PARAM_SHAPES = "[('conv1', (20, 1, 5, 5)), ('conv2', (50, 20, 5, 5)), ('fc1', (500, 800)), ('score', (10, 500))]"


def run_walkthrough(cwd, *args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT)] + [str(a) for a in args], cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """One run of the notebook's 200-iteration loop (the slow part, shared by the checks)."""
    if not (LMDBS / "mnist_train_lmdb" / "data.mdb").is_file():
        pytest.skip("golden MNIST LMDBs missing: %s (the shared golden data is not here)" % LMDBS)
    tmp = tmp_path_factory.mktemp("walkthrough")
    out = tmp / "out"
    proc = run_walkthrough(tmp, "--niter", 200, "--test-interval", 25, "--test-iters", 20,
                           "--out", out, "--data", LMDBS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, out


def test_prints_the_notebooks_shapes(lenet_run):
    stdout, _ = lenet_run
    lines = stdout.splitlines()
    assert BLOB_SHAPES in lines
    assert PARAM_SHAPES in lines
    assert "431,080 learnable parameters" in stdout   # the net's table


def test_untrained_loss_is_chance(lenet_run):
    stdout, _ = lenet_run
    m = re.search(r"train loss: ([\d.]+)  test loss: ([\d.]+)", stdout)
    assert m, stdout[:2000]
    for loss in map(float, m.groups()):
        assert 2.0 < loss < 2.7   # about ln 10 = 2.30 before training
    assert "train labels: [7. 2. 1. 0. 4. 1. 4. 9.]" in stdout   # digits 0-7 of Caffe's train LMDB


def test_accuracy_after_200_iterations(lenet_run):
    stdout, _ = lenet_run
    assert [int(i) for i in re.findall(r"Iteration (\d+) testing\.\.\.", stdout)] == list(range(0, 200, 25))
    m = re.search(r"Test accuracy after (\d+) iterations: ([\d.]+)", stdout)
    assert m, stdout[-2000:]
    assert int(m.group(1)) == 201   # the one step before the loop, then 200
    assert float(m.group(2)) > 0.90


def test_figures_written(lenet_run):
    _, out = lenet_run
    sizes = {"train_digits.png": (960, 160), "test_digits.png": (960, 160), "conv1_diff.png": (500, 400),
             "conv1_weights.png": (500, 500),
             "loss_accuracy.png": (800, 500)}
    sizes.update({"%s_%d.png" % (kind, i): (1000, 250) for kind in ("scores", "probs") for i in range(8)})
    for name, size in sizes.items():
        path = out / name
        assert path.is_file(), "missing figure %s" % name
        assert path.stat().st_size > 1000, "%s is nearly empty" % name
        assert png_size(path) == size, name
    drawn = list(out.glob("lenet_train.*"))
    assert drawn and drawn[0].stat().st_size > 0   # PNG with Graphviz, DOT without


def test_nets_point_at_the_given_lmdbs(lenet_run):
    _, out = lenet_run
    for split in ("train", "test"):
        text = (out / ("lenet_auto_%s.prototxt" % split)).read_text()
        source = re.search(r'source: "([^"]*)"', text).group(1)
        # compare resolved paths: ../shared may be reached through a link
        assert Path(source).resolve() == (LMDBS / ("mnist_%s_lmdb" % split)).resolve()
    solver = (out / "lenet_auto_solver.prototxt").read_text()
    assert "test_iter: 20" in solver and 'lr_policy: "inv"' in solver


def test_missing_lmdbs_say_how_to_make_them(tmp_path):
    proc = run_walkthrough(tmp_path, "--data", tmp_path / "nowhere", "--out", tmp_path / "out", timeout=120)
    assert proc.returncode != 0
    assert "no MNIST LMDB" in proc.stderr and "create_mnist.py --split-test 8000" in proc.stderr


def _script_cells():
    """The cells the script defines, by the script's own splitter (its header only is run)."""
    source = SCRIPT.read_text()
    header = source.split("\n# %%", 1)[0]
    namespace = {"__name__": "walkthrough_header"}
    exec(compile(header, str(SCRIPT), "exec"), namespace)
    return namespace["notebook_cells"](source)


def test_notebook_has_the_scripts_cells():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    cells = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    assert cells == _script_cells(), ("walkthrough.ipynb is out of date: "
                                      "python examples/mnist/walkthrough.py --write-notebook")
    for kind, text in cells:
        if kind == "code":
            compile(text, "walkthrough.ipynb", "exec")
    code = "\n".join(text for kind, text in cells if kind == "code")
    assert "\nimport caffe\n" in code and "caffe.SGDSolver(" in code
    assert all(c["outputs"] == [] for c in nb["cells"] if c["cell_type"] == "code")


NOTEBOOK_DRIVER = r'''
import builtins, json, sys, types
builtins.__IPYTHON__ = True
shown = []
display_mod = types.ModuleType("IPython.display")
display_mod.Image = lambda filename: filename
display_mod.display = shown.append
ipython = types.ModuleType("IPython")
ipython.display = display_mod
ipython.get_ipython = lambda: None   # matplotlib asks both; no shell here
ipython.version_info = (8, 30, 0)
sys.modules["IPython"], sys.modules["IPython.display"] = ipython, display_mod
namespace = {"__name__": "__main__"}
for cell in json.load(open(sys.argv[1]))["cells"]:
    if cell["cell_type"] == "code":
        exec(compile("".join(cell["source"]), "walkthrough.ipynb", "exec"), namespace)
print("SHOWN", len(shown))
'''


def test_notebook_runs_as_in_jupyter(tmp_path):
    """The notebook's cells, run in order in one namespace from examples/mnist, as a kernel would."""
    if not (LMDBS / "mnist_train_lmdb" / "data.mdb").is_file():
        pytest.skip("golden MNIST LMDBs missing: %s" % LMDBS)
    import os
    env = dict(os.environ, WALKTHROUGH_ARGS="--niter 4 --test-interval 2 --test-iters 1 --out '%s' --data '%s'"
               % (tmp_path / "nb", LMDBS))
    proc = subprocess.run([sys.executable, "-c", NOTEBOOK_DRIVER, str(NOTEBOOK)], cwd=str(SCRIPT.parent),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert BLOB_SHAPES in proc.stdout.splitlines()
    assert "SHOWN 21" in proc.stdout   # every figure went to the notebook's display
    assert (tmp_path / "nb" / "loss_accuracy.png").is_file()
