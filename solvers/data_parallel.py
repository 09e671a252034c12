"""Data-parallel training over MPI: Caffe's multi-GPU training, across processes and hosts.

``mpirun -np N tools/solve.py train --solver S`` starts N processes (ranks).
Each builds the solver; rank 0's parameters (its fillers, ``--weights`` or
``--snapshot``) are broadcast; every iteration each rank runs its
``iter_size`` forward/backward passes on its own batches, the parameter
diffs are summed over the ranks by ONE allreduce of a fused float32 buffer
and scaled by 1/N, and every rank applies the same update. This is Caffe's
P2PSync/NCCL rule, so N ranks with ``iter_size: k`` train exactly as one
process with ``iter_size: N*k`` on the same records (up to the order of
float32 sums): the solver's Normalize divides by ``iter_size``, the
allreduce by N.

Which records: a ``Data`` layer of the TRAIN net on rank r of N reads the
records whose position in the database's key order is r, r+N, r+2N, ...
(wrapping), as Caffe's DataLayer::Skip does, so an epoch is read once by all
ranks together and the N*b records of one iteration are those a single
process with ``iter_size: N`` reads in that iteration. Test nets run on
rank 0 only, unsharded (Caffe's rule), while the other ranks wait.

The fused buffer also carries each rank's loss and its pending requests
(SIGINT/SIGTERM/SIGHUP: stop, snapshot), so all ranks see the same averaged
loss (a NaN stops them all, in the same iteration), agree on when to
snapshot and stop, and nothing costs a second collective. Only rank 0 writes
snapshots; every rank's data position and random state go into its side file
(``"ranks"``), so a resume with the same N restores every rank.

Failures: before iteration 0 every rank reads the solver, builds its nets
(its data source must be there) and probes the snapshot folder; the outcome
is gathered, so either all ranks start or all stop with one message naming
each failed rank and host. A failure later, on one rank only, cannot be
agreed on (the others wait in the allreduce), so the CLI prints
``rank R on HOST: message`` and calls MPI_Abort, which ends the whole job.

Without mpi4py nothing here is imported: single-process runs never touch MPI.
"""
import contextlib
import logging
import os
import socket
import threading
import time

import numpy as np

from netspec.errors import CaffeError, SolverError
from solvers import rng
from solvers.backend import get_array_module, to_numpy
from solvers.side_file import path_for as side_file_path
from solvers.log import logger as log

# environment variables by which launchers tell a process how many processes the job has
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")
_LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE")

# Caffe's Caffe::solver_count / solver_rank / multiprocess, here per process
_state = {"comm": None, "count": 1, "rank": 0, "multiprocess": False}

# slots after the gradients in the fused buffer
_LOSS, _STOP, _SNAPSHOT, _FINAL_SNAPSHOT = range(4)
_SLOTS = 4


class ParallelError(CaffeError):
    """Data-parallel training cannot start or go on (MPI missing, a rank failed its checks)."""


# -- the job -----------------------------------------------------------------------------

def launched_size():
    """How many processes the launcher (mpirun, mpiexec, srun --mpi) started; 1 without one."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def local_rank():
    """This process's index among the job's processes on its host (for picking a GPU)."""
    for name in _LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def processes_on_this_host():
    """How many of the job's processes share this host (1 without a launcher): they share its cores."""
    for name in _LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def host():
    return socket.gethostname()


