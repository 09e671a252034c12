"""pycaffe's multi-GPU hooks: ``has_nccl``, ``NCCL``, solver count and rank.

BVLC Caffe trains on several GPUs of one machine through NCCL: each process
builds its solver, wraps it in ``caffe.NCCL(solver, uid)``, broadcasts the
weights (``bcast``) and registers the NCCL object as a solver callback that
all-reduces the gradients. This toolkit has no NCCL, so ``has_nccl()`` is
False, as in a Caffe built without ``USE_NCCL``, and the calls that would
need NCCL raise a CaffeError saying so instead of failing later with an
AttributeError. The count/rank settings are kept as plain numbers so that
code reading them (``caffe.solver_rank() == 0`` to log once) runs unchanged.
"""
from netspec.errors import CaffeError

_state = {"solver_count": 1, "solver_rank": 0, "multiprocess": False}

_NO_NCCL = ("this toolkit has no NCCL (caffe.has_nccl() is False): it trains on one device per "
            "process. Train without NCCL (one solver, one GPU or the CPU), or use a BVLC Caffe "
            "built with USE_NCCL=1 for several GPUs.")


def has_nccl():
    """Whether NCCL multi-GPU training is available: never here."""
    return False


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``; every use needs NCCL, which this toolkit lacks."""

    def __init__(self, solver, uid):
        raise CaffeError("caffe.NCCL(solver, uid): " + _NO_NCCL)

    @staticmethod
    def new_uid():
        """A unique id shared by the processes of one NCCL run (needs NCCL)."""
        raise CaffeError("caffe.NCCL.new_uid(): " + _NO_NCCL)


def solver_count():
    """How many solvers train together (Caffe::solver_count); 1 unless set."""
    return _state["solver_count"]


def set_solver_count(count):
    _state["solver_count"] = int(count)


def solver_rank():
    """This process's solver rank (Caffe::solver_rank); 0 is the one that logs and snapshots."""
    return _state["solver_rank"]


def set_solver_rank(rank):
    _state["solver_rank"] = int(rank)


def set_multiprocess(multiprocess):
    """Caffe::set_multiprocess: recorded only (there is no NCCL to configure)."""
    _state["multiprocess"] = bool(multiprocess)
