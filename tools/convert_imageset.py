#!/usr/bin/env python
"""Convert a list of images into an LMDB of Datum records, as Caffe's convert_imageset does.

    python tools/convert_imageset.py [options] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE holds 'subfolder/file.jpg label' lines. Options follow Caffe's flags:
--gray, --shuffle, --resize_height/--resize_width, --encoded, --encode_type,
--check_size. DB_NAME must not exist unless --overwrite; it is built next to
the target and renamed into place when complete.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solvers.cli import run_tool  # noqa: E402
from solvers.data.imageset import convert_imageset  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root_folder", help="folder the list's paths are relative to")
    ap.add_argument("list_file", help="text file of 'path label' lines")
    ap.add_argument("db", help="output LMDB directory")
    ap.add_argument("--gray", action="store_true", help="read images as grayscale")
    ap.add_argument("--shuffle", action="store_true", help="shuffle the order of the images")
    ap.add_argument("--seed", type=int, default=None, help="seed for --shuffle")
    ap.add_argument("--resize_height", type=int, default=0)
    ap.add_argument("--resize_width", type=int, default=0)
    ap.add_argument("--check_size", action="store_true", help="require every image to have the same size")
    ap.add_argument("--encoded", action="store_true", help="store PNG/JPEG bytes instead of pixels")
    ap.add_argument("--encode_type", default="", help="png, jpg, ... (default: each file's own type)")
    ap.add_argument("--backend", default="lmdb", choices=["lmdb"], help="only lmdb is supported")
    ap.add_argument("--overwrite", action="store_true", help="replace DB_NAME if it exists")
    args = ap.parse_args(argv)
    rng = None
    if args.seed is not None:
        import numpy as np
        rng = np.random.default_rng(args.seed)
    return run_tool("convert_imageset", lambda: convert_imageset(
        args.root_folder, args.list_file, args.db, args.resize_height, args.resize_width, args.gray,
        args.shuffle, args.encoded, args.encode_type, args.check_size, args.overwrite, rng=rng))


if __name__ == "__main__":
    sys.exit(main())
