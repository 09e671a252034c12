"""Caffe's gradient-descent solvers: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

Every update follows Caffe's SGDSolver::ApplyUpdate, in this order:

1. learning rate of the iteration (``lr_policy``), logged when displaying;
2. ClipGradients: if ``clip_gradients`` >= 0 and the global L2 norm of all
   learnable diffs exceeds it, scale every diff by clip / norm;
3. per learnable parameter: Normalize (diff /= ``iter_size``), Regularize
   (diff += local_decay * data for L2, * sign(data) for L1, with
   local_decay = ``weight_decay`` * ``decay_mult``) and ComputeUpdateValue
   (the solver's rule, with local_rate = rate * ``lr_mult``), which leaves
   the step in the diff;
4. ``net.update()``: data -= diff.

The rules, h being the history (Caffe's ``history_``):

* SGD:      h = local_rate * g + momentum * h;  step = h
* Nesterov: h' = local_rate * g + momentum * h;  step = (1 + momentum) * h' - momentum * h
* AdaGrad:  h += g^2;  step = local_rate * g / (sqrt(h) + delta)
* RMSProp:  h = rms_decay * h + (1 - rms_decay) * g^2;  step = local_rate * g / (sqrt(h) + delta)
* AdaDelta: h = m * h + (1 - m) * g^2;  s = g * sqrt((u + delta) / (h + delta));
            u = m * u + (1 - m) * s^2;  step = local_rate * s   (u: second history set)
* Adam:     m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2;
            step = local_rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta), t = iter + 1

All arithmetic is float32, as Caffe's ``Dtype = float``. AdaDelta and Adam keep
two history sets; a snapshot lists the first set for every parameter, then
the second, exactly as Caffe's ``history_`` vector.
"""
import difflib
import math

import numpy as np

from netspec.errors import SolverError
from solvers.backend import get_array_module
from solvers.log import logger as log
from solvers.lr_policy import learning_rate
from solvers.solver import Solver, read_solver_param

