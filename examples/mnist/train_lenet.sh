#!/usr/bin/env bash
# The seed's workflow end to end: MNIST -> LMDB -> NetSpec nets -> training.
#
#   bash examples/mnist/train_lenet.sh                 # downloads MNIST; offline: the shipped test set
#   bash examples/mnist/train_lenet.sh --from DIR      # the four IDX files are in DIR
#   bash examples/mnist/train_lenet.sh --split-test 8000   # the MNIST test set only, 8000/2000
#   bash examples/mnist/train_lenet.sh --dataset fashion-mnist
#
# Arguments go to examples/mnist/create_mnist.py, which keeps LMDBs that hold
# the data asked for and rebuilds them otherwise. Extra solve.py flags can be
# given in SOLVE_FLAGS, e.g. SOLVE_FLAGS="--iterations 2000". An earlier run's
# log and curve are kept under a numbered name (lenet_train.1.log, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."

LOG=examples/mnist/lenet_train.log
CURVE=examples/mnist/lenet_curve.png

keep_previous() {   # move FILE to the first free FILE-stem.N.ext, and say so
    local file=$1 stem ext n=1
    [ -e "$file" ] || return 0
    stem=${file%.*} ext=${file##*.}
    while [ -e "$stem.$n.$ext" ]; do n=$((n + 1)); done
    mv "$file" "$stem.$n.$ext"
    echo "train_lenet: kept the previous run's $file as $stem.$n.$ext"
}

python examples/mnist/create_mnist.py "$@"
python examples/mnist/lenet.py
keep_previous "$LOG"
keep_previous "$CURVE"
# shellcheck disable=SC2086
python tools/solve.py train --solver examples/mnist/lenet_auto_solver.prototxt --log "$LOG" ${SOLVE_FLAGS:-}
python tools/plot_log.py "$LOG" "$CURVE"
