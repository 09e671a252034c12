#!/usr/bin/env python
"""Compare the validation loss in a char-RNN training log with the unigram baseline.

    python examples/char_rnn/report.py examples/char_rnn/char_rnn_train.log [--vocab DIR/vocab.json]

The baseline is the cross-entropy of the validation text under the training
text's character frequencies (create_char_data.py computes it); a model that
learned nothing of context scores about that. The goal of the default run is
a validation loss below 60 % of it. Exits with status 1 when the log has no
test result or the loss is not below the goal.
"""
import argparse
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from netspec.errors import CaffeError  # noqa: E402
from solvers.data.char_sequences import read_vocabulary  # noqa: E402
from solvers.log_parser import parse_log  # noqa: E402

GOAL = 0.60


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log")
    ap.add_argument("--vocab", default=os.path.join(HERE, "data", "vocab.json"))
    args = ap.parse_args(argv)
    try:
        baseline = read_vocabulary(args.vocab)["unigram_nats"]
    except CaffeError as e:
        sys.exit("report.py: %s" % e)
    if not os.path.isfile(args.log):
        sys.exit("report.py: no such log file: %s" % args.log)
    train, test = parse_log(args.log)
    test = [r for r in test if "loss" in r]
    if not test:
        print("report.py: %s has no test loss yet" % args.log, file=sys.stderr)
        return 1
    last = test[-1]
    ratio = last["loss"] / baseline
    seconds = max(r["Seconds"] for r in train + test if not math.isnan(r["Seconds"]))
    print("unigram baseline:  %.4f nats/char (%.3f bits/char)" % (baseline, baseline / math.log(2)))
    print("validation loss:   %.4f nats/char (%.3f bits/char) at iteration %d, %.1f %% of the baseline"
          % (last["loss"], last["loss"] / math.log(2), last["NumIters"], 100 * ratio))
    print("training time:     %.0f s (%.1f min) from the first to the last line of the log"
          % (seconds, seconds / 60))
    print("goal (< %d %% of the baseline): %s" % (100 * GOAL, "reached" if ratio < GOAL else "NOT reached"))
    return 0 if ratio < GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
