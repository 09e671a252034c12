"""The wrong-working-directory check a solver file gets before anything else.

Relative paths in solvers and nets resolve from the directory the program
runs in, as in Caffe, whose examples are run from its root
(``examples/mnist/lenet_solver.prototxt`` names
``examples/mnist/lenet_train_test.prototxt``). Run from anywhere else, every
path fails and the first error names only one of them. When none of the
relative paths resolves from the working directory but all of them do from
the solver file's folder or one of the two above it, that is what to say
first: where to run from.
"""
import os

from netspec import caffe_pb2
from netspec.errors import CaffeError, SolverError

LEVELS_UP = 2   # the solver's folder, its parent and grandparent (Caffe's examples/NAME/ layout)


def _net_paths(net):
    """(what, path) of every file a net reads: data sources and mean files."""
    out = []
    for layer in net.layer:
        where = "layer %r" % layer.name
        for field in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param"):
            if layer.HasField(field) and getattr(layer, field).source:
                out.append(("%s source" % where, getattr(layer, field).source))
        if layer.HasField("transform_param") and layer.transform_param.mean_file:
            out.append(("%s mean_file" % where, layer.transform_param.mean_file))
    return out


def _solver_paths(param):
    """(what, path) of the files the solver names itself; nets given inline add their sources."""
    out = [(field, getattr(param, field)) for field in ("net", "train_net") if param.HasField(field)]
    out += [("test_net", path) for path in param.test_net]
    out += [("weights", path) for path in param.weights]
    if param.snapshot and os.path.dirname(param.snapshot_prefix):
        out.append(("the folder of snapshot_prefix", os.path.dirname(param.snapshot_prefix)))
    for field in ("net_param", "train_net_param"):
        if param.HasField(field):
            out += _net_paths(getattr(param, field))
    for net in param.test_net_param:
        out += _net_paths(net)
    return out


def _net_files_from(base, param):
    """The paths inside the solver's net files, reading each from ``base`` where it is found."""
    from netspec.io import read_net
    out = []
    for field in ("net", "train_net"):
        if param.HasField(field):
            out.append(getattr(param, field))
    out += list(param.test_net)
    paths = []
    for path in out:
        full = os.path.join(base, path)
        if os.path.isfile(full):
            try:
                net = read_net(full)
            except CaffeError:
                continue   # its own error comes later, from the normal path
            paths += _net_paths(net)
    return paths


def check_working_directory(param, solver_path, cwd=None):
    """SolverError when every relative path fails here but all resolve from a folder at the solver."""
    cwd = os.path.abspath(cwd or os.getcwd())
    relative = [(what, path) for what, path in _solver_paths(param) if not os.path.isabs(path)]
    if not relative or any(os.path.exists(os.path.join(cwd, path)) for _, path in relative):
        return
    folder = os.path.dirname(os.path.abspath(solver_path))
    candidates = []
    for _ in range(LEVELS_UP + 1):
        if folder != cwd and folder not in candidates:
            candidates.append(folder)
        folder = os.path.dirname(folder)
    for base in candidates:
        inner = [(w, p) for w, p in _net_files_from(base, param) if not os.path.isabs(p)]
        if any(os.path.exists(os.path.join(cwd, p)) for _, p in inner):
            return   # the nets' own paths do resolve here: not simply the wrong directory
        wanted = relative + inner
        if all(os.path.exists(os.path.join(base, path)) for _, path in wanted):
            shown = ", ".join("%s %r" % (what, path) for what, path in wanted[:3])
            more = " and %d more" % (len(wanted) - 3) if len(wanted) > 3 else ""
            raise SolverError(
                "paths resolve from the working directory %s; run from %s or use absolute paths "
                "(%s names %s%s: none of them exists from the working directory, all of them from %s)"
                % (cwd, base, solver_path, shown, more, base))


def check_solver_file(source, param):
    """``check_working_directory`` when ``source`` is a solver file (not a message or text)."""
    if isinstance(source, caffe_pb2.SolverParameter) or not isinstance(source, (str, os.PathLike)):
        return
    if os.path.isfile(source):
        check_working_directory(param, os.fspath(source))
