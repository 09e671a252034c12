"""``caffe.net_spec``: the NetSpec DSL (``layers``, ``params``, ``NetSpec``, ``to_proto``) and its errors."""
from netspec.errors import NetSpecError, NotATopError, UnknownLayerTypeError  # noqa: F401
from netspec.net_spec import NetSpec, layers, params, to_proto  # noqa: F401

__all__ = ["NetSpec", "layers", "params", "to_proto", "NetSpecError", "NotATopError",
           "UnknownLayerTypeError"]
