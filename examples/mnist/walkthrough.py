#!/usr/bin/env python3
"""LeNet in pycaffe: Caffe's "Learning LeNet" notebook in Python 3, on this toolkit.

    python examples/mnist/walkthrough.py [--niter 200] [--test-interval 25] [--test-iters 100]
                                         [--out DIR] [--data DIR]

Needs the MNIST LMDBs in --data (default examples/mnist): make them with
``python examples/mnist/create_mnist.py`` (offline: ``--split-test 8000``).
Writes the nets, the solver and the figures (PNG) into --out. The same cells
make up walkthrough.ipynb (run from examples/mnist; flags through the
environment, e.g. ``WALKTHROUGH_ARGS="--niter 50" jupyter notebook``); after
editing this file, rebuild the notebook with
``python examples/mnist/walkthrough.py --write-notebook``.
"""
import json
import sys

CELL_MARK = "# %%"


def notebook_cells(source):
    """The cells of this script: ``# %%`` starts a code cell, ``# %% [markdown]`` a text cell.

    Everything before the first marker (this header) belongs to the script only.
    """
    cells = []
    for line in source.splitlines():
        if line.startswith(CELL_MARK):
            cells.append(["markdown" if "[markdown]" in line else "code", []])
        elif cells:
            text = line
            if cells[-1][0] == "markdown":
                text = line[2:] if line.startswith("# ") else line.lstrip("#")
            cells[-1][1].append(text)
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        out.append((kind, "\n".join(lines)))
    return out


