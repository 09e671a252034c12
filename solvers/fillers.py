"""Fillers: how a parameter blob gets its initial values (Caffe's filler.hpp).

``fill(blob, filler_param)`` writes float32 values into ``blob.data`` as the
FillerParameter asks. Random numbers come from the toolkit's one generator
(``solvers.rng.get_rng``), so ``set_random_seed`` makes initialisation
repeatable. Values are drawn on the host with NumPy and copied to the blob's
array module (fillers run once, at set-up).
"""
import math

import numpy as np

from netspec.errors import LayerError
from solvers.rng import get_rng


def _legacy_dim(shape, index):
    """Caffe's num()/channels(): a missing axis counts as 1."""
    return shape[index] if index < len(shape) else 1


def _fans(shape, count):
    """fan_in = count / num, fan_out = count / channels (as Caffe computes them)."""
    return count // _legacy_dim(shape, 0), count // _legacy_dim(shape, 1)


def _variance_n(param, shape, count):
    """The n in Xavier's sqrt(3/n) and MSRA's sqrt(2/n), chosen by variance_norm."""
    from netspec import caffe_pb2
    fan_in, fan_out = _fans(shape, count)
    norm = param.variance_norm
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _no_sparse(param, kind):
    if param.sparse != -1:
        raise LayerError("filler %r does not support sparse (got sparse: %d); only 'gaussian' does"
                         % (kind, param.sparse))


def _constant(param, shape, count, rng):
    _no_sparse(param, "constant")
    return np.full(shape, param.value, dtype=np.float32)


def _uniform(param, shape, count, rng):
    _no_sparse(param, "uniform")
    if param.min > param.max:
        raise LayerError("uniform filler: min (%g) is larger than max (%g)" % (param.min, param.max))
    return rng.uniform(param.min, param.max, size=shape)


def _gaussian(param, shape, count, rng):
    if param.std < 0:
        raise LayerError("gaussian filler: std must not be negative, got %g" % param.std)
    values = rng.normal(param.mean, param.std, size=shape)
    if param.sparse < -1:
        raise LayerError("gaussian filler: sparse must be >= -1, got %d" % param.sparse)
    if param.sparse >= 0:
        # 'sparse' is the mean number of non-zero inputs per output (shape[0] outputs).
        if len(shape) < 1:
            raise LayerError("gaussian filler with sparse needs a blob of at least 1 axis")
        p = float(param.sparse) / float(shape[0])
        values = values * (rng.random(size=shape) < p)
    return values


def _positive_unitball(param, shape, count, rng):
    _no_sparse(param, "positive_unitball")
    num = _legacy_dim(shape, 0)
    values = rng.uniform(0.0, 1.0, size=(num, count // num)).astype(np.float32)
    values /= values.sum(axis=1, keepdims=True)
    return values.reshape(shape)


def _xavier(param, shape, count, rng):
    _no_sparse(param, "xavier")
    scale = math.sqrt(3.0 / _variance_n(param, shape, count))
    return rng.uniform(-scale, scale, size=shape)


def _msra(param, shape, count, rng):
    _no_sparse(param, "msra")
    std = math.sqrt(2.0 / _variance_n(param, shape, count))
    return rng.normal(0.0, std, size=shape)


def _bilinear(param, shape, count, rng):
    """Weights of bilinear upsampling, for Deconvolution used as a resize."""
    _no_sparse(param, "bilinear")
    if len(shape) != 4:
        raise LayerError("bilinear filler needs a 4-axis blob (num, channels, h, w), got shape %s"
                         % (shape,))
    if shape[2] != shape[3]:
        raise LayerError("bilinear filler needs a square kernel, got %dx%d" % (shape[2], shape[3]))
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1.0 - np.abs(np.arange(k) / f - c)
    kernel = np.outer(ramp, ramp).astype(np.float32)
    return np.broadcast_to(kernel, shape)


FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def fill(blob, filler_param):
    """Fill ``blob.data`` in place as ``filler_param`` (a caffe_pb2.FillerParameter) says."""
    kind = filler_param.type
    make = FILLERS.get(kind)
    if make is None:
        raise LayerError("unknown filler type %r; known fillers: %s"
                         % (kind, ", ".join(sorted(FILLERS))))
    shape = tuple(blob.shape)
    count = blob.count
    if count == 0:
        raise LayerError("filler %r: cannot fill an empty blob of shape %s" % (kind, shape))
    if kind == "constant":   # in place: no weight-sized temporary (deploy nets fill every weight so)
        _no_sparse(filler_param, "constant")
        blob.data[...] = np.float32(filler_param.value)
        return blob
    values = np.asarray(make(filler_param, shape, count, get_rng()), dtype=np.float32)
    xp = blob.xp
    blob.data[...] = xp.asarray(values) if xp is not np else values
    return blob
