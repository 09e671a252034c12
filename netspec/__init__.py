"""Front end: NetSpec DSL, Caffe schema bindings (caffe_pb2), solver files, prototxt I/O.

``from netspec import NetSpec, layers as L, params as P, to_proto, caffe_pb2, TRAIN, TEST``
works as pycaffe's ``caffe.NetSpec``, ``caffe.layers``, ``caffe.params``.
The names load on first use, so ``import netspec.errors`` (used by the back
end) never pulls in the DSL.
"""
import importlib

_LAZY = {
    "NetSpec": "netspec.net_spec",
    "layers": "netspec.net_spec",
    "params": "netspec.net_spec",
    "to_proto": "netspec.net_spec",
    "TRAIN": "netspec.net_spec",
    "TEST": "netspec.net_spec",
    "solver": "netspec.solver_spec",
    "write_solver": "netspec.solver_spec",
    "to_prototxt": "netspec.solver_spec",
    "write_prototxt": "netspec.solver_spec",
}

__all__ = sorted(_LAZY) + ["caffe_pb2"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "caffe_pb2":
        return importlib.import_module("netspec.caffe_pb2")
    raise AttributeError("module 'netspec' has no attribute %r" % name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