def write_notebook(script, notebook):
    """Write the cells of ``script`` as a Jupyter notebook (nbformat 4 JSON, no outputs)."""
    with open(script) as f:
        cells = notebook_cells(f.read())
    nb = {"cells": [], "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                   "name": "python3"},
                                    "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 4}
    for kind, text in cells:
        cell = {"cell_type": kind, "metadata": {}, "source": text.splitlines(True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        nb["cells"].append(cell)
    from netspec.io import atomic_write_bytes
    atomic_write_bytes(notebook, (json.dumps(nb, indent=1) + "\n").encode("utf-8"))
    return notebook


if __name__ == "__main__" and "--write-notebook" in sys.argv[1:]:
    import pathlib
    here = pathlib.Path(__file__).resolve().parent
    print("wrote", write_notebook(here / "walkthrough.py", here / "walkthrough.ipynb"))
    sys.exit(0)

# %% [markdown]
# # Solving in Python with LeNet
#
# Define LeNet with NetSpec, load it into a solver, look inside the nets
# (blobs, parameters, gradients) and train it with a loop written in Python,
# as Caffe's `01-learning-lenet` notebook does, with pycaffe's own
# `import caffe` (this toolkit's drop-in package).

# %%
import argparse
import builtins
import os
import shlex
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
REPO = HERE.parents[1]
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="LeNet in pycaffe, the Caffe notebook as a script")
    ap.add_argument("--niter", type=int, default=200, help="iterations of the custom loop (default: 200)")
    ap.add_argument("--test-interval", type=int, default=25, help="full test every N iterations (default: 25)")
    ap.add_argument("--test-iters", type=int, default=None,
                    help="test batches of 100 digits in a full test (default: one pass over the test LMDB)")
    ap.add_argument("--out", default=str(HERE / "walkthrough_out"),
                    help="folder for the nets, the solver and the figures (default: %(default)s)")
    ap.add_argument("--data", default=str(HERE),
                    help="folder holding mnist_train_lmdb and mnist_test_lmdb (default: %(default)s)")
    ap.add_argument("--write-notebook", action="store_true",
                    help="only rebuild walkthrough.ipynb from this script's cells, then stop")
    return ap.parse_args(argv)


# In Jupyter the kernel's own arguments are not ours: flags come from $WALKTHROUGH_ARGS.
in_notebook = getattr(builtins, "__IPYTHON__", False)
args = parse_args(shlex.split(os.environ.get("WALKTHROUGH_ARGS", "")) if in_notebook else None)
out = Path(args.out).resolve()
data = Path(args.data).resolve()


def show(path):
    """Display a saved figure in a notebook; name it in a terminal."""
    if in_notebook:
        from IPython.display import Image, display
        display(Image(filename=str(path)))
    else:
        print("wrote", path)


# %% [markdown]
# ## Setup
#
# The pycaffe module, the plot helpers (headless: they write PNG files) and
# the notebook's NetSpec code, kept in `lenet.py`. The LMDBs come from
# `create_mnist.py`.

# %%
import caffe
from solvers import plot
from netspec import write_prototxt

from lenet import lenet, lenet_solver, test_iter_for   # examples/mnist/lenet.py: the notebook's net and solver

train_lmdb, test_lmdb = data / "mnist_train_lmdb", data / "mnist_test_lmdb"
missing = [str(p) for p in (train_lmdb, test_lmdb) if not (p / "data.mdb").is_file()]
if missing:
    sys.exit("walkthrough: no MNIST LMDB at %s.\nMake them with\n"
             "    python examples/mnist/create_mnist.py                    # downloads MNIST\n"
             "    python examples/mnist/create_mnist.py --split-test 8000  # offline, from the test digits\n"
             "or point --data at a folder holding mnist_train_lmdb and mnist_test_lmdb."
             % ", ".join(missing))
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Creating the net
#
# `lenet(lmdb, batch_size)` (in `lenet.py`) is the notebook's NetSpec code:
# data from an LMDB scaled to [0, 1), two convolution + max-pooling stages,
# a 500-unit ReLU layer and a 10-way classifier with a softmax loss. Train
# and test nets differ only in their source and batch size.

# %%
train_net = out / "lenet_auto_train.prototxt"
test_net = out / "lenet_auto_test.prototxt"
solver_path = out / "lenet_auto_solver.prototxt"
write_prototxt(lenet(str(train_lmdb), 64), train_net)
write_prototxt(lenet(str(test_lmdb), 100), test_net)

test_iters = args.test_iters or test_iter_for(test_lmdb)   # 20 batches of 100 see 2,000 test digits once
solver_param = lenet_solver(str(train_net), str(test_net), str(out / "lenet"), test_iters)
write_prototxt(solver_param, solver_path)
print(train_net.read_text())
print(solver_path.read_text())

# %% [markdown]
# ## Loading and checking the solver
#
# The solver builds the train net and the test net. Each blob is
# (batch size, feature dim, spatial dim); the parameters are listed by
# layer (weights only, not biases).

# %%
caffe.set_mode_cpu()
solver = caffe.SGDSolver(str(solver_path))

# each output is (batch size, feature dim, spatial dim)
print([(k, v.data.shape) for k, v in solver.net.blobs.items()])

# %%
# just print the weight sizes (we'll omit the biases)
print([(k, v[0].data.shape) for k, v in solver.net.params.items()])

# %%
print(solver.net)   # the whole net as a table (a notebook shows it as HTML)

# %% [markdown]
# A forward pass of each net loads a batch and computes the loss (about
# 2.3 = ln 10 before training: the classifier guesses).

# %%
solver.net.forward()           # train net
solver.test_nets[0].forward()  # test net (there can be more than one)
print("train loss: %.4f  test loss: %.4f"
      % (float(solver.net.blobs["loss"].data), float(solver.test_nets[0].blobs["loss"].data)))
print(solver.net.blobs["score"])   # a blob: shape and data/diff statistics

# %% [markdown]
# The first eight digits of each batch, with their labels.

# %%
print("train labels:", solver.net.blobs["label"].data[:8])
show(plot.plot_images(solver.net.blobs["data"].data[:8, 0], out / "train_digits.png",
                      labels=solver.net.blobs["label"].data[:8], title="train batch"))
print("test labels:", solver.test_nets[0].blobs["label"].data[:8])
show(plot.plot_images(solver.test_nets[0].blobs["data"].data[:8, 0], out / "test_digits.png",
                      labels=solver.test_nets[0].blobs["label"].data[:8], title="test batch"))

# %% [markdown]
# ## Stepping the solver
#
# One SGD step, then the update of the first layer's filters: 20 filters
# of 5 x 5, in 4 rows of 5.

# %%
solver.step(1)
show(plot.plot_filters(solver.net.params["conv1"][0].diff[:, 0], out / "conv1_diff.png",
                       ncols=5, padsize=0, title="conv1 update after one step", size=(5, 4)))

# %% [markdown]
# ## Writing a custom training loop
#
# Step the solver one iteration at a time, keep the train loss, score the
# first eight test digits at every step (starting the test net at `conv1`
# keeps its current batch) and test on the whole test set every
# `test_interval` iterations, counting correct answers in Python.

# %%
niter = args.niter
test_interval = args.test_interval
test_batch = solver.test_nets[0].blobs["data"].data.shape[0]
# losses will also be stored in the log
train_loss = np.zeros(niter)
test_acc = np.zeros(int(np.ceil(niter / test_interval)))
output = np.zeros((niter, 8, 10))


def test_accuracy(net, batches):
    """Fraction of correct answers over ``batches`` test batches."""
    correct = 0
    for _ in range(batches):
        net.forward()
        correct += int((net.blobs["score"].data.argmax(1) == net.blobs["label"].data).sum())
    return correct / float(batches * net.blobs["label"].data.shape[0])


# the main solver loop
for it in range(niter):
    solver.step(1)  # SGD by Caffe

    # store the train loss
    train_loss[it] = solver.net.blobs["loss"].data

    # store the output on the first test batch
    # (start the forward pass at conv1 to avoid loading new data)
    solver.test_nets[0].forward(start="conv1")
    output[it] = solver.test_nets[0].blobs["score"].data[:8]

    # run a full test every so often
    # (Caffe can also do this for us and write to a log, but we show here
    #  how to do it directly in Python, where more complicated things are easier.)
    if it % test_interval == 0:
        print("Iteration", it, "testing...")
        test_acc[it // test_interval] = test_accuracy(solver.test_nets[0], test_iters)

final_acc = test_accuracy(solver.test_nets[0], test_iters)
print("Test accuracy after %d iterations: %.4f" % (solver.iter, final_acc))
print(solver)

# %% [markdown]
# Train loss and test accuracy over the loop.

# %%
show(plot.plot_loss_history(train_loss, out / "loss_accuracy.png", test_scores=test_acc,
                            test_iters=test_interval * np.arange(len(test_acc)),
                            title="Test Accuracy: {:.2f}".format(test_acc[-1])))

# %% [markdown]
# How the scores for each of the first eight test digits moved during the
# first 50 iterations: raw scores, then softmax probabilities (the
# notebook's two figures per digit).

# %%
digits = solver.test_nets[0].blobs["data"].data[:8, 0]
for i in range(8):
    scores = output[:50, i]
    show(plot.plot_score_history(digits[i], scores, out / ("scores_%d.png" % i),
                                 title="digit %d: scores" % i))
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    show(plot.plot_score_history(digits[i], probs, out / ("probs_%d.png" % i),
                                 title="digit %d: probabilities" % i))

# %% [markdown]
# The first layer's filters after training (the notebooks' `vis_square`).

# %%
show(plot.vis_square(solver.net.params["conv1"][0].data, out / "conv1_weights.png",
                     title="conv1 filters after %d iterations" % solver.iter, size=(5, 5)))

# %% [markdown]
# The train net as a graph (Graphviz; without it, the DOT source).

# %%
from netspec.io import read_net  # noqa: E402
drawn = caffe.draw.draw_net_to_file(read_net(str(train_net)), str(out / "lenet_train.png"), "LR",
                                    phase=caffe.TRAIN)
print("drew the train net to", drawn)
