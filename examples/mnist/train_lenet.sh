#!/usr/bin/env bash
# The seed's workflow end to end: MNIST -> LMDB -> NetSpec nets -> training.
#
#   bash examples/mnist/train_lenet.sh                 # downloads MNIST
#   bash examples/mnist/train_lenet.sh --from DIR      # the four IDX files are in DIR
#   bash examples/mnist/train_lenet.sh --split-test 8000   # offline: the MNIST test set only
#
# Arguments go to examples/mnist/create_mnist.py. Extra solve.py flags can be
# given in SOLVE_FLAGS, e.g. SOLVE_FLAGS="--iterations 2000".
set -euo pipefail
cd "$(dirname "$0")/../.."

python examples/mnist/create_mnist.py "$@"
python examples/mnist/lenet.py
# shellcheck disable=SC2086
python tools/solve.py train --solver examples/mnist/lenet_auto_solver.prototxt \
    --log examples/mnist/lenet_train.log ${SOLVE_FLAGS:-}
python tools/plot_log.py examples/mnist/lenet_train.log examples/mnist/lenet_curve.png
