"""Solver: Caffe's training loop around one train net and its test nets.

``Solver(param_or_path)`` takes a SolverParameter, a solver prototxt path or
prototxt text (legacy ``solver_type`` upgraded) and returns the solver its
``type`` names (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam; see
``sgd_solvers.py`` for the update rules). Construction is Caffe's
Solver::Init: seed the RNG (``random_seed``), build the train net and the test
nets with their NetStates, and check up front what Caffe would only find
mid-run (snapshot prefix writable, lr policy sane).

The loop is Caffe's Solver::Step: zero the parameter diffs, test every
``test_interval``, run ``iter_size`` forward/backward passes and average
their loss, log every ``display`` iterations, apply the update, count the
iteration, snapshot every ``snapshot`` iterations or on request. The API is
pycaffe's (``net``, ``test_nets``, ``iter``, ``param``, ``step``, ``solve``,
``snapshot``, ``restore``, ``apply_update``, ``add_callback``) plus
``test(net_id)``, ``learning_rate``, ``smoothed_loss`` and ``losses``.

Log lines are Caffe's words, through the "caffe" logger (see ``log.py``), so
Caffe's log parsers read them.
"""
import logging
import math
import os
import time
from collections import OrderedDict

import numpy as np
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import CaffeError, SideFileError, SolverError
from netspec.io import file_digest, read_net, read_solver
from netspec.upgrade import upgrade_solver
from solvers import rng, snapshot as snap
from solvers.backend import to_numpy
from solvers.log import logger as log
from solvers.lr_policy import check_policy
from solvers.working_dir import check_solver_file

ACTIONS = ("none", "snapshot", "stop")


