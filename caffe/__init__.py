"""``import caffe``: pycaffe's name for this toolkit's facade (``solvers.caffe``).

Why a second name: pycaffe code and the tutorials written for it start with
``import caffe``. This package holds no code of its own: importing it makes
``caffe`` *the same module object* as ``solvers.caffe``, and ``caffe.io``,
``caffe.proto.caffe_pb2``, ``caffe.draw``, ... the same objects as their
``solvers.caffe.*`` namesakes, so state and classes are shared whichever
name imported them.

Which caffe did you get? ``caffe.toolkit`` exists only here (BVLC's pycaffe
has no such attribute), and ``caffe.__file__`` points into ``solvers/caffe``.
A real pycaffe earlier on ``sys.path`` (e.g. through PYTHONPATH) is found
first and wins, as Python's import order says.
"""
import sys

import solvers.caffe as _facade

_facade.alias_as(__name__)
