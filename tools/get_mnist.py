#!/usr/bin/env python
"""Fetch the MNIST (or Fashion-MNIST) IDX files with MD5 checks, as Caffe's get_mnist.sh does.

    python tools/get_mnist.py [OUT_DIR] [--from DIR] [--dataset fashion-mnist] [--split test]

Downloads try several public mirrors in turn and resume a partial download;
--from DIR verifies and copies local files (gzipped or not) instead. For
Fashion-MNIST the files of Debian's dataset-fashion-mnist package
(/usr/share/datasets/fashion-mnist) are used when installed. A file only gets
its final name once its checksum matched.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.errors import CaffeError  # noqa: E402
from solvers.data.download import DATASETS, get_dataset  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", nargs="?", default=os.path.join("data", "mnist"),
                    help="where to put the files (default data/mnist)")
    ap.add_argument("--from", dest="from_dir", help="copy verified files from this folder instead of downloading")
    ap.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    ap.add_argument("--split", default="all", choices=["all", "train", "test"])
    ap.add_argument("--mirror", action="append", help="base URL to try (repeatable; replaces the built-in list)")
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args(argv)
    splits = ("train", "test") if args.split == "all" else (args.split,)
    try:
        get_dataset(args.out_dir, args.dataset, args.from_dir, args.mirror, splits, args.timeout,
                    test_only="--split test")
    except CaffeError as e:
        print("get_mnist: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
