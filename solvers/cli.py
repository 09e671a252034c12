"""The ``caffe`` command-line brew (train, test, time) as a library, so tests can call it.

    tools/solve.py solver.prototxt                       # short form of train
    tools/solve.py train --solver S [--weights W1,W2 | --snapshot S.solverstate] [--iterations N]
    tools/solve.py test --model M --weights W [--iterations 50] [--level L] [--stage a,b]
    tools/solve.py time --model M [--iterations 50] [--phase TRAIN|TEST]
    tools/solve.py device_query --gpu N|N,M|all
    common flags: --gpu N|N,M|all  --backend numpy|caffe  --threads N  --log FILE  --debug
                  --sigint_effect / --sigterm_effect / --sighup_effect snapshot|stop|none
                  --ignore_side_file (train --snapshot: resume even if its .json side file is bad)

Flags follow BVLC Caffe's ``tools/caffe.cpp`` and may be written its way too
(``-solver S``, ``--solver=S``, ``-solver=S``): every flag of the parser,
so a flag added here works in all three spellings, through ``tools/solve.py``
and the ``caffe`` command (``solvers/caffe_tool.py``) alike. Differences a
Caffe user should know:

* SIGINT (Ctrl-C) by default snapshots and then stops (Caffe only stops;
  with ``snapshot_after_train`` it snapshots too). A second Ctrl-C aborts at
  once. ``--sigint_effect stop`` gives Caffe's behaviour. SIGHUP snapshots.
* SIGTERM (a scheduler's, ``docker stop``, systemd) does what SIGINT does
  (Caffe dies without a snapshot); ``--sigterm_effect`` changes it. A run
  stopped by SIGTERM exits with 143 (128 + 15), so a scheduler sees that
  training did not finish; a second SIGTERM aborts at once.
* ``train --iterations N`` overrides the solver's ``max_iter`` (Caffe ignores it).
* ``--backend caffe`` hands the solver file to a real pycaffe
  (``solvers/caffe_backend.py``): the route for boards where only Caffe has
  a GPU build (Jetson TK1).

Exit status: 0 on success (an early stop by SIGINT or SIGHUP included), 1 for
an error the toolkit reports (a CaffeError: one paragraph on stderr, no
traceback; ``--debug`` shows it), 2 for bad usage, 143 after a stop by
SIGTERM, 130 (143) when aborted by a second SIGINT (SIGTERM).
"""
import argparse
import contextlib
import logging
import os
import signal
import sys
import time

from netspec.errors import CaffeError, os_error_text, resolved_path

log = logging.getLogger("caffe")

VERBS = ("train", "test", "time", "device_query")
EFFECTS = ("snapshot", "stop", "none")
SNAPSHOT_AND_STOP = "snapshot+stop"   # the default SIGINT effect
_LOGGER_NAMES = ("caffe", "solvers")


class UsageError(CaffeError):
    """The command line itself is wrong (exit status 2)."""


# -- argument parsing ------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError("%s (see %s --help)" % (message, self.prog))


