#!/usr/bin/env python
"""Upgrade an old-format Caffe net file, like Caffe's upgrade_net_proto_text/_binary.

    python tools/upgrade_net.py OLD.prototxt NEW.prototxt
    python tools/upgrade_net.py OLD.caffemodel NEW.caffemodel

A text net is written back as text, a binary caffemodel as binary. The steps
taken are printed; a file already up to date is copied through unchanged.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netspec import io  # noqa: E402
from netspec.errors import CaffeError  # noqa: E402
from netspec.upgrade import upgrade_net  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="old net: .prototxt (text) or .caffemodel (binary)")
    parser.add_argument("output", help="where to write the upgraded net, same format as the input")
    args = parser.parse_args(argv)
    try:
        net, form = io.read_net_file(args.input, upgrade=False)
        binary = form == "binary"
        notes = []
        if upgrade_net(net, notes):
            for line in notes:
                print(f"{args.input}: {line}")
        else:
            print(f"{args.input}: already in the latest format; written unchanged")
        (io.write_binary if binary else io.write_text)(net, args.output)
    except CaffeError as e:
        print(f"upgrade_net: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {'binary' if binary else 'text'} net to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
