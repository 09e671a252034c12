#!/usr/bin/env python3
"""Draw a net definition as a graph, as Caffe's python/draw_net.py.

    python tools/draw_net.py INPUT_NET OUTPUT_FILE [--rankdir LR|TB|BT|RL] [--phase TRAIN|TEST|ALL]
                                                   [--display_lrm]

The output format follows OUTPUT_FILE's extension (png, svg, pdf, ...;
.dot writes the Graphviz source). Images need Graphviz (through pydot, or
the ``dot`` program); without it the DOT text is written next to OUTPUT_FILE
(``net.png`` -> ``net.dot``), the program says so and exits with status 1.
"""
import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netspec.errors import CaffeError  # noqa: E402
from netspec.io import read_net  # noqa: E402
from solvers.caffe import draw  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input_net_proto_file", help="input net prototxt")
    ap.add_argument("output_image_file", help="output image file (png, svg, pdf, dot, ...)")
    ap.add_argument("--rankdir", default="LR", choices=["LR", "TB", "BT", "RL"],
                    help="graph direction: LR left to right, TB top to bottom, ... (default: LR)")
    ap.add_argument("--phase", default="ALL", choices=["TRAIN", "TEST", "ALL"],
                    help="draw only the layers of this phase (default: ALL, every layer)")
    ap.add_argument("--display_lrm", action="store_true", help="show each layer's lr_mult values")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        net = read_net(args.input_net_proto_file, upgrade=True)
        print("Drawing net to %s" % args.output_image_file)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            written = draw.draw_net_to_file(net, args.output_image_file, args.rankdir,
                                            None if args.phase == "ALL" else args.phase, args.display_lrm)
    except CaffeError as e:
        print("draw_net: error: %s" % e, file=sys.stderr)
        return 1
    for w in caught:
        print("draw_net: %s" % w.message, file=sys.stderr)
    if written != args.output_image_file:   # the format asked for could not be made: a failure
        print("draw_net: error: Graphviz is not available, so %s was not written; the DOT file %s "
              "was written instead" % (args.output_image_file, written), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
