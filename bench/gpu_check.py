#!/usr/bin/env python3
"""Check the CuPy path on a machine with an NVIDIA GPU and CuPy installed.

    python bench/gpu_check.py [--golden ../shared/golden] [--iterations 500]

1. Runs the golden layer and solver conformance tests with every Blob on the
   GPU (``set_mode_gpu`` before the tests allocate anything).
2. Trains the seed's LeNet from Caffe's lenet_init.caffemodel on the golden
   LMDBs through ``tools/solve.py`` twice, on the CPU and with ``--gpu 0``,
   and prints wall time and final test accuracy of each beside Caffe's.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def conformance_on_gpu():
    from solvers import backend
    backend.set_mode_gpu()
    import pytest
    return pytest.main(["-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_golden_layers.py"),
                        str(ROOT / "tests" / "test_solvers_golden.py")])


def train(lenet, iterations, gpu):
    work = Path(tempfile.mkdtemp(prefix="lenet_"))
    for name in ("lenet_auto_solver.prototxt", "lenet_auto_train.prototxt", "lenet_auto_test.prototxt"):
        shutil.copy(lenet / name, work / name)
    for db in ("mnist_train_lmdb", "mnist_test_lmdb"):
        os.symlink(lenet / db, work / db)
    cmd = [sys.executable, str(ROOT / "tools" / "solve.py"), "train", "--solver", "lenet_auto_solver.prototxt",
           "--weights", str(lenet / "lenet_init.caffemodel"), "--iterations", str(iterations)]
    if gpu:
        cmd += ["--gpu", "0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return seconds, float("nan")
    from netspec import caffe_pb2
    from solvers.net import Net
    from solvers.backend import set_mode_cpu
    set_mode_cpu()
    here = os.getcwd()
    os.chdir(work)
    try:
        net = Net("lenet_auto_test.prototxt", caffe_pb2.TEST,
                  weights=str(work / ("lenet_iter_%d.caffemodel" % iterations)))
        correct = 0
        for _ in range(20):
            net.forward()
            correct += int((net.blobs["score"].data.argmax(1) == net.blobs["label"].data).sum())
    finally:
        os.chdir(here)
    return seconds, correct / 2000.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden", default=str(ROOT.parent / "shared" / "golden"))
    ap.add_argument("--iterations", type=int, default=500)
    args = ap.parse_args(argv)
    golden = Path(args.golden).resolve()
    sys.path.insert(0, str(ROOT))
    rc = conformance_on_gpu()
    print("conformance tests on the GPU: %s" % ("passed" if rc == 0 else "FAILED (exit %d)" % rc))
    lenet = golden / "lenet"
    caffe_acc = float((lenet / "final_accuracy.txt").read_text().split()[0])
    for gpu in (False, True):
        seconds, acc = train(lenet, args.iterations, gpu)
        print("LeNet %d iterations on the %s: %.1f s, test accuracy %.4f (Caffe CPU: %.4f)"
              % (args.iterations, "GPU" if gpu else "CPU", seconds, acc, caffe_acc))
    return rc


if __name__ == "__main__":
    sys.exit(main())
