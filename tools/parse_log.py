#!/usr/bin/env python3
"""Parse a Caffe-format training log into CSV files, like Caffe's parse_log.py.

    python tools/parse_log.py LOGFILE OUTPUT_DIR

writes OUTPUT_DIR/<log name>.train and OUTPUT_DIR/<log name>.test with the
columns NumIters, Seconds, LearningRate and one per net output.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers.log_parser import parse_log, save_csv  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logfile_path")
    ap.add_argument("output_dir")
    ap.add_argument("--delimiter", default=",", help="column delimiter (default ',')")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.logfile_path):
        print("parse_log: no such log file: %s (resolved %s)"
              % (args.logfile_path, os.path.abspath(args.logfile_path)), file=sys.stderr)
        return 2
    train_rows, test_rows = parse_log(args.logfile_path)
    os.makedirs(args.output_dir, exist_ok=True)
    base = os.path.basename(args.logfile_path)
    for suffix, rows in ((".train", train_rows), (".test", test_rows)):
        out = os.path.join(args.output_dir, base + suffix)
        save_csv(rows, out, delimiter=args.delimiter)
        if args.verbose:
            print("wrote %d rows to %s" % (len(rows), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