def mpi():
    """mpi4py's MPI module (initialises MPI); ParallelError if mpi4py is not installed."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ParallelError(
            "started as %d processes (by mpirun or mpiexec) but mpi4py cannot be imported (%s): "
            "install it with pip install 'caffe-toolkit[mpi]' (pip install mpi4py; it builds "
            "against Open MPI's or MPICH's development files, e.g. apt install libopenmpi-dev), "
            "or run one process without mpirun" % (launched_size(), e)) from None
    return MPI


def set_multiprocess(multiprocess=True, comm=None):
    """pycaffe's ``caffe.set_multiprocess``: join the MPI job (COMM_WORLD unless ``comm``).

    Afterwards ``solver_count()``/``solver_rank()`` are the job's size and this
    process's rank, Data layers built from then on read their share of the
    records, and ``get_solver`` builds data-parallel solvers.
    ``set_multiprocess(False)`` goes back to one process.
    """
    if not multiprocess:
        _state.update(comm=None, count=1, rank=0, multiprocess=False)
        return
    if comm is None:
        comm = mpi().COMM_WORLD
    _state.update(comm=comm, count=comm.Get_size(), rank=comm.Get_rank(), multiprocess=True)


def multiprocess():
    return _state["multiprocess"]


def communicator():
    return _state["comm"]


def solver_count():
    """How many solvers train together (Caffe::solver_count): the data shares there are."""
    return _state["count"]


def solver_rank():
    """This solver's rank (Caffe::solver_rank); rank 0 logs, tests and snapshots."""
    return _state["rank"]


def set_solver_count(count):
    """pycaffe's caffe.set_solver_count, for processes started without MPI (data sharding only)."""
    _state["count"] = int(count)


def set_solver_rank(rank):
    _state["rank"] = int(rank)


def root_solver():
    return _state["rank"] == 0


def record_share():
    """(rank, count): the records this process's TRAIN Data layers read (Caffe's DataLayer::Skip)."""
    return _state["rank"], _state["count"]


# -- agreeing --------------------------------------------------------------------------------

def error_text(error):
    return str(error) if isinstance(error, CaffeError) else "%s: %s" % (type(error).__name__, error)


def mark_agreed(error):
    """Note that every rank raised ``error`` together: only rank 0 reports it, nobody aborts."""
    error.all_ranks = True
    return error


def agree(comm, error, what):
    """Every rank says how its part of ``what`` went; if any failed, all raise one ParallelError.

    ``error`` is this rank's exception or None. The message lists every
    failed rank with its host, so a user sees which machine lacks the data.
    """
    report = None if error is None else (comm.Get_rank(), host(), error_text(error))
    reports = [r for r in comm.allgather(report) if r is not None]
    if not reports:
        return
    lines = ["rank %d on %s: %s" % r for r in reports]
    raise mark_agreed(ParallelError("%s failed on %d of %d processes (no process started training):\n  %s"
                                    % (what, len(reports), comm.Get_size(), "\n  ".join(lines))))


class _Attempt:
    """``with _Attempt() as a:`` keeps the exception raised inside in ``a.error``."""

    error = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, Exception):
            self.error = exc
            return True
        return False


# -- the data-parallel solver ---------------------------------------------------------------

