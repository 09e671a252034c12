"""``--backend caffe``: hand the solver file to a real BVLC Caffe through pycaffe.

Why: on some boards only Caffe has a GPU build. The Jetson TK1 (CUDA 6.5,
32-bit ARM) has no CuPy, but JetPack's Caffe runs there on the GPU; the same
net and solver files written with this toolkit train there unchanged:

    tools/solve.py train --solver lenet_solver.prototxt --backend caffe --gpu 0

What happens is what ``caffe train`` does: pick the mode and device
(``caffe.set_mode_cpu`` or ``caffe.set_device`` + ``caffe.set_mode_gpu``),
``caffe.get_solver(path)``, then ``solver.restore(state)`` to resume or
``copy_from`` every weights file into the train and test nets to fine-tune,
then ``solver.solve()``. Caffe writes the snapshots and its own glog lines.

Caffe's solver runs inside one C++ call, which Python's signal handling
cannot interrupt, and pycaffe has no hook for Caffe's SIGINT/SIGHUP actions:
during ``solve`` Ctrl-C ends the process at once (keep ``snapshot`` set in
the solver to have something to resume from).

This toolkit installs a ``caffe`` package of its own (``import caffe`` for
pycaffe code), so "import caffe" alone could hand the solver back to us.
``import_pycaffe`` takes the ``caffe`` module already imported when it is
not ours, else looks along ``sys.path`` for the first ``caffe`` package that
is not this toolkit's (ours carries the ``caffe.toolkit`` marker).
"""
import importlib.machinery
import importlib.util
import logging
import os
import signal
import sys
import tempfile

from google.protobuf import text_format

from netspec.errors import CaffeError

log = logging.getLogger("caffe")

INSTALL_HINT = (
    "Install a BVLC Caffe with its Python module (pycaffe): on Debian/Ubuntu 'apt-get install "
    "caffe-cpu' (or caffe-cuda) and use the system python3; or build BVLC Caffe from source with "
    "'make pycaffe' (or cmake with BUILD_python=ON) and add caffe/python to PYTHONPATH; on a "
    "Jetson board use the Caffe built for JetPack. Check with: python -c \"import caffe; "
    "caffe.get_solver\" (this toolkit's own caffe has caffe.toolkit; pycaffe has not). Or leave "
    "out --backend caffe to train with this toolkit.")


_ABSENT = object()


def is_toolkit_caffe(module):
    """Whether ``module`` is this toolkit's ``caffe`` (it has the ``toolkit`` marker)."""
    return str(getattr(module, "toolkit", "")).startswith("caffe-toolkit")


def _own_package_dirs():
    """The folders our ``caffe`` package may be loaded from (top-level alias and facade)."""
    import solvers.caffe
    facade = os.path.dirname(os.path.abspath(solvers.caffe.__file__))
    top = os.path.join(os.path.dirname(os.path.dirname(facade)), "caffe")
    return {os.path.realpath(facade), os.path.realpath(top)}


