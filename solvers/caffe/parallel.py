"""pycaffe's multi-GPU hooks: ``has_nccl``, ``NCCL``, solver count and rank.

BVLC Caffe trains on several GPUs of one machine through NCCL: each process
builds its solver, wraps it in ``caffe.NCCL(solver, uid)``, broadcasts the
weights (``bcast``) and registers the NCCL object as a solver callback that
all-reduces the gradients. This toolkit has no NCCL, so ``has_nccl()`` is
False, as in a Caffe built without ``USE_NCCL``, and the calls that would
need NCCL raise a CaffeError saying so instead of failing later with an
AttributeError. The count and rank are solvers/data_parallel.py's, so code
reading them (``caffe.solver_rank() == 0`` to log once) runs unchanged, and
under mpirun ``caffe.set_multiprocess(True)`` joins the MPI job: training on
several processes goes through MPI there, not NCCL.
"""
from netspec.errors import CaffeError
from solvers import data_parallel

_state = {"multiprocess": False}

_NO_NCCL = ("this toolkit has no NCCL (caffe.has_nccl() is False): it trains on one device per "
            "process. Train without NCCL (one solver, one GPU or the CPU), on several processes "
            "through MPI (mpirun -np N caffe train -solver S; README 'Several processes or "
            "machines'), or use a BVLC Caffe built with USE_NCCL=1 for several GPUs.")


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
    """How many solvers train together (Caffe::solver_count); 1 unless set or under mpirun."""
    return data_parallel.solver_count()


def set_solver_count(count):
    data_parallel.set_solver_count(count)


def solver_rank():
    """This process's solver rank (Caffe::solver_rank); 0 is the one that logs and snapshots."""
    return data_parallel.solver_rank()


def set_solver_rank(rank):
    data_parallel.set_solver_rank(rank)


def set_multiprocess(multiprocess):
    """Caffe::set_multiprocess. Under mpirun, True joins the MPI job (solvers/data_parallel.py):
    solver_count/solver_rank become its size and rank, Data layers read their share, and
    ``solvers.data_parallel.get_solver(...)`` trains with the gradients averaged. Elsewhere
    (processes started some other way) it is recorded only; set the count and rank yourself."""
    _state["multiprocess"] = bool(multiprocess)
    if multiprocess and data_parallel.launched_size() > 1:
        data_parallel.set_multiprocess(True)
    elif not multiprocess and data_parallel.multiprocess():
        data_parallel.set_multiprocess(False)