class DataParallelSolver:
    """Mixed in before a solver class by ``solver_class``: the MPI parts of the training loop.

    Construction is collective (all ranks of ``comm`` together), so are
    ``step``, ``snapshot`` and ``restore``. ``signals`` may be the CLI's
    SignalHandler: the ranks agree on its ``wants_snapshot`` (snapshot when
    stopping) too. ``allreduce_seconds`` adds up the time spent in the
    allreduce (bench/mpi_scaling.py reports it).
    """

    def __init__(self, param_or_path, weights=None, comm=None):
        from solvers.solver import read_solver_param
        self.comm = comm if comm is not None else (communicator() or mpi().COMM_WORLD)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.signals = None
        self.allreduce_seconds = 0.0
        self.allreduce_calls = 0
        self._agreed = "none"
        self._gathered = None
        self._rank_sides = None
        with _Attempt() as attempt:
            param = read_solver_param(param_or_path)
        agree(self.comm, attempt.error, "reading the solver")
        seed = param.random_seed if param.random_seed >= 0 else int(np.random.default_rng().integers(2 ** 31))
        seed = self.comm.bcast(seed, root=0)
        with _Attempt() as attempt:
            super().__init__(self._param_for_rank(param, seed), weights if self.rank == 0 else None)
        agree(self.comm, attempt.error, "the pre-flight checks (solver, nets, data, snapshot folder)")
        if self.rank:   # Caffe's workers: the seed plus their device id, so dropout masks differ
            rng.set_random_seed(seed + self.rank)
        self._build_buffer()
        self.broadcast_params()
        p = self.param
        log.info("Data-parallel training on %d processes (MPI): each iteration averages %d "
                 "forward/backward passes (iter_size %d x %d processes)%s", self.size,
                 p.iter_size * self.size, p.iter_size, self.size, self._batch_text())

    def _param_for_rank(self, param, seed):
        """Every rank trains with the agreed seed; only rank 0 tests and loads weights."""
        from netspec import caffe_pb2
        mine = caffe_pb2.SolverParameter()
        mine.CopyFrom(param)
        mine.random_seed = seed
        if self.rank:
            for field in ("test_iter", "test_net", "test_net_param", "test_state", "weights"):
                mine.ClearField(field)
        return mine

    def _batch_text(self):
        """', effective batch B' from the train net's Data layers (those with a batch_size)."""
        sizes = [layer.layer_param.data_param.batch_size for layer in self.net.layers
                 if layer.type == "Data"]
        if not sizes:
            return ""
        return ", effective batch %d (batch_size %d)" % (sizes[0] * self.param.iter_size * self.size, sizes[0])

    # -- the fused buffer ----------------------------------------------------------------
    def _build_buffer(self):
        params = self.net.learnable_params
        self._spans, start = [], 0
        for blob in params:
            self._spans.append((start, start + blob.count))
            start += blob.count
        self._count = start
        self._buffer = np.zeros(start + _SLOTS, dtype=np.float32)

    def _pack(self, arrays):
        buf = self._buffer
        for a, (lo, hi) in zip(arrays, self._spans):
            buf[lo:hi] = to_numpy(a).ravel()

    def _unpack(self, blobs, field):
        buf = self._buffer
        for blob, (lo, hi) in zip(blobs, self._spans):
            target = getattr(blob, field)
            values = buf[lo:hi].reshape(target.shape)
            target[...] = values if blob.xp is np else blob.xp.asarray(values)

    def broadcast_params(self):
        """Every rank takes rank 0's parameters (Caffe's NCCL::Broadcast), in one call."""
        params = self.net.learnable_params
        self._pack([b.data for b in params])
        self.comm.Bcast(self._buffer, root=0)
        self._unpack(params, "data")

    def share_gradients(self, loss):
        """Sum diffs, loss and requests over the ranks (one Allreduce), average; return the loss."""
        MPI = mpi()
        params = self.net.learnable_params
        buf = self._buffer
        self._pack([b.diff for b in params])
        n = self._count
        stop, snapshot, final = self._local_requests()
        buf[n + _LOSS], buf[n + _STOP], buf[n + _SNAPSHOT], buf[n + _FINAL_SNAPSHOT] = loss, stop, snapshot, final
        start = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - start
        self.allreduce_calls += 1
        scale = np.float32(1) / np.float32(self.size)
        buf[:n + 1] *= scale
        self._unpack(params, "diff")
        stop, snapshot, final = (buf[n + k] > 0 for k in (_STOP, _SNAPSHOT, _FINAL_SNAPSHOT))
        if stop and (snapshot or final) and self.signals is not None:
            self.signals.wants_snapshot = True
        self._agreed = "stop" if stop else "snapshot" if snapshot else "none"
        return np.float32(buf[n + _LOSS])

    def _local_requests(self):
        """This rank's pending signal requests as (stop, snapshot, snapshot-when-stopping) flags.

        A stop on any rank stops all. A snapshot request counts on rank 0
        only: mpirun forwards a signal to every rank, and the ranks may see
        it in different iterations, which would make one snapshot per rank.
        """
        stop = snapshot = 0
        for _ in range(64):   # a handful at most; bounded all the same
            action = super().requested_action()
            if action == "none":
                break
            stop = stop or action == "stop"
            snapshot = snapshot or (action == "snapshot" and self.rank == 0)
        final = bool(getattr(self.signals, "wants_snapshot", False))
        return float(stop), float(snapshot), float(final)

    def requested_action(self):
        """The action all ranks agreed on in the last allreduce (once)."""
        action, self._agreed = self._agreed, "none"
        return action

    # -- snapshots and restore --------------------------------------------------------------
    def _rank_side_state(self):
        state = super()._side_state()
        return {"rng": state["rng"], "train_net": state["train_net"]}

    def _side_state(self):
        state = super()._side_state()
        if self._gathered is not None:
            state["ranks"] = self._gathered
        return state

    def snapshot(self):
        """Collective: every rank hands rank 0 its data position and random state; rank 0 writes."""
        self._gathered = self.comm.gather(self._rank_side_state(), root=0)
        try:
            if self.rank == 0:
                return super().snapshot()
        finally:
            self._gathered = None
        self.last_snapshot_iter = self.iter
        from solvers import snapshot as snap
        fmt = self.param.snapshot_format
        return (self.snapshot_filename(snap.model_extension(fmt)),
                self.snapshot_filename(snap.state_extension(fmt)))

    def _stop_on_bad_loss(self, loss):
        try:
            super()._stop_on_bad_loss(loss)
        except SolverError as e:   # the loss was averaged, so every rank stops here
            raise mark_agreed(e) from None

    def restore(self, state_file, ignore_side_file=False):
        """Collective: rank 0 reads the snapshot; iteration, weights, history and positions are sent."""
        with _Attempt() as attempt:
            if self.rank == 0:
                super().restore(state_file, ignore_side_file)
        agree(self.comm, attempt.error, "restoring %s" % os.fspath(state_file))
        self.iter, self.current_step = self.comm.bcast((self.iter, self.current_step), root=0)
        self.last_snapshot_iter = self.iter
        self.broadcast_params()
        history = self.history_arrays()
        if history:
            sets = len(history) // max(len(self.net.learnable_params), 1)
            for k in range(sets):
                part = history[k * len(self._spans):(k + 1) * len(self._spans)]
                self._pack(part)
                self.comm.Bcast(self._buffer, root=0)
                buf = self._buffer
                for h, (lo, hi) in zip(part, self._spans):
                    h[...] = get_array_module(h).asarray(buf[lo:hi].reshape(h.shape))
        sides = self.comm.bcast(self._rank_sides, root=0)
        with _Attempt() as attempt:
            if sides is not None and self.rank:
                self._restore_rank_side(sides[self.rank], state_file)
        agree(self.comm, attempt.error, "restoring the data positions of %s" % os.fspath(state_file))

    def _restore_side_state(self, side, state_file):
        """Rank 0: its own part as one process would; keep every rank's part for the others."""
        ranks = side.get("ranks")
        if ranks is None or len(ranks) != self.size:
            log.warning("%s was written by %s, this run has %d: every rank's data starts again "
                        "from its first record (as after a Caffe snapshot)", state_file,
                        "%d processes" % len(ranks) if ranks else "one process", self.size)
            side = dict(side, train_net={})
            self._rank_sides = None
        else:
            self._rank_sides = ranks
        super()._restore_side_state(side, state_file)

    def _restore_rank_side(self, side, state_file):
        """Another rank's part of the side file, through the checks rank 0's part went through."""
        from solvers.solver import _set_state
        path = side_file_path(state_file)
        if side["rng"] is not None:
            _set_state(rng.set_state, side["rng"], path, "the random generator of rank %d" % self.rank)
        for name, layer_state in side["train_net"].items():
            if not self.net.has_layer(name):
                raise SolverError("side file %r keeps the state of layer %r for rank %d, which its "
                                  "train net does not have" % (path, name, self.rank))
            _set_state(self.net.layer_by_name(name).set_state, layer_state, path,
                       "layer %r (train net of rank %d)" % (name, self.rank))


