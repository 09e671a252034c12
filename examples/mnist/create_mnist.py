#!/usr/bin/env python
"""Get MNIST and convert both splits into examples/mnist/mnist_{train,test}_lmdb.

    python examples/mnist/create_mnist.py                  # download; offline: the shipped test set
    python examples/mnist/create_mnist.py --from DIR       # the four IDX files from DIR
    python examples/mnist/create_mnist.py --split-test 8000   # the test set only, split 8000/2000
    python examples/mnist/create_mnist.py --dataset fashion-mnist   # Debian's package, offline

These are the paths the LeNet nets name (``source: "mnist_train_lmdb"``,
relative to examples/mnist). Downloaded IDX files are kept in examples/mnist/data.

Offline default, and why: the repository ships the MNIST test set (10,000
digits, examples/mnist/mnist_test_set, CC BY-SA 3.0, Yann LeCun and Corinna
Cortes). When no mirror answers within a few seconds, the program says so in
one line and trains on it instead: digits 0-7999 train, 8000-9999 test, what
``--split-test 8000`` asks for. That is exactly the data of the golden LeNet
run made with BVLC Caffe (../shared/golden/lenet), so the LMDBs come out
record for record equal to Caffe's. ``--from DIR`` without the training files
stops and says so rather than silently training on test digits.

Which data the LMDBs hold is recorded beside them (mnist_lmdb.json). A run
asking for other data (another --dataset or --split-test) rebuilds them; LMDBs
without that record are only rebuilt with --overwrite. A plain run keeps the
MNIST LMDBs it finds (from a download, --from or --split-test) and says which
they are, so re-running the example never downloads again.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from netspec.errors import CaffeError, DataError  # noqa: E402
from solvers.data.download import SPLIT_FILES, find_local, get_dataset, verify  # noqa: E402
from solvers.data.idx import read_mnist  # noqa: E402
from solvers.data.mnist import write_mnist_lmdb  # noqa: E402

EMBEDDED = os.path.join(HERE, "mnist_test_set")   # the MNIST test set shipped in the repository
MANIFEST = "mnist_lmdb.json"
OFFLINE_SPLIT = 8000
TEST_ONLY = "--split-test N"   # this command's way to ask for the test set alone


def describe(data):
    """One phrase naming the data a manifest (or a request) describes."""
    name = "Fashion-MNIST" if data["dataset"] == "fashion-mnist" else "MNIST"
    if data.get("split_test") is None:
        return "%s (train and test sets)" % name
    n = data["split_test"]
    return "the %s test set split %d/%d (--split-test %d)" % (name, n, data.get("test_records", 10000 - n), n)


def read_manifest(out):
    path = os.path.join(out, MANIFEST)
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "dataset" not in data:
            raise ValueError("not a manifest")
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        print("create_mnist: %s is unreadable; treating the LMDBs as of unknown origin" % path)
        return None


def write_manifest(out, data):
    """Record what the LMDBs hold (through a temporary name: never half a file)."""
    path = os.path.join(out, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def test_files(from_dir, dataset, data_dir, mirrors, timeout):
    """The two t10k files: from --from, the shipped copy (MNIST) or get_dataset."""
    if from_dir is None and dataset == "mnist":
        files = {}
        for name in SPLIT_FILES["test"]:
            path = find_local(EMBEDDED, name)
            if path is None:
                raise DataError("the MNIST test set shipped in %s is missing %s.gz (a partial checkout?); "
                                "give the files with --from DIR" % (EMBEDDED, name))
            verify(path, name)
            files[name] = path
        return files, "the copy in examples/mnist/mnist_test_set"
    files = get_dataset(data_dir, dataset, from_dir, mirrors, ("test",), timeout, test_only=TEST_ONLY)
    return files, from_dir or "downloaded"


def build_split(files, n, train_db, test_db):
    images, labels = read_mnist(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    if not 0 < n < images.shape[0]:
        raise DataError("--split-test %d: N must be between 1 and %d" % (n, images.shape[0] - 1))
    print("training on test digits 0-%d, testing on %d-%d (--split-test %d)"
          % (n - 1, n, images.shape[0] - 1, n))
    write_mnist_lmdb(images[:n], labels[:n], train_db, overwrite=True)
    write_mnist_lmdb(images[n:], labels[n:], test_db, overwrite=True)
    return n, images.shape[0] - n


def build_full(files, train_db, test_db):
    counts = []
    for prefix, db in (("train", train_db), ("t10k", test_db)):
        images, labels = read_mnist(files[prefix + "-images-idx3-ubyte"], files[prefix + "-labels-idx1-ubyte"])
        write_mnist_lmdb(images, labels, db, overwrite=True)
        counts.append(images.shape[0])
    return tuple(counts)


def existing_decision(args, manifest, present, train_db):
    """'build', 'keep' or an error message, for LMDBs already at the output paths."""
    plain = args.dataset is None and args.split_test is None and args.from_dir is None
    want = {"dataset": args.dataset or "mnist", "split_test": args.split_test}
    if not present or args.overwrite:
        return "build"
    if manifest is None:
        if plain and len(present) == 2:
            print("create_mnist: using the LMDBs already in %s; nothing records which data they hold "
                  "(made by another tool?): --overwrite rebuilds them" % os.path.dirname(train_db))
            return "keep"
        return ("%s exists, but without %s nothing says which data it holds; rebuild it from %s with "
                "--overwrite" % (present[0], MANIFEST, describe(want)))
    if manifest.get("complete") and len(present) == 2:
        same = (manifest["dataset"] == want["dataset"] and manifest.get("split_test") == want["split_test"])
        if same or (plain and manifest["dataset"] == "mnist"):
            how = "" if same else "; ask for other data with --split-test N, --dataset or --overwrite"
            print("create_mnist: keeping the LMDBs in %s: %s, from %s%s"
                  % (os.path.dirname(train_db), describe(manifest), manifest.get("source", "?"), how))
            return "keep"
        print("create_mnist: the LMDBs in %s hold %s; rebuilding them from %s"
              % (os.path.dirname(train_db), describe(manifest), describe(want)))
    else:
        print("create_mnist: the LMDBs in %s are incomplete (an interrupted build, or one of them is "
              "missing); rebuilding them" % os.path.dirname(train_db))
    return "build"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="from_dir", help="folder holding the IDX files (gz or raw)")
    ap.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="default: mnist")
    ap.add_argument("--split-test", type=int, metavar="N",
                    help="use only the test set: first N digits train, the rest test (8000 = the golden run)")
    ap.add_argument("--out", default=HERE, help="where the LMDBs go (default examples/mnist)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild existing LMDBs")
    ap.add_argument("--mirror", action="append", help="base URL to download from (repeatable; replaces "
                    "the built-in list)")
    ap.add_argument("--timeout", type=float, default=5,
                    help="seconds to wait for a mirror before falling back (default: %(default)s)")
    args = ap.parse_args(argv)
    dataset = args.dataset or "mnist"
    data_dir = os.path.join(args.out, "data")
    train_db = os.path.join(args.out, "mnist_train_lmdb")
    test_db = os.path.join(args.out, "mnist_test_lmdb")
    try:
        present = [db for db in (train_db, test_db) if os.path.lexists(db)]
        decision = existing_decision(args, read_manifest(args.out), present, train_db)
        if decision == "keep":
            return 0
        if decision != "build":
            print("create_mnist: error: %s" % decision, file=sys.stderr)
            return 1
        split = args.split_test
        if split is None:
            try:
                files = get_dataset(data_dir, dataset, args.from_dir, args.mirror, timeout=args.timeout,
                                    test_only=TEST_ONLY)
                source = args.from_dir or "downloaded"
            except DataError as e:
                if args.from_dir is not None or dataset != "mnist":
                    raise
                lines = str(e).splitlines()   # "could not get X from any mirror:", then one per mirror
                why = lines[-2].strip() if len(lines) > 2 else lines[0]
                print("create_mnist: MNIST could not be downloaded (%s); training on the MNIST test set "
                      "shipped in examples/mnist/mnist_test_set instead: digits 0-%d train, %d-9999 test "
                      "(--split-test %d)" % (why, OFFLINE_SPLIT - 1, OFFLINE_SPLIT, OFFLINE_SPLIT))
                split = OFFLINE_SPLIT
        os.makedirs(args.out, exist_ok=True)
        record = {"dataset": dataset, "split_test": split, "complete": False}
        write_manifest(args.out, record)   # until both are built, the LMDBs count as incomplete
        if split is None:
            counts = build_full(files, train_db, test_db)
        else:
            files, source = test_files(args.from_dir, dataset, data_dir, args.mirror, args.timeout)
            counts = build_split(files, split, train_db, test_db)
        record.update(complete=True, source=source, train_records=counts[0], test_records=counts[1])
        write_manifest(args.out, record)
    except CaffeError as e:
        print("create_mnist: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