def _load_as_caffe(spec):
    """Import the package ``spec`` finds under the name ``caffe``, replacing any ``caffe`` loaded."""
    saved = {name: mod for name, mod in sys.modules.items() if name == "caffe" or name.startswith("caffe.")}
    for name in saved:
        del sys.modules[name]
    module = importlib.util.module_from_spec(spec)
    sys.modules["caffe"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        raise
    return sys.modules["caffe"]


def find_pycaffe():
    """The first ``caffe`` package along ``sys.path`` that is not this toolkit's, imported; or None."""
    own = _own_package_dirs()
    for entry in sys.path:
        spec = importlib.machinery.PathFinder.find_spec("caffe", [entry or os.getcwd()])
        if spec is None or spec.origin is None or spec.loader is None:
            continue     # not there, or a bare folder named caffe (e.g. a Caffe source checkout)
        if os.path.realpath(os.path.dirname(spec.origin)) in own:
            continue
        module = _load_as_caffe(spec)
        if not is_toolkit_caffe(module):     # another copy of this toolkit is skipped too
            return module
    return None


def import_pycaffe():
    """The real pycaffe module, or a CaffeError that says how to get one."""
    loaded = sys.modules.get("caffe", _ABSENT)
    if loaded is None:       # import blocked on purpose
        raise CaffeError("--backend caffe needs BVLC Caffe's Python module, but 'import caffe' "
                         "failed (import of caffe halted; None in sys.modules). %s" % INSTALL_HINT)
    if loaded is not _ABSENT and not is_toolkit_caffe(loaded):
        caffe = loaded
    else:
        try:
            caffe = find_pycaffe()
        except Exception as e:   # a pycaffe that is there but broken: say why
            raise CaffeError("--backend caffe needs BVLC Caffe's Python module, but 'import caffe' "
                             "failed (%s: %s). %s" % (type(e).__name__, e, INSTALL_HINT)) from None
        if caffe is None:
            raise CaffeError("--backend caffe needs BVLC Caffe's Python module, but 'import caffe' "
                             "finds only this toolkit's own caffe package (No module named 'caffe' "
                             "besides it on sys.path). %s" % INSTALL_HINT)
    if not callable(getattr(caffe, "get_solver", None)):
        where = getattr(caffe, "__file__", None) or "an unknown location"
        raise CaffeError("--backend caffe: the 'caffe' module found at %s is not BVLC Caffe's "
                         "pycaffe (it has no caffe.get_solver; pycaffe from before 2015 lacks it "
                         "too). %s" % (where, INSTALL_HINT))
    return caffe


def _solver_file(path, param):
    """``path`` itself when ``param`` (command-line overrides applied) says the same; else a temp copy."""
    from solvers.solver import read_solver_param
    if read_solver_param(path) == param:
        return path, None
    fd, tmp = tempfile.mkstemp(prefix="solver_", suffix=".prototxt")
    with os.fdopen(fd, "w") as f:
        f.write(text_format.MessageToString(param))
    log.info("Solver with command-line settings (max_iter, train_state) written to %s", tmp)
    return tmp, tmp


def train(solver_path, param, weights=(), snapshot=None, gpus=(), sigint_effect=None):
    """Train with pycaffe as ``caffe train`` would; returns pycaffe's solver.

    ``param`` is the SolverParameter read from ``solver_path`` with the
    command line's overrides applied; Caffe reads the same file when there
    are none.
    """
    caffe = import_pycaffe()
    log.info("Using BVLC Caffe's pycaffe from %s", getattr(caffe, "__file__", "?"))
    if gpus:
        if len(gpus) > 1:
            log.warning("pycaffe trains on one GPU: using GPU %d only", gpus[0])
        caffe.set_device(int(gpus[0]))
        caffe.set_mode_gpu()
        log.info("Use GPU with device ID %d", gpus[0])
    else:
        caffe.set_mode_cpu()
        log.info("Use CPU.")
    if sigint_effect not in (None, "stop"):
        log.warning("--sigint_effect %s is not available with --backend caffe: Ctrl-C ends Caffe's "
                    "run at once", sigint_effect)
    path, tmp = _solver_file(solver_path, param)
    try:
        solver = caffe.get_solver(path)
        if snapshot:
            log.info("Resuming from %s", snapshot)
            solver.restore(snapshot)
        for w in weights:
            log.info("Finetuning from %s", w)
            solver.net.copy_from(w)
            for net in solver.test_nets:
                net.copy_from(w)
        log.info("Starting Optimization")
        old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)   # Caffe's C++ loop cannot see Python's flag
        except ValueError:   # not the main thread: leave signals alone
            old = None
        try:
            solver.solve()
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
    finally:
        if tmp is not None:
            os.unlink(tmp)
    log.info("Optimization Done.")
    return solver