_classes = {}


def solver_class(base):
    """The data-parallel variant of a solver class (SGDSolver -> DataParallelSGDSolver)."""
    if base not in _classes:
        _classes[base] = type("DataParallel" + base.__name__, (DataParallelSolver, base),
                              {"__doc__": "%s trained on several processes (solvers/data_parallel.py)."
                                          % base.__name__})
    return _classes[base]


def get_solver(param_or_path, weights=None, comm=None):
    """The data-parallel solver its ``type`` names, built collectively on every rank of ``comm``.

    Call ``set_multiprocess()`` first (before any net is built), so Data
    layers read their share of the records.
    """
    from solvers.solver import read_solver_param
    from solvers.sgd_solvers import solver_class as base_class
    with _Attempt() as attempt:
        kind = read_solver_param(param_or_path).type
        cls = solver_class(base_class(kind))
    agree(comm if comm is not None else (communicator() or mpi().COMM_WORLD), attempt.error,
          "reading the solver")
    return cls(param_or_path, weights=weights, comm=comm)


# -- the CLI's side ---------------------------------------------------------------------------

def quiet_other_ranks(names=("caffe", "solvers")):
    """Only rank 0 logs Caffe's lines; the others keep their warnings and errors.

    On rank 0 the terminal copy of the log (not the --log file) takes the
    main thread's lines only: when mpirun stops reading (Ctrl-C), a data
    thread blocked writing there would hold the handler's lock, and the
    main thread could never reach its snapshot (see release_blocked_output).
    """
    for name in names:
        logger = logging.getLogger(name)
        if solver_rank() != 0:
            logger.setLevel(logging.WARNING)
            continue
        for handler in logger.handlers:
            if getattr(handler, "_caffe_glog", False) and not any(
                    isinstance(f, MainThreadOnly) for f in handler.filters):
                handler.addFilter(MainThreadOnly())


