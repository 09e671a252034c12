#!/usr/bin/env python3
"""Caffe's ``caffe`` tool: train, test and time nets (see solvers/cli.py for the flags).

    python tools/solve.py solver.prototxt
    python tools/solve.py train --solver solver.prototxt [--weights W | --snapshot S.solverstate]
    python tools/solve.py test --model net.prototxt --weights W.caffemodel --iterations 100
    python tools/solve.py time --model net.prototxt --iterations 50
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="solve.py"))
