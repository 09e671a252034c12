#!/usr/bin/env python
"""Peak RSS of a LeNet training process, against the issue's target (120 MB).

    python bench/lenet_memory.py [--iterations N] [--keep DIR]

Trains the seed's LeNet as a user would: in a scratch directory holding the
golden ``lenet_auto_{solver,train,test}.prototxt`` and links to the golden
MNIST LMDBs, it runs

    tools/solve.py train --solver lenet_auto_solver.prototxt --weights lenet_init.caffemodel

in a subprocess (500 iterations of batch 64, the test net's 20 batches of 100
every 100 iterations, snapshots at 250 and 500) and prints the child's peak
resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, what
``/usr/bin/time -v`` calls "Maximum resident set size") beside the target.
The golden files come from ``../shared/golden/lenet`` next to the repository;
without them the benchmark says so and exits 0.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_LENET = os.path.join(os.path.dirname(ROOT), "shared", "golden", "lenet")
TARGET_MB = 120
FILES = ("lenet_auto_solver.prototxt", "lenet_auto_train.prototxt", "lenet_auto_test.prototxt")
LMDBS = ("mnist_train_lmdb", "mnist_test_lmdb")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, help="train this many iterations (default: the solver's max_iter)")
    ap.add_argument("--keep", metavar="DIR", help="run in DIR (created) and keep the log and snapshots there")
    args = ap.parse_args(argv)

    needed = [os.path.join(GOLDEN_LENET, f) for f in FILES + LMDBS + ("lenet_init.caffemodel",)]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        print("bench/lenet_memory.py: skipped, the golden LeNet files are absent (%s)" % ", ".join(missing))
        return 0
    work = args.keep or tempfile.mkdtemp(prefix="lenet_memory.")
    os.makedirs(work, exist_ok=True)
    try:
        for f in FILES:
            shutil.copy(os.path.join(GOLDEN_LENET, f), work)
        for d in LMDBS:
            link = os.path.join(work, d)
            if not os.path.lexists(link):
                os.symlink(os.path.join(GOLDEN_LENET, d), link)
        cmd = [sys.executable, os.path.join(ROOT, "tools", "solve.py"), "train",
               "--solver", "lenet_auto_solver.prototxt",
               "--weights", os.path.join(GOLDEN_LENET, "lenet_init.caffemodel")]
        if args.iterations is not None:
            cmd += ["--iterations", str(args.iterations)]
        print("in %s:\n  %s" % (work, " ".join(cmd)))
        start = time.perf_counter()
        with open(os.path.join(work, "train.log"), "wb") as log:
            rc = subprocess.call(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        if rc != 0:
            with open(os.path.join(work, "train.log"), "rb") as log:
                tail = log.read()[-2000:].decode("utf-8", "replace")
            print("training failed (exit %d):\n%s" % (rc, tail))
            return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss   # Linux: KiB
    mb = kib * 1024 / 1e6
    print("peak RSS %d KiB = %.1f MB (%.1f MiB); target <= %d MB: %s; wall %.1f s"
          % (kib, mb, kib / 1024, TARGET_MB, "met" if mb <= TARGET_MB else "NOT met", wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
