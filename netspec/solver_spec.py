"""Solver files from Python: ``solver(**fields)`` -> ``caffe_pb2.SolverParameter``.

Caffe only finds a misspelt solver field when ``caffe train`` parses the
file; here every keyword is checked against the schema when the message is
built, with the closest field names suggested. Values follow NetSpec's
rules (lists for repeated fields, dicts or messages for messages, enums by
name or number: ``solver_mode='CPU'``). The plain bindings work as well:
``s = caffe_pb2.SolverParameter(); s.base_lr = 0.01; str(s)``.
"""
from google.protobuf.message import Message

from netspec import caffe_pb2, io
from netspec.errors import NetSpecError
from netspec.net_spec import Function, NetSpec, Top, _suggest, assign_field

# Names Caffe's solver registry and lr policies accept (solver_factory.cpp,
# sgd_solver.cpp); a typo here would only fail once training starts.
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _as_net(value):
    """A NetSpec or a top may stand for the NetParameter it describes."""
    if isinstance(value, NetSpec):
        return value.to_proto()
    if isinstance(value, (Top, Function)):
        from netspec.net_spec import to_proto
        return to_proto(value)
    return value


def solver(**fields):
    """Build a SolverParameter from keyword fields, each validated against the schema."""
    param = caffe_pb2.SolverParameter()
    known = param.DESCRIPTOR.fields_by_name
    for name, value in fields.items():
        if name not in known:
            raise NetSpecError("solver: SolverParameter has no field %r.%s Fields: %s"
                               % (name, _suggest(name, known), ", ".join(known)))
        if name in ("net_param", "train_net_param"):
            value = _as_net(value)
        elif name == "test_net_param":
            value = [_as_net(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        assign_field(param, name, value, "solver")
    check_solver(param)
    return param


def check_solver(param):
    """Reject settings Caffe would only refuse at training time."""
    if param.HasField("type") and param.type not in SOLVER_TYPES:
        raise NetSpecError("solver: unknown type %r.%s Caffe's solvers: %s"
                           % (param.type, _suggest(param.type, SOLVER_TYPES), ", ".join(SOLVER_TYPES)))
    if param.HasField("lr_policy") and param.lr_policy not in LR_POLICIES:
        raise NetSpecError("solver: unknown lr_policy %r.%s Caffe's policies: %s"
                           % (param.lr_policy, _suggest(param.lr_policy, LR_POLICIES),
                              ", ".join(LR_POLICIES)))
    # Caffe's net-count rules (Solver::InitTrainNet / InitTestNets).
    train = [f for f in ("train_net_param", "train_net", "net_param", "net") if param.HasField(f)]
    if len(train) > 1:
        raise NetSpecError("solver: give one train net, not %s" % " and ".join(train))
    generic = param.HasField("net") or param.HasField("net_param")
    n_test = len(param.test_net) + len(param.test_net_param)
    n_iter = len(param.test_iter)
    if (n_iter < n_test) if generic else (n_iter != n_test):
        raise NetSpecError("solver: test_iter must be given once per test net: %d test_iter "
                           "for %d test net(s) (test_net/test_net_param)%s"
                           % (n_iter, n_test, " plus the net's TEST phase" if generic else ""))
    if n_iter and param.test_interval <= 0:
        raise NetSpecError("solver: test nets are given (test_iter %s) but test_interval is %d; "
                           "set test_interval > 0" % (list(param.test_iter), param.test_interval))


def to_prototxt(message):
    """Text format as Caffe writes it (netspec.io.to_text); parses like ``str(message)``."""
    if not isinstance(message, Message):
        raise NetSpecError("to_prototxt takes a protobuf message, got %s" % type(message).__name__)
    return io.to_text(message)


def write_prototxt(message, path):
    """Write ``message`` as text to ``path`` atomically (netspec.io: temp file + os.replace)."""
    if not isinstance(message, Message):
        raise NetSpecError("write_prototxt takes a protobuf message, got %s" % type(message).__name__)
    io.write_text(message, path)
    return path


def write_solver(param_or_kwargs, path):
    """Write a solver file from a SolverParameter or a dict of solver fields."""
    if isinstance(param_or_kwargs, dict):
        param = solver(**param_or_kwargs)
    elif isinstance(param_or_kwargs, caffe_pb2.SolverParameter):
        param = param_or_kwargs
    else:
        raise NetSpecError("write_solver takes a SolverParameter or a dict of fields, got %s"
                           % type(param_or_kwargs).__name__)
    return write_prototxt(param, path)
