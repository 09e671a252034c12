#!/usr/bin/env python3
"""Export a Caffe net and its trained weights to an ONNX model, exactly.

    python tools/export_onnx.py deploy.prototxt weights.caffemodel out.onnx
        [--opset N] [--dynamic-batch] [--input-shape name:N,C,H,W ...] [--check]

A train/test prototxt is accepted too: its TEST-phase deploy form is derived
(data layers become inputs, losses and accuracy are dropped, SoftmaxWithLoss
becomes a Softmax named 'prob'; each change is printed). A data layer whose
source cannot be read here needs --input-shape for its top. --check runs the
exported model in ONNX Runtime beside this toolkit's forward on random inputs
and prints the relative difference of every output.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netspec.errors import CaffeError  # noqa: E402
from netspec.io import read_net  # noqa: E402


def input_shape(text):
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError("%r: write NAME:N,C,H,W with positive sizes, e.g. data:1,3,224,224"
                                         % text)
    return name, shape


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prototxt", help="deploy (or train/test) net prototxt")
    ap.add_argument("weights", help="trained weights (.caffemodel or .h5)")
    ap.add_argument("output", help="ONNX file to write")
    ap.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    ap.add_argument("--dynamic-batch", action="store_true", help="leave the batch size (axis 0) open")
    ap.add_argument("--input-shape", type=input_shape, action="append", default=[], metavar="NAME:N,C,H,W",
                    help="shape of an input (or data layer top); repeat for several")
    ap.add_argument("--check", action="store_true",
                    help="compare ONNX Runtime's output with this toolkit's on random inputs")
    args = ap.parse_args(argv)
    try:
        from solvers import onnx_export
        onnx_export.require_onnx()
        net, notes = onnx_export.deploy_net(read_net(args.prototxt), args.weights, dict(args.input_shape))
        for note in notes:
            print("%s: %s" % (args.prototxt, note))
        model = onnx_export.net_to_onnx(net, args.opset or onnx_export.DEFAULT_OPSET, args.dynamic_batch)
        onnx_export.save_model(model, args.output)
        print("wrote %s (opset %d, inputs %s, outputs %s)" % (
            args.output, model.opset_import[0].version,
            ", ".join("%s %s" % (n, tuple(net.blobs[n].shape)) for n in net.inputs), ", ".join(net.outputs)))
        if args.check:
            import numpy as np
            rng = np.random.RandomState(0)
            values = {n: rng.standard_normal(net.blobs[n].shape).astype(np.float32) for n in net.inputs}
            ours, theirs = onnx_export.forward_both(net, model, values)
            for o in ours:
                print("check %s: max |toolkit - onnxruntime| / max |toolkit| = %.3g"
                      % (o, onnx_export.rel_err(ours[o], theirs[o])))
    except CaffeError as e:
        print("export_onnx: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
