#!/usr/bin/env python
"""Get MNIST and convert both splits into examples/mnist/mnist_{train,test}_lmdb.

    python examples/mnist/create_mnist.py                  # download (needs the internet)
    python examples/mnist/create_mnist.py --from DIR       # the four IDX files from DIR
    python examples/mnist/create_mnist.py --split-test 8000   # offline: the test set only
    python examples/mnist/create_mnist.py --dataset fashion-mnist   # Debian's package, offline

These are the paths the LeNet nets name (``source: "mnist_train_lmdb"``,
relative to examples/mnist). The IDX files are kept in examples/mnist/data.

Offline fallback, and why: without the internet, the only real MNIST digits at
hand are the 10,000 test images in ../shared/data/mnist. ``--split-test N``
trains on the first N of them and tests on the remaining 10,000 - N. With
N = 8000 this is exactly the data of the golden LeNet run made with BVLC Caffe
(../shared/golden/lenet: digits 0-7999 to train, 8000-9999 to test), so the
LMDBs come out record for record equal to Caffe's and the loss curve can be
compared with Caffe's. When the training files cannot be found and no split
was asked for, the program stops and says so rather than silently training on
test digits. For a full 60,000-image set offline, use Fashion-MNIST from
Debian's dataset-fashion-mnist package (same format, same LeNet).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from netspec.errors import CaffeError, DataError  # noqa: E402
from solvers.data.download import find_local, get_dataset  # noqa: E402
from solvers.data.idx import read_mnist  # noqa: E402
from solvers.data.mnist import write_mnist_lmdb  # noqa: E402

SHARED_MNIST = os.path.join(os.path.dirname(ROOT), "shared", "data", "mnist")


def build(images, labels, db_path, overwrite):
    if os.path.exists(db_path) and not overwrite:
        print("%s already exists; keeping it (--overwrite rebuilds it)" % db_path)
        return
    write_mnist_lmdb(images, labels, db_path, overwrite=overwrite)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="from_dir", help="folder holding the IDX files (gz or raw)")
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ap.add_argument("--split-test", type=int, metavar="N",
                    help="use only the test set: first N digits train, the rest test (8000 = the golden run)")
    ap.add_argument("--out", default=HERE, help="where the LMDBs go (default examples/mnist)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild existing LMDBs")
    args = ap.parse_args(argv)
    data_dir = os.path.join(args.out, "data")
    train_db = os.path.join(args.out, "mnist_train_lmdb")
    test_db = os.path.join(args.out, "mnist_test_lmdb")
    try:
        if args.split_test is not None:
            src = args.from_dir
            if src is None and args.dataset == "mnist" and find_local(SHARED_MNIST, "t10k-images-idx3-ubyte"):
                src = SHARED_MNIST
            files = get_dataset(data_dir, args.dataset, src, splits=("test",))
            images, labels = read_mnist(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
            n = args.split_test
            if not 0 < n < images.shape[0]:
                raise DataError("--split-test %d: N must be between 1 and %d" % (n, images.shape[0] - 1))
            print("training on test digits 0-%d, testing on %d-%d (--split-test %d)"
                  % (n - 1, n, images.shape[0] - 1, n))
            build(images[:n], labels[:n], train_db, args.overwrite)
            build(images[n:], labels[n:], test_db, args.overwrite)
            return 0
        try:
            files = get_dataset(data_dir, args.dataset, args.from_dir)
        except DataError as e:
            if args.dataset == "mnist" and find_local(args.from_dir or SHARED_MNIST, "t10k-images-idx3-ubyte"):
                print("create_mnist: %s\n\nOnly the MNIST TEST set (10,000 digits) is available, in %s.\n"
                      "To work offline, train on part of it:\n"
                      "    python examples/mnist/create_mnist.py --split-test 8000\n"
                      "(digits 0-7999 train, 8000-9999 test: the split of the golden Caffe run)."
                      % (e, args.from_dir or SHARED_MNIST), file=sys.stderr)
                return 2
            raise
        for split, prefix, db in (("train", "train", train_db), ("test", "t10k", test_db)):
            images, labels = read_mnist(files[prefix + "-images-idx3-ubyte"], files[prefix + "-labels-idx1-ubyte"])
            build(images, labels, db, args.overwrite)
    except CaffeError as e:
        print("create_mnist: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
