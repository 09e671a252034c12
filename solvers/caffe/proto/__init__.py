"""``caffe.proto``: the compiled schema, as ``from caffe.proto import caffe_pb2`` expects."""
from solvers.caffe.proto import caffe_pb2  # noqa: F401
