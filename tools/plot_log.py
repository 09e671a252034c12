#!/usr/bin/env python3
"""Plot train and test loss (one axis) and test accuracy (its own axis) from a Caffe-format log.

    python tools/plot_log.py LOGFILE OUT.png [--loss loss] [--test accuracy]
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers.plot import plot_log  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logfile_path")
    ap.add_argument("output_png")
    ap.add_argument("--loss", default=None, help="train output to plot (default: loss)")
    ap.add_argument("--test", default=None, help="test score for the right-hand axis (default: accuracy, else the first output "
                    "that is not a loss)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.logfile_path):
        print("plot_log: no such log file: %s" % args.logfile_path, file=sys.stderr)
        return 2
    plot_log(args.logfile_path, args.output_png, loss_key=args.loss, test_key=args.test)
    print("wrote %s" % args.output_png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
