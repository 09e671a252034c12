"""Alias of ``netspec.caffe_pb2``: one schema module, whichever name imports it.

Replacing this module in ``sys.modules`` makes ``solvers.caffe.proto.caffe_pb2``
the very same module object, so messages and enums compare and pass between
both names.
"""
import sys

from netspec import caffe_pb2 as _schema

sys.modules[__name__] = _schema
