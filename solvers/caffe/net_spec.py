"""``caffe.net_spec``: the NetSpec DSL (``layers``, ``params``, ``NetSpec``, ``to_proto``)."""
from netspec.net_spec import NetSpec, layers, params, to_proto  # noqa: F401

__all__ = ["NetSpec", "layers", "params", "to_proto"]
