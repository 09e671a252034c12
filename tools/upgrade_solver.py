#!/usr/bin/env python
"""Upgrade an old-format Caffe solver file, like Caffe's upgrade_solver_proto_text.

    python tools/upgrade_solver.py OLD_solver.prototxt NEW_solver.prototxt

The old ``solver_type: NESTEROV`` enum becomes ``type: "Nesterov"``; what was
changed is printed. A solver already up to date is written unchanged.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netspec import io  # noqa: E402
from netspec.errors import CaffeError  # noqa: E402
from netspec.upgrade import upgrade_solver  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="old solver prototxt")
    parser.add_argument("output", help="where to write the upgraded solver prototxt")
    args = parser.parse_args(argv)
    try:
        solver = io.read_solver(args.input, upgrade=False)
        notes = []
        if upgrade_solver(solver, notes):
            for line in notes:
                print(f"{args.input}: {line}")
        else:
            print(f"{args.input}: already in the latest format; written unchanged")
        io.write_text(solver, args.output)
    except CaffeError as e:
        print(f"upgrade_solver: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote solver to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
