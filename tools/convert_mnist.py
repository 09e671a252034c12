#!/usr/bin/env python
"""Convert an MNIST IDX image/label pair into an LMDB, as Caffe's convert_mnist_data does.

    python tools/convert_mnist.py IMAGES LABELS OUT_DB [--overwrite]

IMAGES and LABELS may be gzipped. OUT_DB must not exist unless --overwrite;
the database is built next to it and renamed into place when complete.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solvers.cli import run_tool  # noqa: E402
from solvers.data.mnist import convert_mnist  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", help="IDX images file (e.g. train-images-idx3-ubyte[.gz])")
    ap.add_argument("labels", help="IDX labels file (e.g. train-labels-idx1-ubyte[.gz])")
    ap.add_argument("db", help="output LMDB directory")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT_DB if it exists")
    ap.add_argument("--backend", default="lmdb", choices=["lmdb"], help="only lmdb is supported")
    args = ap.parse_args(argv)
    return run_tool("convert_mnist", lambda: convert_mnist(args.images, args.labels, args.db,
                                                           overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