def build_parser(prog="solve.py"):
    ap = _Parser(prog=prog, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                 description=__doc__.split("\n\n")[1])
    ap.add_argument("command", help="train, test, time or device_query; or a solver prototxt "
                                    "(= train --solver it)")
    ap.add_argument("--solver", help="the solver prototxt (train)")
    ap.add_argument("--model", help="the net prototxt (test, time)")
    ap.add_argument("--weights", help="caffemodel(s) separated by ',': fine-tune from them (train) or "
                                      "score them (test); not together with --snapshot")
    ap.add_argument("--snapshot", help="a .solverstate to resume training from (train)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="test/time: batches to run (default 50); train: overrides max_iter")
    ap.add_argument("--gpu", default="", help="GPU device ids separated by ',', or 'all' (needs CuPy "
                                              "with --backend numpy)")
    ap.add_argument("--phase", choices=("TRAIN", "TEST"), help="net phase for time (default TRAIN)")
    ap.add_argument("--level", type=int, default=0, help="NetState level")
    ap.add_argument("--stage", default="", help="NetState stages separated by ','")
    ap.add_argument("--backend", choices=("numpy", "caffe"), default="numpy",
                    help="numpy (this toolkit, default) or caffe: hand the solver to a real pycaffe "
                         "(train only; the route on boards where only Caffe has a GPU build, "
                         "such as the Jetson TK1)")
    ap.add_argument("--sigint_effect", choices=EFFECTS, default=None,
                    help="what SIGINT (Ctrl-C) does while training (default: snapshot, then stop)")
    ap.add_argument("--sigterm_effect", choices=EFFECTS, default=None,
                    help="what SIGTERM (schedulers, docker stop, systemd) does while training "
                         "(default: snapshot, then stop, exit status 143)")
    ap.add_argument("--sighup_effect", choices=EFFECTS, default="snapshot",
                    help="what SIGHUP does while training (default: snapshot)")
    ap.add_argument("--ignore_side_file", "--ignore-side-file", action="store_true",
                    help="train --snapshot: if the snapshot's .json side file (data position, random "
                         "state) is damaged, resume without it, as from a Caffe snapshot")
    ap.add_argument("--threads", default=None,
                    help="BLAS threads on the CPU (default: $CAFFE_NUM_THREADS, else the free cores: "
                         "usable cores less the 1-minute load average, at least 1)")
    ap.add_argument("--log", help="also write the log to this file (replaced if it exists)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return ap


def _normalise_flags(argv, parser):
    """Accept gflags spellings: ``-solver S`` and ``-solver=S`` mean ``--solver S``.

    Any long option of ``parser`` may be written with one dash.
    """
    flags = {option[2:] for option in parser._option_string_actions if option.startswith("--")}
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and arg[1:].split("=", 1)[0] in flags:
            arg = "-" + arg
        out.append(arg)
    return out


def parse_args(argv, prog="solve.py"):
    parser = build_parser(prog)
    args = parser.parse_args(_normalise_flags(argv, parser))
    if args.command not in VERBS:
        if args.command.endswith((".prototxt", ".pbtxt")) or os.path.isfile(args.command):
            if args.solver:
                raise UsageError("give the solver once: either %r or --solver %r" % (args.command, args.solver))
            args.solver, args.command = args.command, "train"
        else:
            raise UsageError("unknown command %r; use train, test, time or device_query, or give a "
                             "solver prototxt" % args.command)
    args.stages = [s for s in args.stage.split(",") if s]
    return args


# -- logging ------------------------------------------------------------------------

@contextlib.contextmanager
def _logging_to(stream, log_file):
    """Caffe's log on ``stream`` (and ``log_file``) for the run; the loggers are put back afterwards."""
    from solvers.log import GlogFormatter, LogFileHandler, install_handler
    saved = [(logging.getLogger(n), list(logging.getLogger(n).handlers), logging.getLogger(n).level,
              logging.getLogger(n).propagate) for n in _LOGGER_NAMES]
    file_handler = None
    try:
        handler = install_handler(stream, names=_LOGGER_NAMES)
        if log_file:
            try:
                file_handler = LogFileHandler(log_file)
            except OSError as e:
                raise CaffeError("--log %r: cannot write the log file (resolved: %s, working "
                                 "directory: %s): %s" % (log_file, os.path.abspath(log_file), os.getcwd(),
                                                         e.strerror or e)) from None
            file_handler.setFormatter(GlogFormatter())
            for f in handler.filters:
                file_handler.addFilter(f)
            for name in _LOGGER_NAMES:
                logging.getLogger(name).addHandler(file_handler)
        yield file_handler
    finally:
        if file_handler is not None:
            file_handler.close()
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


# -- progress bar --------------------------------------------------------------------

class ProgressBar:
    """Iterations done, rate and ETA on the terminal's last line; log lines scroll above it.

    Only for a terminal: the log file and piped stderr never see it.
    """

    def __init__(self, stream, total, width=30, clock=time.monotonic, min_interval=0.1):
        self.stream, self.total, self.width = stream, int(total), width
        self.clock, self.min_interval = clock, min_interval
        self.start_iter = self.start_time = None
        self.done = 0
        self.visible = False
        self._last_draw = None

    def update(self, done):
        now = self.clock()
        if self.start_iter is None:
            self.start_iter, self.start_time = done, now
        self.done = done
        if self._last_draw is None or now - self._last_draw >= self.min_interval or done >= self.total:
            self.draw()

    def line(self):
        total = max(self.total, 1)
        filled = min(self.width, int(self.width * self.done / total))
        text = "[%s%s] %d/%d iters" % ("#" * filled, "." * (self.width - filled), self.done, self.total)
        if self.start_iter is None:
            return text
        elapsed = self.clock() - self.start_time
        count = self.done - self.start_iter
        if elapsed > 0 and count > 0:
            rate = count / elapsed
            eta = max(self.total - self.done, 0) / rate
            text += "  %.1f it/s  ETA %s" % (rate, _clock_text(eta))
        return text

    def draw(self):
        self._last_draw = self.clock()
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()
        self.visible = True

    def clear(self):
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.visible = False


def _clock_text(seconds):
    seconds = int(round(seconds))
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


class _BarStream:
    """stderr for the log handler: erases the bar before a log line and draws it again after."""

    def __init__(self, stream):
        self.stream = stream
        self.bar = None

    def write(self, text):
        bar = self.bar
        if bar is not None:
            bar.clear()
        self.stream.write(text)
        if bar is not None and text.endswith("\n"):
            bar.draw()

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return True


# -- signals ---------------------------------------------------------------------------

class Aborted(KeyboardInterrupt):
    """A second stop signal while the first is being handled: end now (exit 128 + signal)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalHandler:
    """Turn SIGINT/SIGTERM/SIGHUP into the solver's requested actions (Caffe's SignalHandler).

    ``action()`` is the solver's ``action_request``: it returns a pending
    request once. The default SIGINT/SIGTERM effect, snapshot-then-stop, is
    asked of the solver as "stop"; ``wants_snapshot`` tells the caller to make
    sure the last iteration is saved, ``stopped_by`` which signal stopped it.
    A second SIGINT or SIGTERM while a stop is pending raises Aborted (a
    KeyboardInterrupt: abort now).
    """

    def __init__(self, sigint_effect=SNAPSHOT_AND_STOP, sighup_effect="snapshot",
                 sigterm_effect=SNAPSHOT_AND_STOP):
        self.effects = {signal.SIGINT: sigint_effect or SNAPSHOT_AND_STOP,
                        signal.SIGTERM: sigterm_effect or SNAPSHOT_AND_STOP}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending = []
        self.wants_snapshot = False
        self.stopping = False
        self.stopped_by = None
        self._saved = {}

    def __enter__(self):
        for signum in self.effects:
            try:
                self._saved[signum] = signal.signal(signum, self._on_signal)
            except ValueError:   # only the main thread may set handlers; elsewhere signals stay as they are
                log.warning("not the main thread: %s keeps its usual effect", signal.Signals(signum).name)
        return self

    def __exit__(self, *exc):
        for signum, old in self._saved.items():
            signal.signal(signum, old)
        self._saved.clear()

    def _on_signal(self, signum, frame):
        effect = self.effects.get(signum, "none")
        if effect == "none":
            return
        if signum in (signal.SIGINT, signal.SIGTERM) and self.stopping:
            raise Aborted(signum)
        if effect in ("stop", SNAPSHOT_AND_STOP):
            self.stopping = True
        self.pending.append((signum, effect))

    def action(self):
        if not self.pending:
            return "none"
        signum, effect = self.pending.pop(0)
        name = signal.Signals(signum).name
        if effect in ("stop", SNAPSHOT_AND_STOP):
            self.stopped_by = signum
        if effect == SNAPSHOT_AND_STOP:
            self.wants_snapshot = True
            log.info("%s received: snapshotting and stopping (%s again to abort at once)", name,
                     "press Ctrl-C" if signum == signal.SIGINT else "send it")
            return "stop"
        log.info("%s received: %s requested", name, effect)
        return effect


# -- devices -----------------------------------------------------------------------------

def parse_gpus(flag):
    """Device ids from --gpu ('0', '0,1', 'all'); [] for the CPU."""
    flag = (flag or "").strip()
    if not flag:
        return []
    if flag == "all":
        try:
            import cupy
        except ImportError:
            raise CaffeError("--gpu all: CuPy is not installed, so no GPU can be counted; install a "
                             "cupy-cudaXXx wheel matching your CUDA, or leave out --gpu to train on "
                             "the CPU") from None
        return list(range(cupy.cuda.runtime.getDeviceCount()))
    try:
        return [int(s) for s in flag.split(",")]
    except ValueError:
        raise UsageError("--gpu %r: give device ids separated by ',' (e.g. 0 or 0,1) or 'all'"
                         % flag) from None


def _gpus_for_solver(args, param):
    """Caffe's rule: without --gpu, ``solver_mode: GPU`` in the solver picks ``device_id``.

    Only when the file says so: the schema's default is GPU, but a CPU run is
    what a user without ``solver_mode`` in the file expects here.
    """
    gpus = parse_gpus(args.gpu)
    if not gpus and not args.gpu and param.HasField("solver_mode") and param.solver_mode == param.GPU:
        from solvers.backend import _cupy
        if args.backend == "numpy" and _cupy() is None:
            log.warning("the solver says solver_mode: GPU but CuPy is not installed: training on "
                        "the CPU (pass --gpu N to insist, or set solver_mode: CPU)")
            return []
        gpus = [param.device_id]
    return gpus


def _use_devices(gpus, single=False):
    """Switch the array module to CuPy on gpus[0] (one device: several are not supported)."""
    from solvers import backend
    if not gpus:
        log.info("Use CPU.")
        backend.set_mode_cpu()
        return
    if len(gpus) > 1:
        log.warning("%s: using GPU %d only", "single-GPU command" if single else
                    "training on several GPUs is not supported", gpus[0])
    try:
        backend.set_device(gpus[0])
        backend.set_mode_gpu()
    except CaffeError as e:
        raise CaffeError("--gpu %s: %s" % (",".join(map(str, gpus)), e)) from None
    except Exception as e:   # CUDA's own errors: no such device, no driver
        raise CaffeError("--gpu %s: cannot use GPU %d: %s: %s"
                         % (",".join(map(str, gpus)), gpus[0], type(e).__name__, e)) from None
    log.info("Use GPU with device ID %d", gpus[0])
    log.info("GPU device name: %s", _device_name(gpus[0]))


def _device_name(device_id):
    try:
        import cupy
        name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:   # the name is only for the log
        return "unknown"


# -- verbs -------------------------------------------------------------------------------------

def _check_file(path, what):
    if not os.path.isfile(path):
        raise CaffeError("%s %r not found %s" % (what, path, resolved_path(path)))


def _weights_list(flag):
    return [w.strip() for w in (flag or "").split(",") if w.strip()]


def _check_weights(weights, verb):
    """--weights takes .caffemodel files; a solver state there is a slip for --snapshot."""
    for w in weights:
        if w.endswith((".solverstate", ".solverstate.h5")):
            model = w[:-len(".solverstate")] + ".caffemodel" if w.endswith(".solverstate") else \
                w[:-len(".solverstate.h5")] + ".caffemodel.h5"
            if verb == "train":
                raise UsageError("--weights %r is a solver state, not weights: resume training from it "
                                 "with --snapshot %s (or fine-tune from the weights: --weights %s)"
                                 % (w, w, model))
            raise UsageError("--weights %r is a solver state, not weights: give the snapshot's "
                             "weights, --weights %s" % (w, model))
        _check_file(w, "--weights file")


def train(args, stderr=None):
    """Caffe's ``train``: build the solver, resume or fine-tune, solve; return the solver."""
    if not args.solver:
        raise UsageError("train needs a solver definition: --solver solver.prototxt")
    if args.snapshot and args.weights:
        raise UsageError("give a snapshot to resume training (--snapshot) or weights to fine-tune "
                         "(--weights), not both")
    from solvers import data_parallel
    from solvers.solver import read_solver_param
    from solvers.working_dir import check_working_directory
    parallel = data_parallel.multiprocess()
    with data_parallel.all_or_none("reading the solver and the files it names"):
        param = read_solver_param(args.solver)
        check_working_directory(param, args.solver)   # run from the wrong folder: say so first
        if args.level:
            param.train_state.level = args.level
        if args.stages:
            param.train_state.stage.extend(args.stages)
        if args.iterations is not None:
            param.max_iter = args.iterations
        weights = _weights_list(args.weights)
        if data_parallel.root_solver():   # under MPI rank 0 reads them and sends the weights
            _check_weights(weights, "train")
            if args.snapshot:
                _check_file(args.snapshot, "--snapshot solver state")
        gpus = _gpus_for_solver(args, param)
        if parallel and args.backend == "caffe":
            raise UsageError("--backend caffe trains in one process; run it without mpirun")
        if parallel and gpus:   # one GPU per rank, picked by the rank's index on its host
            gpus = [gpus[data_parallel.local_rank() % len(gpus)]]
    if args.backend == "caffe":
        from solvers import caffe_backend
        return caffe_backend.train(args.solver, param, weights=weights, snapshot=args.snapshot,
                                   gpus=gpus, sigint_effect=args.sigint_effect)
    with data_parallel.all_or_none("choosing the device"):
        _use_devices(gpus)
    from solvers.sgd_solvers import get_solver
    signals = SignalHandler(args.sigint_effect, args.sighup_effect, args.sigterm_effect)
    if parallel:   # mpirun's ways with signals (Ctrl-C reaches the ranks as SIGTERM)
        data_parallel.adapt_signals(signals)
    with signals:
        if parallel:
            solver = data_parallel.get_solver(param, weights=weights or None)
            solver.signals = signals
        else:
            solver = get_solver(param, weights=weights or None)
        solver.action_request = signals.action
        bar = _attach_progress_bar(solver, stderr)
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
        log.info("Starting Optimization")
        try:
            solver.solve(args.snapshot, ignore_side_file=args.ignore_side_file)
        finally:
            if bar is not None:    # the lines after training scroll without a bar
                stderr.bar = None
                bar.clear()
        if signals.wants_snapshot and solver.last_snapshot_iter != solver.iter:
            solver.snapshot()     # what "snapshotting and stopping" promised, at any moment
    args.stopped_by = signals.stopped_by
    if not solver.requested_early_exit:   # stopped early: the solver said so, it is not done
        log.info("Optimization Done.")
    return solver


def _attach_progress_bar(solver, stream):
    """A progress bar on a terminal; None when stderr is a pipe or file."""
    if not isinstance(stream, _BarStream):
        return None
    bar = ProgressBar(stream.stream, solver.param.max_iter)
    stream.bar = bar
    solver.add_callback(lambda: None, lambda: bar.update(solver.iter + 1))
    return bar


def test(args):
    """Caffe's ``test``: score a model over --iterations batches; return {output: mean}."""
    if not args.model:
        raise UsageError("test needs a model definition to score: --model net.prototxt")
    weights = _weights_list(args.weights)
    if not weights:
        raise UsageError("test needs model weights to score: --weights model.caffemodel")
    _no_caffe_backend(args, "test")
    iterations = 50 if args.iterations is None else args.iterations
    if iterations < 1:
        raise UsageError("--iterations must be at least 1, got %d" % iterations)
    _check_weights(weights, "test")
    gpus = parse_gpus(args.gpu)
    _use_devices(gpus[:1] if gpus else [], single=True)
    import numpy as np
    from solvers.net import Net
    net = Net(args.model, phase="TEST", level=args.level, stages=args.stages)
    for w in weights:
        net.copy_from(w)
    log.info("Running for %d iterations.", iterations)
    sums, loss = {}, np.float32(0)     # float sums, as caffe test keeps them
    last = len(net.layers) - 1
    for i in range(iterations):
        loss += np.float32(net.forward_from_to(0, last))
        for name in net.outputs:
            values = np.array(net.blobs[name].data, dtype=np.float32).ravel()
            for v in values:
                log.info("Batch %d, %s = %g", i, name, v)
            sums[name] = sums[name] + values if name in sums else values
    log.info("Loss: %g", loss / np.float32(iterations))
    means = {}
    for name in net.outputs:
        mean = sums[name] / np.float32(iterations)
        weight = net.blob_loss_weights[name]
        for v in mean:
            extra = " (* %g = %g loss)" % (weight, np.float32(weight) * v) if weight else ""
            log.info("%s = %g%s", name, v, extra)
        means[name] = float(mean[0]) if mean.size == 1 else mean
    return means


def time_model(args):
    """Caffe's ``time``: per-layer forward/backward timings of --model; return the averages."""
    if not args.model:
        raise UsageError("time needs a model definition: --model net.prototxt")
    _no_caffe_backend(args, "time")
    iterations = 50 if args.iterations is None else args.iterations
    gpus = parse_gpus(args.gpu)
    _use_devices(gpus[:1] if gpus else [], single=True)
    from solvers.net import Net
    from solvers.timing import time_net
    net = Net(args.model, phase=args.phase or "TRAIN", level=args.level, stages=args.stages)
    for w in _weights_list(args.weights):
        net.copy_from(w)
    return time_net(net, iterations, report=log.info)


_DEVICE_FIELDS = (("Major revision number", "major"), ("Minor revision number", "minor"),
                  ("Name", "name"), ("Total global memory", "totalGlobalMem"),
                  ("Total shared memory per block", "sharedMemPerBlock"),
                  ("Total registers per block", "regsPerBlock"), ("Warp size", "warpSize"),
                  ("Maximum memory pitch", "memPitch"),
                  ("Maximum threads per block", "maxThreadsPerBlock"),
                  ("Maximum dimension of block", "maxThreadsDim"),
                  ("Maximum dimension of grid", "maxGridSize"), ("Clock rate", "clockRate"),
                  ("Total constant memory", "totalConstMem"),
                  ("Texture alignment", "textureAlignment"),
                  ("Concurrent copy and execution", "deviceOverlap"),
                  ("Number of multiprocessors", "multiProcessorCount"),
                  ("Kernel execution timeout", "kernelExecTimeoutEnabled"))


def device_query(args):
    """Caffe's ``device_query``: the CUDA properties of each --gpu device; return them as dicts."""
    log.info("Querying GPUs %s", args.gpu)
    gpus = parse_gpus(args.gpu)
    if not gpus:
        log.info("No device given: pass --gpu N (or N,M or all) to query GPUs; without it "
                 "this toolkit runs on the CPU")
        return []
    try:
        import cupy
    except ImportError:
        raise CaffeError("--gpu %s: CuPy is not installed, so no GPU can be queried; install a "
                         "cupy-cudaXXx wheel matching your CUDA" % args.gpu) from None
    found = []
    for device in gpus:
        try:
            props = cupy.cuda.runtime.getDeviceProperties(device)
        except Exception as e:   # CUDA's own errors: no such device, no driver
            raise CaffeError("--gpu %s: cannot query GPU %d: %s: %s"
                             % (args.gpu, device, type(e).__name__, e)) from None
        log.info("%-31s%d", "Device id:", device)
        for label, key in _DEVICE_FIELDS:
            value = props.get(key, "n/a")
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            if key in ("deviceOverlap", "kernelExecTimeoutEnabled") and value != "n/a":
                value = "Yes" if value else "No"
            log.info("%-31s%s", label + ":", value)
        found.append(dict(props, device_id=device))
    return found


def _no_caffe_backend(args, verb):
    if args.backend == "caffe":
        raise UsageError("--backend caffe runs train only; for %s use Caffe's own tool "
                         "(caffe %s --model ...)" % (verb, verb))


# -- main -----------------------------------------------------------------------------------

def main(argv=None, prog="solve.py"):
    """Run one command line; return the exit status (errors reported, not raised, unless --debug)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        build_parser(prog).print_help(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    debug = "--debug" in argv or "-debug" in argv
    from solvers import backend
    mode = backend.mode()
    stderr = sys.stderr
    stream = _BarStream(stderr) if _isatty(stderr) else stderr
    try:
        args = parse_args(argv, prog)
        if args.command == "train" and _join_mpi_job():
            return _run_parallel(args, stream, prog)
        with _logging_to(stream, args.log) as file_handler:
            try:
                return _run(args, stream)
            except CaffeError as e:
                if debug:
                    raise
                _report(e, prog, args.command, file_handler)
                return 2 if isinstance(e, UsageError) else 1
            except OSError as e:   # e.g. the disk filled up while snapshotting
                if debug:
                    raise
                _report(e, prog, args.command, file_handler)
                return 1
    except UsageError as e:
        if debug:
            raise
        _report(e, prog, None, None)
        return 2
    except CaffeError as e:    # e.g. the log file cannot be opened
        if debug:
            raise
        _report(e, prog, None, None)
        return 1
    except KeyboardInterrupt as e:
        if debug:
            raise
        signum = e.signum if isinstance(e, Aborted) else signal.SIGINT
        print("%s: aborted (%s); no snapshot was written for this iteration"
              % (prog, signal.Signals(signum).name), file=stderr)
        return 128 + signum
    finally:
        if mode == "CPU" and backend.mode() != "CPU":
            backend.set_mode_cpu()


def _join_mpi_job():
    """Started by mpirun as several processes: join the MPI job (solvers/data_parallel.py)."""
    from solvers import data_parallel
    if data_parallel.launched_size() <= 1:
        return False
    data_parallel.set_multiprocess()
    return data_parallel.solver_count() > 1


def _run_parallel(args, stream, prog):
    """``train`` as one rank of an MPI job: rank 0 logs (and writes --log); no rank may hang.

    An error every rank raised together (a failed pre-flight check, a NaN
    loss) is reported once by rank 0 and all exit with status 1; an error on
    one rank alone ends the whole job through MPI_Abort, naming the rank.
    """
    from solvers import data_parallel
    root = data_parallel.root_solver()
    try:
        with _logging_to(stream, args.log if root else None) as file_handler:
            data_parallel.quiet_other_ranks()
            try:
                return _run(args, stream)
            except (CaffeError, OSError) as e:
                if not getattr(e, "all_ranks", False):
                    raise
                if args.debug and root:
                    raise
                if root:
                    _report(e, prog, args.command, file_handler)
                data_parallel.communicator().Barrier()   # rank 0 has said why before anyone exits
                return 1
    except KeyboardInterrupt:
        data_parallel.abort(CaffeError("aborted (interrupt); no snapshot was written for this "
                                       "iteration"), sys.stderr)
    except BaseException as e:   # anything else on one rank: the others must not wait for it
        if args.debug:
            import traceback
            traceback.print_exc()
        data_parallel.abort(e, sys.stderr)
    return 1


def _run(args, stream):
    from solvers import threads
    if args.threads is not None:
        threads.set_num_threads(args.threads, where="--threads")
    n = threads.apply_default()
    log.info("BLAS threads: %s", n if n is not None else "as the environment sets them")
    if args.command == "train":
        train(args, stream)
        if getattr(args, "stopped_by", None) == signal.SIGTERM:
            return 128 + signal.SIGTERM    # stopped cleanly, but training did not finish
    elif args.command == "test":
        test(args)
    elif args.command == "device_query":
        device_query(args)
    else:
        time_model(args)
    return 0


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def error_text(error):
    """An error as one paragraph: a CaffeError's message, an OSError's reason and file
    ("no space left on device" when the disk is full), else the type and message."""
    if isinstance(error, CaffeError):
        return str(error)
    if isinstance(error, OSError):
        return os_error_text(error)
    module = type(error).__module__.split(".")[0]
    what = {"lmdb": "LMDB", "cv2": "OpenCV"}.get(module, type(error).__name__)
    return "%s: %s" % (what, " ".join(str(error).split()))


def run_tool(prog, work):
    """Run a command-line tool's ``work()``: exit status 0, or 1 with one line
    ``PROG: error: ...`` on stderr and no traceback, as solve.py reports errors
    (130 when interrupted)."""
    import cv2
    import lmdb
    try:
        work()
    except KeyboardInterrupt:
        print("%s: interrupted" % prog, file=sys.stderr)
        return 130
    except (CaffeError, OSError, MemoryError, lmdb.Error, cv2.error) as e:
        print("%s: error: %s" % (prog, error_text(e)), file=sys.stderr)
        return 1
    return 0


def _report(error, prog, command, file_handler):
    """One paragraph on stderr (and an E line in the log file), no traceback."""
    text = error_text(error)
    where = "%s %s" % (prog, command) if command else prog
    print("%s: error: %s" % (where, text), file=sys.stderr)
    if file_handler is not None:
        record = logging.LogRecord("caffe", logging.ERROR, __file__, 0, "%s", (text,), None)
        file_handler.handle(record)