f32 = np.float32


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum (Caffe's "SGD")."""

    history_sets = 1   # history blobs per learnable parameter

    # -- set-up ---------------------------------------------------------------
    def check_param(self):
        super().check_param()
        p = self.param
        if p.weight_decay and p.regularization_type not in ("L1", "L2"):
            raise SolverError("unknown regularization_type %r: Caffe knows \"L2\" and \"L1\""
                              % p.regularization_type)

    def pre_solve(self):
        """Zeroed history, one set (or two) per learnable parameter, in learnable-param order."""
        params = self.net.learnable_params
        self.history = [p.xp.zeros(p.shape, dtype=p.xp.float32)
                        for _ in range(self.history_sets) for p in params]

    # -- ApplyUpdate -----------------------------------------------------------
    def get_learning_rate(self):
        """The rate of this iteration; keeps Caffe's ``current_step`` as SGDSolver does."""
        p = self.param
        if p.lr_policy == "step":
            self.current_step = self.iter // p.stepsize
        elif p.lr_policy == "multistep":
            if self.current_step < len(p.stepvalue) and self.iter >= p.stepvalue[self.current_step]:
                self.current_step += 1
                log.info("MultiStep Status: Iteration %d, step = %d", self.iter, self.current_step)
        return f32(learning_rate(p, self.iter))

    def apply_update(self):
        """One parameter update from the diffs the net holds (Caffe's ApplyUpdate)."""
        rate = self.get_learning_rate()
        self.learning_rate = float(rate)
        if self.param.display and self.iter % self.param.display == 0:
            log.info("Iteration %d, lr = %g", self.iter, rate)
        self.clip_gradients()
        for i in range(len(self.net.learnable_params)):
            self.normalize(i)
            self.regularize(i)
            self.compute_update_value(i, rate)
        self.net.update()

    def clip_gradients(self):
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = f32(0)
        for p in params:
            sumsq += f32(float((p.diff * p.diff).sum()))
        norm = f32(math.sqrt(float(sumsq)))
        if norm > clip:
            scale = f32(clip / norm)
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                     norm, clip, scale)
            for p in params:
                p.diff *= scale

    def normalize(self, i):
        if self.param.iter_size == 1:
            return
        self.net.learnable_params[i].diff *= f32(1.0) / f32(self.param.iter_size)

    def regularize(self, i):
        p = self.net.learnable_params[i]
        local_decay = f32(self.param.weight_decay) * f32(self.net.params_weight_decay[i])
        if not local_decay:
            return
        if self.param.regularization_type == "L2":
            p.diff += local_decay * p.data
        else:  # "L1" (check_param refused anything else)
            p.diff += local_decay * p.xp.sign(p.data)

    def local_rate(self, i, rate):
        return f32(rate) * f32(self.net.params_lr[i])

    def compute_update_value(self, i, rate):
        p, h = self.net.learnable_params[i], self.history[i]
        h *= f32(self.param.momentum)
        h += self.local_rate(i, rate) * p.diff
        p.diff[...] = h

    # -- snapshots -------------------------------------------------------------
    def history_arrays(self):
        return list(self.history)

    def restore_history(self, arrays, where):
        if len(arrays) != len(self.history):
            raise SolverError("%s holds %d history blobs but this %s solver on this net needs %d "
                              "(%d per learnable parameter); was it written by another solver type "
                              "or for another net?" % (where, len(arrays), self.param.type,
                                                       len(self.history), self.history_sets))
        for i, (h, a) in enumerate(zip(self.history, arrays)):
            if a.size != h.size:
                raise SolverError("%s history blob %d has shape %s but the parameter has shape %s"
                                  % (where, i, tuple(a.shape), tuple(h.shape)))
            h[...] = get_array_module(h).asarray(a.reshape(h.shape))


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient (Caffe's "Nesterov")."""

    def compute_update_value(self, i, rate):
        p, h = self.net.learnable_params[i], self.history[i]
        momentum = f32(self.param.momentum)
        previous = h.copy()
        h *= momentum
        h += self.local_rate(i, rate) * p.diff
        p.diff[...] = (f32(1) + momentum) * h - momentum * previous


class AdaGradSolver(SGDSolver):
    """Per-coordinate rates from the summed squared gradients (Caffe's "AdaGrad")."""

    def check_param(self):
        super().check_param()
        if self.param.momentum != 0:
            raise SolverError("AdaGrad takes no momentum (got momentum: %g); remove it"
                              % self.param.momentum)

    def compute_update_value(self, i, rate):
        p, h = self.net.learnable_params[i], self.history[i]
        xp = p.xp
        h += p.diff * p.diff
        p.diff[...] = self.local_rate(i, rate) * (p.diff / (xp.sqrt(h) + f32(self.param.delta)))


class RMSPropSolver(SGDSolver):
    """Rates from a running mean of squared gradients (Caffe's "RMSProp")."""

    def check_param(self):
        super().check_param()
        p = self.param
        if p.momentum != 0:
            raise SolverError("RMSProp takes no momentum (got momentum: %g); remove it" % p.momentum)
        if not 0 <= p.rms_decay < 1:
            raise SolverError("RMSProp needs 0 <= rms_decay < 1 (got %g)" % p.rms_decay)

    def compute_update_value(self, i, rate):
        p, h = self.net.learnable_params[i], self.history[i]
        xp = p.xp
        decay = f32(self.param.rms_decay)
        h[...] = (f32(1) - decay) * (p.diff * p.diff) + decay * h
        p.diff[...] = self.local_rate(i, rate) * (p.diff / (xp.sqrt(h) + f32(self.param.delta)))


class AdaDeltaSolver(SGDSolver):
    """Zeiler's AdaDelta (Caffe's "AdaDelta"): second history set holds squared updates."""

    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        p, h, u = self.net.learnable_params[i], self.history[i], self.history[i + n]
        xp = p.xp
        momentum, delta = f32(self.param.momentum), f32(self.param.delta)
        h[...] = (f32(1) - momentum) * (p.diff * p.diff) + momentum * h
        p.diff *= xp.sqrt((u + delta) / (h + delta))
        u[...] = (f32(1) - momentum) * (p.diff * p.diff) + momentum * u
        p.diff *= self.local_rate(i, rate)


class AdamSolver(SGDSolver):
    """Kingma & Ba's Adam (Caffe's "Adam"): history sets m (first moment) and v (second)."""

    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        p, m, v = self.net.learnable_params[i], self.history[i], self.history[i + n]
        xp = p.xp
        beta1, beta2 = f32(self.param.momentum), f32(self.param.momentum2)
        t = self.iter + 1
        correction = f32(math.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
        m[...] = (f32(1) - beta1) * p.diff + beta1 * m
        v[...] = (f32(1) - beta2) * (p.diff * p.diff) + beta2 * v
        p.diff[...] = (self.local_rate(i, rate) * correction) * (m / (xp.sqrt(v) + f32(self.param.delta)))


SOLVER_REGISTRY = {
    "SGD": SGDSolver,
    "Nesterov": NesterovSolver,
    "AdaGrad": AdaGradSolver,
    "RMSProp": RMSPropSolver,
    "AdaDelta": AdaDeltaSolver,
    "Adam": AdamSolver,
}


def solver_class(type_name):
    """The class for a solver ``type`` string (Caffe's SolverRegistry)."""
    cls = SOLVER_REGISTRY.get(type_name)
    if cls is None:
        near = difflib.get_close_matches(type_name, list(SOLVER_REGISTRY), n=1, cutoff=0.5)
        if not near:
            near = [k for k in SOLVER_REGISTRY if k.lower() == str(type_name).lower()]
        hint = " (did you mean %r?)" % near[0] if near else ""
        raise SolverError("unknown solver type %r%s; known types: %s"
                          % (type_name, hint, ", ".join(SOLVER_REGISTRY)))
    return cls


def get_solver(param_or_path, weights=None):
    """pycaffe's ``caffe.get_solver``: the solver its ``type`` (or legacy ``solver_type``) names."""
    param = read_solver_param(param_or_path)
    return solver_class(param.type)(param, weights=weights)