def read_solver_param(source):
    """A SolverParameter (legacy forms upgraded) from a message, a prototxt path or prototxt text."""
    if isinstance(source, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        upgrade_solver(param)
        return param
    if isinstance(source, (str, os.PathLike)):
        return read_solver(os.fspath(source))
    raise SolverError("a solver needs a SolverParameter, a solver prototxt path or prototxt text, "
                      "got %s" % type(source).__name__)


class _Callback:
    """pycaffe's callback pair: ``on_start`` before forward/backward, ``on_gradients_ready`` after."""

    def __init__(self, on_start, on_gradients_ready):
        self.on_start = on_start or (lambda: None)
        self.on_gradients_ready = on_gradients_ready or (lambda: None)


class Solver:
    """Base of Caffe's solvers: nets, the step loop, testing, snapshots, restore.

    Subclasses (``sgd_solvers.py``) define ``pre_solve`` (history),
    ``apply_update``, ``history_arrays`` and ``restore_history``.
    """

    def __new__(cls, param_or_path=None, *args, **kwargs):
        if cls is Solver:   # Solver(...) builds the solver its ``type`` names
            from solvers.sgd_solvers import solver_class
            cls = solver_class(read_solver_param(param_or_path).type)
        return super().__new__(cls)

    def __init__(self, param_or_path, weights=None):
        param = read_solver_param(param_or_path)
        check_solver_file(param_or_path, param)   # run from the wrong folder: say so first
        if weights:
            weights = [weights] if isinstance(weights, (str, os.PathLike)) else weights
            param.weights.extend(os.fspath(w) for w in weights)
        if log.isEnabledFor(logging.INFO):
            log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(param))
        self.param = param
        self.iter = 0
        self.current_step = 0
        self.callbacks = []
        self.action_request = None      # callable -> "none" | "snapshot" | "stop" (the CLI's signals)
        self.requested_early_exit = False
        self.last_snapshot_iter = None  # the iteration the last snapshot written or restored holds
        self.learning_rate = 0.0
        self.smoothed_loss = 0.0
        self.losses = []                # raw loss of every iteration run by this solver
        self.loss_iters = []            # ... and the iteration each belongs to
        self._loss_window = []          # Caffe's losses_: the last average_loss losses
        self.mean_scores = []
        self.tested_at = []
        self.check_param()
        if param.snapshot:
            self.check_snapshot_prefix()
        if param.random_seed >= 0:
            rng.set_random_seed(param.random_seed)
        self._init_train_net()
        self._init_test_nets()
        log.info("Solver scaffolding done.")
        self.pre_solve()

    # -- checks before iteration 0 -----------------------------------------------
    def check_param(self):
        p = self.param
        if p.average_loss < 1:
            raise SolverError("average_loss must be at least 1 (got %d)" % p.average_loss)
        if p.iter_size < 1:
            raise SolverError("iter_size must be at least 1 (got %d)" % p.iter_size)
        check_policy(p)
        if p.snapshot < 0 or p.display < 0 or p.test_interval < 0:
            raise SolverError("snapshot, display and test_interval must not be negative")

    def check_snapshot_prefix(self):
        """The prefix's directory must exist and take files (Caffe's CheckSnapshotWritePermissions)."""
        if self.param.snapshot and not self.param.HasField("snapshot_prefix"):
            raise SolverError("snapshot: %d is set but snapshot_prefix is not; add snapshot_prefix: "
                              "\"path/to/name\" to the solver" % self.param.snapshot)
        snap.check_prefix_writable(self.param.snapshot_prefix)
        snap.remove_stale_temporaries(self.param.snapshot_prefix)

    # -- nets (Caffe's InitTrainNet / InitTestNets) --------------------------------
    def _init_train_net(self):
        from solvers.net import Net
        p = self.param
        sources = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(sources) != 1:
            raise SolverError("the solver must name exactly one train net with one of net, net_param, "
                              "train_net, train_net_param; it gives %s"
                              % (", ".join(sources) if sources else "none"))
        source = sources[0]
        if source.endswith("_param"):
            log.info("Creating training net specified in %s.", source)
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(getattr(p, source))
        else:
            log.info("Creating training net from %s file: %s", source, getattr(p, source))
            net_param = read_net(getattr(p, source))
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        self.train_net_param = net_param
        self.net = Net(net_param)
        self._load_weights(self.net)

    def _init_test_nets(self):
        from solvers.net import Net
        p = self.param
        generic = [f for f in ("net_param", "net") if p.HasField(f)]
        if len(generic) > 1:
            raise SolverError("the solver gives both net_param and net; keep one")
        num_specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < num_specific:
            raise SolverError("test_iter must be given for each test net: %d test nets, %d test_iter"
                              % (num_specific, len(p.test_iter)))
        if not generic and len(p.test_iter) != num_specific:
            raise SolverError("test_iter must be given once per test net: %d test nets (test_net and "
                              "test_net_param), %d test_iter" % (num_specific, len(p.test_iter)))
        count = len(p.test_iter)
        if len(p.test_state) and len(p.test_state) != count:
            raise SolverError("test_state must be given once per test net or not at all: %d test "
                              "nets, %d test_state" % (count, len(p.test_state)))
        if count and p.test_interval <= 0:
            raise SolverError("the solver has %d test net(s) (test_iter) but test_interval is %d; set "
                              "test_interval > 0" % (count, p.test_interval))
        sources, params = [], []
        for tp in p.test_net_param:
            sources.append("test_net_param")
            params.append(caffe_pb2.NetParameter())
            params[-1].CopyFrom(tp)
        for path in p.test_net:
            sources.append("test_net file: " + path)
            params.append(read_net(path))
        for _ in range(count - num_specific):
            if p.HasField("net_param"):
                sources.append("net_param")
                params.append(caffe_pb2.NetParameter())
                params[-1].CopyFrom(p.net_param)
            else:
                sources.append("net file: " + p.net)
                params.append(read_net(p.net))
        self.test_nets, self.test_net_params = [], []
        for i, (source, net_param) in enumerate(zip(sources, params)):
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, source)
            net = Net(net_param)
            net.debug_info = p.debug_info
            self._load_weights(net)
            self.test_nets.append(net)
            self.test_net_params.append(net_param)
        self.mean_scores = [[] for _ in self.test_nets]
        self.tested_at = [None for _ in self.test_nets]   # the iteration of each net's last test

    def _load_weights(self, net):
        """Fine-tuning: every ``weights`` entry (comma-separated lists too) copied in by layer name."""
        for entry in self.param.weights:
            for path in (s.strip() for s in entry.split(",")):
                if path:
                    log.info("Finetuning from %s", path)
                    net.copy_from(path)

    # pycaffe / Caffe names
    @property
    def net_param(self):
        return self.train_net_param

    @property
    def train_net(self):
        return self.net

    @property
    def test_net(self):
        return self.test_nets[0] if self.test_nets else None

    @property
    def test_net_param(self):
        return self.test_net_params[0] if self.test_net_params else None

    @property
    def train_state(self):
        return self.train_net_param.state

    @property
    def test_state(self):
        return [tp.state for tp in self.test_net_params]

    # -- what subclasses provide -------------------------------------------------
    def pre_solve(self):
        """Allocate the solver's history (Caffe's PreSolve)."""

    def apply_update(self):
        raise NotImplementedError("%s must implement apply_update" % type(self).__name__)

    def history_arrays(self):
        return []

    def restore_history(self, arrays, where):
        if arrays:
            raise SolverError("%s holds history blobs but this solver keeps none" % where)

    def share_gradients(self, loss):
        """Where data-parallel solvers average the diffs and the loss over their processes
        (solvers/data_parallel.py); one process has nothing to share."""
        return loss

    # -- callbacks and requests ------------------------------------------------------
    def add_callback(self, on_start, on_gradients_ready=None):
        """pycaffe's add_callback: two callables, or one object with both methods."""
        if on_gradients_ready is None and hasattr(on_start, "on_gradients_ready"):
            self.callbacks.append(on_start)
        else:
            self.callbacks.append(_Callback(on_start, on_gradients_ready))

    def requested_action(self):
        """Caffe's GetRequestedAction: ask ``action_request`` (the CLI's signal handling)."""
        if self.action_request is None:
            return "none"
        action = self.action_request()
        action = "none" if action is None else str(action).lower()
        if action not in ACTIONS:
            raise SolverError("action_request returned %r; it must return one of %s"
                              % (action, ", ".join(ACTIONS)))
        return action

    # -- the loop (Caffe's Step and Solve) --------------------------------------------
    def step(self, iters):
        """Run ``iters`` iterations (fewer if a stop is requested)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self._loss_window = []
        self.smoothed_loss = 0.0
        timer = time.perf_counter()
        iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and \
                    (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            for cb in self.callbacks:
                cb.on_start()
            display = bool(p.display) and self.iter % p.display == 0
            self.net.debug_info = display and p.debug_info
            loss = np.float32(0)
            for _ in range(p.iter_size):
                loss += np.float32(self.net.forward_backward())
            loss /= np.float32(p.iter_size)
            loss = self.share_gradients(loss)
            if not math.isfinite(float(loss)):
                self._stop_on_bad_loss(float(loss))
            self.losses.append(float(loss))
            self.loss_iters.append(self.iter)
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iterations_last) / (lapse if lapse else 1.0)
                log.info("Iteration %d (%g iter/s, %gs/%d iters), loss = %g", self.iter, per_s,
                         lapse, p.display, self.smoothed_loss)
                timer = time.perf_counter()
                iterations_last = self.iter
                self._log_outputs(self.net, "Train", None)
            for cb in self.callbacks:
                cb.on_gradients_ready()
            self.apply_update()
            self.iter += 1   # always the number of updates applied
            request = self.requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == "snapshot":
                self.snapshot()
            if request == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume_file=None, ignore_side_file=False):
        """Train to ``max_iter`` (resuming from a .solverstate when given), as Caffe's Solve."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if p.snapshot or p.snapshot_after_train:
            self.check_snapshot_prefix()
        if resume_file is not None:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file, ignore_side_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = np.float32(self.net.forward_from_to(0, len(self.net.layers) - 1))
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        """Caffe's UpdateSmoothedLoss: the mean of the last ``average_loss`` losses, kept incrementally."""
        loss = np.float32(loss)
        smoothed = np.float32(self.smoothed_loss)
        window = self._loss_window
        if len(window) < average_loss:
            window.append(loss)
            size = len(window)
            smoothed = (smoothed * np.float32(size - 1) + loss) / np.float32(size)
        else:
            idx = (self.iter - start_iter) % average_loss
            smoothed += (loss - window[idx]) / np.float32(average_loss)
            window[idx] = loss
        self.smoothed_loss = float(smoothed)

    def _log_outputs(self, net, kind, scores):
        """'    Train net output #k: name = v (* w = w*v loss)', one line per output element."""
        index = 0
        for name in net.outputs:
            weight = net.blob_loss_weights[name]
            values = np.asarray(to_numpy(net.blobs[name].data) if scores is None else scores[name]).ravel()
            for v in values:
                extra = " (* %g = %g loss)" % (weight, np.float32(weight) * v) if weight else ""
                log.info("    %s net output #%d: %s = %g%s", kind, index, name, v, extra)
                index += 1

    def _stop_on_bad_loss(self, loss):
        """A NaN/Inf loss ends training: save the weights that produced it and say where."""
        where = "iteration %d" % self.iter
        try:
            files = self.snapshot()
            saved = "the weights that produced it are saved in %s" % files[0]
        except CaffeError as e:
            saved = "saving a snapshot failed too (%s)" % e
        raise SolverError("training stopped: the loss is %s at %s; %s. Lower base_lr, set "
                          "clip_gradients, or check the data and labels"
                          % ("NaN" if math.isnan(loss) else "infinite", where, saved))

    # -- testing ---------------------------------------------------------------------------
    def test_all(self):
        for net_id in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(net_id)

    def test(self, net_id=0):
        """Run test net ``net_id`` for its test_iter batches; return {output: mean} (None if stopped).

        Scalar outputs give floats, others float32 arrays of per-element means
        (Caffe averages every element of every output blob).
        """
        p = self.param
        if not 0 <= net_id < len(self.test_nets):
            raise SolverError("test net #%d does not exist; the solver has %d test net(s)"
                              % (net_id, len(self.test_nets)))
        log.info("Iteration %d, Testing net (#%d)", self.iter, net_id)
        test_net = self.test_nets[net_id]
        test_net.share_with(self.net)
        n_iter = p.test_iter[net_id]
        sums = OrderedDict()
        loss = 0.0
        for i in range(n_iter):
            request = self.requested_action()
            while request != "none":
                if request == "snapshot":
                    self.snapshot()
                elif request == "stop":
                    self.requested_early_exit = True
                request = self.requested_action()
            if self.requested_early_exit:
                break
            iter_loss = test_net.forward_from_to(0, len(test_net.layers) - 1)
            if p.test_compute_loss:
                loss += iter_loss
            for name in test_net.outputs:
                values = to_numpy(test_net.blobs[name].data).astype(np.float32).ravel()
                if name in sums:
                    sums[name] += values
                else:
                    sums[name] = values
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return None
        if p.test_compute_loss:
            log.info("Test loss: %g", loss / n_iter)
        means = OrderedDict((name, s / np.float32(n_iter)) for name, s in sums.items())
        self.mean_scores[net_id] = [float(v) for m in means.values() for v in m]
        self.tested_at[net_id] = self.iter
        self._log_outputs(test_net, "Test", means)
        return OrderedDict((name, float(m[0]) if m.size == 1 else m.reshape(test_net.blobs[name].shape))
                           for name, m in means.items())

    # -- snapshots --------------------------------------------------------------------------
    def snapshot_filename(self, extension):
        return snap.snapshot_filename(self.param.snapshot_prefix, self.iter, extension)

    def snapshot(self):
        """Write the model and the solver state for the current iteration; return both paths.

        The model goes first, then the side file, then the state (see
        snapshot.py): a run killed part way leaves the previous snapshot the
        newest complete one.
        """
        p = self.param
        fmt = p.snapshot_format
        model = self.snapshot_filename(snap.model_extension(fmt))
        log.info("Snapshotting to %s file %s", "HDF5" if fmt == snap.HDF5 else "binary proto", model)
        snap.write_model(self.net, model, fmt, p.snapshot_diff)
        state = self.snapshot_filename(snap.state_extension(fmt))
        log.info("Snapshotting solver state to %s file %s",
                 "HDF5" if fmt == snap.HDF5 else "binary proto", state)
        snap.write_state(state, self.iter, model, self.history_arrays(), self.current_step, fmt,
                         side=self._side_state())
        self.last_snapshot_iter = self.iter
        return model, state

    def _side_state(self):
        """What Caffe forgets: data layers' positions and the RNG state."""
        def layer_states(net):
            out = {}
            for name, layer in zip(net.layer_names, net.layers):
                state = layer.get_state()
                if state is not None:
                    out[name] = state
            return out
        return {"iter": self.iter, "rng": rng.get_state(), "train_net": layer_states(self.net),
                "test_nets": [layer_states(n) for n in self.test_nets]}

    def restore(self, state_file, ignore_side_file=False):
        """Continue from a .solverstate (ours or Caffe's) and the model it names, as Caffe's Restore.

        Its side file, when there is one, puts the data layers and the random
        generator back where they were. A damaged side file is a
        SideFileError, unless ``ignore_side_file``: then it is ignored with a
        warning and training resumes as from a Caffe snapshot.
        """
        state_file = os.fspath(state_file)
        state = snap.read_state(state_file)
        side = self._read_side_file(state_file, ignore_side_file)
        if state["learned_net"]:
            self.net.copy_from(snap.resolve_learned_net(state["learned_net"], state_file))
        self.restore_history(state["history"], state_file)
        self.iter = int(state["iter"])
        self.current_step = int(state["current_step"])
        self.last_snapshot_iter = self.iter
        path = snap.side_file_path(state_file)
        if side is None:
            return
        digest = side.get("state_sha256")
        if side["iter"] != self.iter or (digest is not None and digest != file_digest(state_file, "sha256")):
            log.warning("Ignoring side file %s: it belongs to another solver state (iteration %d; "
                        "left by a run stopped while snapshotting, or by another run); %s",
                        path, side["iter"], _RESUME_AS_CAFFE)
            return
        try:
            self._restore_side_state(side, state_file)
        except CaffeError as e:
            if not ignore_side_file:
                raise
            log.warning("Ignoring side file %s as asked: %s; %s", path, e, _RESUME_AS_CAFFE)

    def _read_side_file(self, state_file, ignore):
        try:
            side = snap.read_side_file(state_file)
        except SideFileError as e:
            if not ignore:
                raise SideFileError("%s. Delete it, or resume without it (--ignore-side-file; "
                                    "restore(..., ignore_side_file=True)): %s" % (e, _RESUME_AS_CAFFE)) from None
            log.warning("Ignoring a bad side file as asked: %s; %s", e, _RESUME_AS_CAFFE)
            return None
        if side is None:
            log.warning("Solver state %s has no side file (%s): %s. That is expected for a snapshot "
                        "made by Caffe; for one of ours, the side file was lost", state_file,
                        os.path.basename(snap.side_file_path(state_file)), _RESUME_AS_CAFFE)
        return side

    def _restore_side_state(self, side, state_file):
        """Put the RNG and every layer's state back; all or nothing (a failure restores what was)."""
        path = snap.side_file_path(state_file)
        nets = [(self.net, side["train_net"], "train net")]
        nets += [(net, states, "test net #%d" % i)
                 for i, (net, states) in enumerate(zip(self.test_nets, side["test_nets"]))]
        for net, states, which in nets:
            for name in states:
                if not net.has_layer(name):
                    raise SideFileError("side file %r keeps the state of layer %r, which the %s does not "
                                        "have (was the net changed?)" % (path, name, which))
        saved_rng = rng.get_state()
        saved = [(net.layer_by_name(name), net.layer_by_name(name).get_state())
                 for net, states, _ in nets for name in states]
        try:
            if side["rng"] is not None:
                _set_state(rng.set_state, side["rng"], path, "the random generator")
            for net, states, which in nets:
                for name, layer_state in states.items():
                    _set_state(net.layer_by_name(name).set_state, layer_state, path,
                               "layer %r (%s)" % (name, which))
        except SideFileError:
            rng.set_state(saved_rng)
            for layer, layer_state in saved:
                layer.set_state(layer_state)
            raise


def _set_state(setter, state, path, what):
    """A layer's (or the generator's) set_state; its failure on a bad value is a SideFileError naming it."""
    try:
        setter(state)
    except Exception as e:   # the layer's own check, or whatever its code hit on a bad value
        raise SideFileError("side file %r: the saved state of %s does not fit it: %s%s"
                            % (path, what, "" if isinstance(e, CaffeError) else type(e).__name__ + ": ",
                               e)) from None


_RESUME_AS_CAFFE = ("resuming as Caffe does: the data layers start again from their first record and "
                    "the random generator is not restored, so the batches differ from an "
                    "uninterrupted run")
