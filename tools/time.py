#!/usr/bin/env python
"""Time a net's layers, as ``caffe time --model NET --iterations N`` does.

    python tools/time.py --model lenet_train.prototxt [--iterations 50] [--phase TRAIN]
                         [--level 0] [--stage deploy] [--weights w.caffemodel]

One untimed forward and backward pass first (allocations settle), then N
iterations of every layer's forward (in order) and backward (in reverse),
each layer timed on its own; the report gives the average forward and
backward time per layer and per pass, in Caffe's words. As in Caffe, the
net reads its inputs from its own data layers, so a Data layer's source must
exist (relative paths resolve from the working directory).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec.errors import CaffeError, DataError  # noqa: E402
from solvers.timing import time_net  # noqa: E402

log = logging.getLogger("caffe")


def _install_logging():
    from solvers.log import install_handler
    install_handler()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the net prototxt to time")
    ap.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    ap.add_argument("--phase", default="TRAIN", choices=["TRAIN", "TEST"], help="net phase (default TRAIN)")
    ap.add_argument("--level", type=int, default=0, help="NetState level")
    ap.add_argument("--stage", action="append", default=[],
                    help="NetState stage (repeat or separate by commas)")
    ap.add_argument("--weights", help="optional .caffemodel to load first")
    args = ap.parse_args(argv)
    _install_logging()
    stages = [s for group in args.stage for s in group.split(",") if s]
    from solvers.net import Net
    try:
        log.info("Use CPU.")
        net = Net(args.model, phase=args.phase, level=args.level, stages=stages, weights=args.weights)
        time_net(net, args.iterations)
    except DataError as e:
        print("time: error: the model's data source is not usable: %s\n"
              "caffe time reads its inputs through the net's data layers: run it from the folder the "
              "source path is relative to, or give the net Input layers instead." % e, file=sys.stderr)
        return 1
    except CaffeError as e:
        print("time: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