class MainThreadOnly(logging.Filter):
    def filter(self, record):
        return record.thread == threading.main_thread().ident


def abort(error, stream):
    """One rank failed alone: say which and where, then end the whole job (MPI_Abort)."""
    print("rank %d on %s: %s" % (solver_rank(), host(), error_text(error)), file=stream)
    try:
        stream.flush()
    except (AttributeError, ValueError, OSError):
        pass
    communicator().Abort(1)


@contextlib.contextmanager
def all_or_none(what):
    """Run the block on every rank; if it failed on any, all raise one ParallelError naming them.

    In one process the block's own exception simply propagates.
    """
    if not multiprocess():
        yield
        return
    error = None
    try:
        yield
    except Exception as e:   # reported through agree(), on every rank
        error = e
    agree(communicator(), error, what)


# -- signals under mpirun -----------------------------------------------------------------------

def adapt_signals(signals):
    """Make the CLI's SignalHandler fit mpirun's way with signals.

    Ctrl-C (SIGINT to mpirun) reaches the ranks as SIGCONT at once, SIGTERM
    ``odls_base_sigkill_timeout`` seconds later (Open MPI's default: 1) and
    SIGKILL as long after that; SIGUSR1 and SIGUSR2 are forwarded as they
    are. SIGTERM keeps its effect (--sigterm_effect: snapshot, then stop) and
    lets a blocked log write go; SIGUSR1 gets SIGINT's effect, SIGUSR2
    SIGHUP's (snapshot).
    """
    import signal
    signals.effects[signal.SIGUSR1] = signals.effects[signal.SIGINT]
    signals.effects[signal.SIGUSR2] = signals.effects.get(signal.SIGHUP, "snapshot")
    handle = signals._on_signal

    def on_signal(signum, frame):
        if signum == signal.SIGTERM:
            release_blocked_output()
        handle(signum, frame)
    signals._on_signal = on_signal


def release_blocked_output():
    """Point a stdout/stderr nobody reads any more at /dev/null, so a blocked log write returns.

    When mpirun tears a job down it stops reading the ranks' output; rank 0,
    writing its log, would block there until SIGKILL instead of reaching
    its snapshot. The --log file keeps every line.
    """
    import select
    for fd in (1, 2):
        try:
            if not select.select([], [fd], [], 0)[1]:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
        except (OSError, ValueError):   # a closed or odd descriptor: nothing to release
            pass
