#!/usr/bin/env python
"""Compute the mean image of an LMDB and write it as a binaryproto, as Caffe's tool does.

    python tools/compute_image_mean.py INPUT_DB [OUTPUT_FILE]

The output is written to a temporary file and renamed into place. Without
OUTPUT_FILE only the per-channel means are printed.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solvers.cli import run_tool  # noqa: E402
from solvers.data.image_mean import compute_image_mean, mean_to_blobproto, write_binaryproto_atomic  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("db", help="input LMDB")
    ap.add_argument("output", nargs="?", help="mean.binaryproto to write")
    ap.add_argument("--backend", default="lmdb", choices=["lmdb"], help="only lmdb is supported")
    args = ap.parse_args(argv)

    def work():
        mean = compute_image_mean(args.db)
        if args.output:
            write_binaryproto_atomic(mean_to_blobproto(mean), args.output)
        for c, value in enumerate(mean.reshape(mean.shape[0], -1).mean(axis=1)):
            print("mean_value channel [%d]: %g" % (c, value))
    return run_tool("compute_image_mean", work)


if __name__ == "__main__":
    sys.exit(main())
