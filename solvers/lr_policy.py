"""Caffe's learning-rate policies (SGDSolver::GetLearningRate).

Each policy is a formula of the iteration number and the solver's fields:

    fixed      base_lr
    step       base_lr * gamma ^ floor(iter / stepsize)
    exp        base_lr * gamma ^ iter
    inv        base_lr * (1 + gamma * iter) ^ (-power)
    multistep  base_lr * gamma ^ (number of stepvalue entries <= iter)
    poly       base_lr * (1 - iter / max_iter) ^ power
    sigmoid    base_lr / (1 + exp(-gamma * (iter - stepsize)))
"""
import math

from netspec.errors import SolverError
from netspec.solver_spec import LR_POLICIES as POLICIES


def multistep_index(param, iteration):
    """Caffe's ``current_step_``: how many step values the iteration has passed."""
    return sum(1 for v in param.stepvalue if iteration >= v)


def learning_rate(param, iteration):
    """The rate a Caffe solver with SolverParameter ``param`` uses at ``iteration``."""
    policy = param.lr_policy
    base, gamma, power = param.base_lr, param.gamma, param.power
    if policy == "fixed":
        return base
    if policy == "step":
        if param.stepsize <= 0:
            raise SolverError("lr_policy 'step' needs stepsize > 0 (got %d)" % param.stepsize)
        return base * math.pow(gamma, iteration // param.stepsize)
    if policy == "exp":
        return base * math.pow(gamma, iteration)
    if policy == "inv":
        return base * math.pow(1.0 + gamma * iteration, -power)
    if policy == "multistep":
        return base * math.pow(gamma, multistep_index(param, iteration))
    if policy == "poly":
        if param.max_iter <= 0:
            raise SolverError("lr_policy 'poly' needs max_iter > 0")
        return base * math.pow(1.0 - float(iteration) / param.max_iter, power)
    if policy == "sigmoid":
        return base * (1.0 / (1.0 + math.exp(-gamma * (float(iteration) - param.stepsize))))
    raise SolverError("unknown lr_policy %r; Caffe knows %s" % (policy, ", ".join(POLICIES)))


def check_policy(param):
    """Validate the policy's fields before training starts (Caffe finds out mid-run)."""
    if param.lr_policy not in POLICIES:
        import difflib
        near = difflib.get_close_matches(param.lr_policy, POLICIES, n=1)
        hint = " (did you mean %r?)" % near[0] if near else ""
        raise SolverError("unknown lr_policy %r%s; Caffe knows %s"
                          % (param.lr_policy, hint, ", ".join(POLICIES)))
    if param.lr_policy == "step" and param.stepsize <= 0:
        raise SolverError("lr_policy 'step' needs stepsize > 0")
    if param.lr_policy == "poly" and param.max_iter <= 0:
        raise SolverError("lr_policy 'poly' needs max_iter > 0 (got %d)" % param.max_iter)
    if param.lr_policy == "sigmoid" and param.stepsize <= 0:
        raise SolverError("lr_policy 'sigmoid' needs stepsize > 0 (got %d)" % param.stepsize)
    if param.lr_policy == "multistep" and list(param.stepvalue) != sorted(param.stepvalue):
        raise SolverError("lr_policy 'multistep' needs increasing stepvalue entries, got %s"
                          % list(param.stepvalue))
