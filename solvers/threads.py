"""How many threads BLAS (NumPy's OpenBLAS/MKL) may use: never more than the free cores.

A BLAS that starts one thread per core on a machine where another process
keeps a core busy does not get 2x: every product waits for its slowest
thread, and LeNet's fc1 forward went from ~1 ms to ~30 ms so. The policy:

1. ``set_num_threads(n)`` (``caffe.set_num_threads``, ``--threads N`` of
   tools/solve.py) wins;
2. else the environment variable ``CAFFE_NUM_THREADS``;
3. else, when the user set ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/
   ``MKL_NUM_THREADS``, the BLAS is left as they configured it;
4. else the free cores: the cores this process may run on
   (``os.sched_getaffinity``) less the 1-minute load average, rounded, at
   least 1; divided among the processes mpirun started on this host.

The limit is applied through threadpoolctl to every BLAS loaded in the
process, when a Net is built (``apply_default``) or when asked.
"""
import logging
import math
import os

from netspec.errors import CaffeError

ENV = "CAFFE_NUM_THREADS"
BLAS_ENVS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_state = {"limiter": None, "threads": None, "explicit": False}


def usable_cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores():
    """Usable cores less the 1-minute load average (others' running work), at least 1."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(math.floor(cores - load + 0.5))))


def _parse(value, where):
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise CaffeError("%s: the number of threads must be a whole number >= 1, got %r" % (where, value))
    return n


def default_threads():
    """The thread count the policy picks without an explicit set_num_threads (None: leave BLAS alone)."""
    if os.environ.get(ENV, "").strip():
        return _parse(os.environ[ENV], "environment variable %s" % ENV)
    if any(os.environ.get(v, "").strip() for v in BLAS_ENVS):
        return None
    from solvers.data_parallel import processes_on_this_host
    return max(1, free_cores() // processes_on_this_host())   # mpirun: the ranks share the cores


def set_num_threads(n, where="set_num_threads"):
    """Limit every loaded BLAS to ``n`` threads from now on; returns n."""
    n = _parse(n, where)
    _limit(n)
    _state["explicit"] = True
    return n


def apply_default():
    """Apply the default policy once, unless set_num_threads already chose; returns the count
    in force (None where the BLAS is left as the environment configured it)."""
    if _state["explicit"] or _state["limiter"] is not None:   # (False: tried, threadpoolctl missing)
        return _state["threads"]
    n = default_threads()
    if n is not None:
        _limit(n)
    return n


def num_threads():
    """The BLAS thread limit this module set, or None if it set none."""
    return _state["threads"]


def _limit(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:   # an install that predates the dependency: run, but say why BLAS is not limited
        if not _state.get("warned"):
            _state["warned"] = True
            logging.getLogger("caffe").warning(
                "threadpoolctl is not installed (pip install threadpoolctl), so BLAS threads are not "
                "limited to %d; set OPENBLAS_NUM_THREADS=%d to do it by hand", n, n)
        _state["threads"] = n
        _state["limiter"] = False
        return
    _state["limiter"] = threadpool_limits(limits=n, user_api="blas")
    _state["threads"] = n
