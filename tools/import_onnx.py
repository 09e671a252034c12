#!/usr/bin/env python3
"""Import an ONNX model as a Caffe net prototxt and caffemodel (to fine-tune it with tools/solve.py).

    python tools/import_onnx.py model.onnx net.prototxt weights.caffemodel [--input-shape name:N,C,H,W ...]

Works for models made of the ONNX operators that map exactly onto Caffe
layers (what tools/export_onnx.py writes for the common layers, and models
from other tools using only those); any other operator is an error naming
the node. Input sizes left open in the model (a dynamic batch) become 1
unless --input-shape gives them.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netspec.errors import CaffeError  # noqa: E402
from export_onnx import input_shape  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the ONNX model")
    ap.add_argument("prototxt", help="net prototxt to write")
    ap.add_argument("weights", help="caffemodel to write")
    ap.add_argument("--input-shape", type=input_shape, action="append", default=[], metavar="NAME:N,C,H,W",
                    help="shape of an input; repeat for several")
    args = ap.parse_args(argv)
    try:
        from solvers.onnx_import import import_model
        net, _ = import_model(args.model, args.prototxt, args.weights, dict(args.input_shape))
    except CaffeError as e:
        print("import_onnx: error: %s" % e, file=sys.stderr)
        return 1
    print("wrote %s (%d layers) and %s" % (args.prototxt, len(net.layer), args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
