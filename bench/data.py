#!/usr/bin/env python
"""How many images per second the Data layer delivers for MNIST with a scale transform.

    python bench/data.py [LMDB] [--batch 64] [--seconds 3]

Default LMDB: the golden 8000-digit MNIST database in ../shared/golden/lenet.
Target on a 2-core machine: at least 20,000 images/s (LeNet itself trains at
a small fraction of that, so the Data layer must never be the bottleneck).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from google.protobuf import text_format  # noqa: E402

from netspec import caffe_pb2  # noqa: E402
from solvers.blob import Blob  # noqa: E402
from solvers.layer import create_layer  # noqa: E402

DEFAULT = os.path.join(os.path.dirname(ROOT), "shared", "golden", "lenet", "mnist_train_lmdb")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("db", nargs="?", default=DEFAULT)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    lp = caffe_pb2.LayerParameter()
    text_format.Merge('name: "data" type: "Data" top: "data" top: "label" '
                      'transform_param { scale: 0.00390625 } '
                      'data_param { source: "%s" batch_size: %d backend: LMDB }'
                      % (args.db, args.batch), lp)
    layer = create_layer(lp)
    top = [Blob(), Blob()]
    layer.setup([], top)
    layer.forward([], top)  # warm up: thread started, first batches queued
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        layer.forward([], top)
        n += args.batch
    rate = n / (time.perf_counter() - start)
    layer.close()
    print("Data layer, MNIST %s, batch %d, scale transform: %.0f images/s (target >= 20000)"
          % (os.path.basename(args.db.rstrip("/")), args.batch, rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
