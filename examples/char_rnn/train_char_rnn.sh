#!/usr/bin/env bash
# The char-RNN workflow end to end: text -> HDF5 sequences -> NetSpec nets -> training -> samples.
#
#   bash examples/char_rnn/train_char_rnn.sh                 # default corpus (Python's own source)
#   bash examples/char_rnn/train_char_rnn.sh --text FILE     # any UTF-8 text
#
# Arguments go to examples/char_rnn/create_char_data.py. Extra solve.py flags
# can be given in SOLVE_FLAGS (e.g. SOLVE_FLAGS="--iterations 500"), extra
# char_rnn.py flags in NET_FLAGS (e.g. NET_FLAGS="--hidden 128").
set -euo pipefail
cd "$(dirname "$0")/../.."

python examples/char_rnn/create_char_data.py "$@"
# shellcheck disable=SC2086
python examples/char_rnn/char_rnn.py ${NET_FLAGS:-}
# shellcheck disable=SC2086
python tools/solve.py train --solver examples/char_rnn/char_rnn_solver.prototxt \
    --log examples/char_rnn/char_rnn_train.log ${SOLVE_FLAGS:-}
python tools/plot_log.py examples/char_rnn/char_rnn_train.log examples/char_rnn/char_rnn_curve.png --test loss
status=0
python examples/char_rnn/report.py examples/char_rnn/char_rnn_train.log || status=$?
weights=$(ls -t examples/char_rnn/char_rnn_iter_*.caffemodel | head -n 1)
echo "--- sample from $weights (temperature 0.8) ---"
python examples/char_rnn/sample.py --weights "$weights" --seed "def " --length 600
exit $status
