"""The pycaffe methods the core Net and Solver lack, attached to those classes.

pycaffe adds its Python conveniences (``forward_all``, ``set_input_arrays``,
...) onto the C++ Net class itself, so that nets a solver builds have them
too. The same here: the functions below are set on ``solvers.net.Net`` and
``solvers.solver.Solver`` when this module is imported, only where the class
does not define the name already, plus the IPython/Jupyter representations
from ``solvers.inspect``.
"""
import logging
import os
import time
from itertools import zip_longest

import numpy as np

from netspec.errors import NetError
from solvers.backend import to_numpy
from solvers.blob import Blob
from solvers.net import Net
from solvers.solver import Solver
from solvers.sgd_solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                                 RMSPropSolver, SGDSolver, get_solver)
from solvers import inspect as _inspect

__all__ = ["Net", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "Timer", "get_solver", "init_log", "log"]


# -- batching (pycaffe's Net._batch, forward_all, forward_backward_all) ---------------

def _batch(self, arrays):
    """Yield dicts of batch-sized slices of ``arrays`` (name -> N x ...); the last is zero-padded."""
    if not arrays:
        return
    names = list(arrays)
    num = len(arrays[names[0]])
    for name in names:
        if len(arrays[name]) != num:
            raise NetError("net %r: the arrays given have different lengths (%s)"
                           % (self.name, ", ".join("%s: %d" % (n, len(arrays[n])) for n in names)))
        if name not in self.blobs:
            raise NetError("net %r has no blob %r; blobs: %s" % (self.name, name, ", ".join(self.blobs)))
    batch_size = self.blobs[names[0]].shape[0] if self.blobs[names[0]].shape else 1
    full, remainder = divmod(num, batch_size)
    for b in range(full):
        yield {name: arrays[name][b * batch_size:(b + 1) * batch_size] for name in names}
    if remainder:
        padded = {}
        for name in names:
            tail = np.asarray(arrays[name][full * batch_size:])
            padding = np.zeros((batch_size - remainder,) + tail.shape[1:], dtype=np.float32)
            padded[name] = np.concatenate([tail.astype(np.float32, copy=False), padding])
        yield padded


def _gather(chunks, keep):
    """Concatenate per-batch copies and drop the padding rows."""
    return {name: np.concatenate(parts)[:keep] if parts else np.zeros((0,), np.float32)
            for name, parts in chunks.items()}


def _forward_all(self, blobs=None, **kwargs):
    """Run the net over inputs of any length in batches: {blob name: N x ... array}.

    ``kwargs`` map input blob names to arrays whose first axis is the item
    count; the last batch is padded with zeros and the padding dropped from
    the results. Without inputs, one forward pass (the data layers' batch).
    """
    names = set(self.outputs + list(blobs or []))
    if not kwargs:
        outs = self.forward(blobs=blobs)
        return {name: to_numpy(outs[name]).copy() for name in names}
    chunks = {name: [] for name in names}
    for batch in self._batch(kwargs):
        outs = self.forward(blobs=blobs, **batch)
        for name in names:
            chunks[name].append(to_numpy(outs[name]).copy())
    return _gather(chunks, len(next(iter(kwargs.values()))))


def _forward_backward_all(self, blobs=None, diffs=None, **kwargs):
    """forward_all and backward together: ({blob: data}, {blob: diff}) over all items.

    Inputs in ``kwargs`` feed forward, outputs feed backward (as top diffs);
    a pass without one or the other uses what the net holds.
    """
    out_names = set(self.outputs + list(blobs or []))
    diff_names = set(self.inputs + list(diffs or []))
    fwd = {k: v for k, v in kwargs.items() if k in self.inputs}
    bwd = {k: v for k, v in kwargs.items() if k in self.outputs}
    unknown = set(kwargs) - set(fwd) - set(bwd)
    if unknown:
        raise NetError("net %r: %s are neither inputs %s nor outputs %s"
                       % (self.name, sorted(unknown), self.inputs, self.outputs))
    all_outs = {name: [] for name in out_names}
    all_diffs = {name: [] for name in diff_names}
    for fb, bb in zip_longest(self._batch(fwd), self._batch(bwd), fillvalue={}):
        outs = self.forward(blobs=blobs, **fb)
        grads = self.backward(diffs=diffs, **bb)
        for name in out_names:
            all_outs[name].append(to_numpy(outs[name]).copy())
        for name in diff_names:
            all_diffs[name].append(to_numpy(grads[name]).copy())
    keep = len(next(iter(kwargs.values()))) if kwargs else None
    return _gather(all_outs, keep), _gather(all_diffs, keep)


def _set_input_arrays(self, data, labels):
    """Hand arrays to the net's first layer, which must be MemoryData (as in pycaffe)."""
    if not self.layers or self.layers[0].type != "MemoryData":
        raise NetError("net %r: set_input_arrays needs a MemoryData layer as the first layer; the "
                       "first layer is %s" % (self.name, "%r (type %s)" % (self.layer_names[0], self.layers[0].type)
                                              if self.layers else "missing"))
    data = np.asarray(data)
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, np.newaxis, np.newaxis, np.newaxis]
    if labels.ndim != 4 or labels.shape[1:] != (1, 1, 1):
        raise NetError("net %r: set_input_arrays needs one label per item (N or N x 1 x 1 x 1), got "
                       "labels of shape %s" % (self.name, labels.shape))
    if data.shape[:1] != labels.shape[:1]:
        raise NetError("net %r: set_input_arrays got %d items but %d labels"
                       % (self.name, len(data), len(labels)))
    self.layers[0].set_input_arrays(data, labels.reshape(len(labels)))


def _to_onnx(self, path, opset=None, dynamic_batch=False):
    """Write this net and its weights as an ONNX model (see solvers.onnx_export.to_onnx)."""
    from solvers import onnx_export
    return onnx_export.to_onnx(self, path, opset or onnx_export.DEFAULT_OPSET, dynamic_batch)


def _share_weights(self, net):
    """pycaffe's Solver.share_weights: ``net`` uses this solver's trained weights."""
    net.share_with(self.net)


# -- HDF5 weights (pycaffe's Net.save_hdf5 / load_hdf5) ------------------------------

def _save_hdf5(self, filename):
    """Write the learned blobs as Caffe's Net::ToHDF5 does: datasets ``/data/<layer>/<j>``."""
    from solvers.snapshot import write_net_hdf5
    write_net_hdf5(self, filename, write_diff=False)


def _load_hdf5(self, filename):
    """Copy learned blobs from an HDF5 weights file by layer name (Caffe's CopyTrainedLayersFromHDF5).

    Any file name will do: the format is not guessed from the extension here.
    """
    self._copy_from_hdf5(os.fspath(filename))


# -- attaching ------------------------------------------------------------------------

_NET_METHODS = {"_batch": _batch, "forward_all": _forward_all,
                "forward_backward_all": _forward_backward_all, "set_input_arrays": _set_input_arrays,
                "save_hdf5": _save_hdf5, "load_hdf5": _load_hdf5, "to_onnx": _to_onnx}
_SOLVER_METHODS = {"share_weights": _share_weights}


def _attach(cls, methods):
    for name, fn in methods.items():
        if name not in cls.__dict__:
            setattr(cls, name, fn)


def _never_fails(summary):
    """A repr must not raise (a half-built object shows up in tracebacks and debuggers)."""
    def method(self):
        try:
            return summary(self)
        except Exception as e:
            return "<%s object; no summary: %s: %s>" % (type(self).__name__, type(e).__name__, e)
    method.__name__ = summary.__name__
    method.__doc__ = summary.__doc__
    return method


def install():
    """Give Net, Solver and Blob the pycaffe methods and the notebook representations."""
    _attach(Net, _NET_METHODS)
    _attach(Solver, _SOLVER_METHODS)
    for cls, text, rich in ((Net, _inspect.net_summary, _inspect.net_html),
                            (Blob, _inspect.blob_summary, _inspect.blob_html),
                            (Solver, _inspect.solver_summary, _inspect.solver_html)):
        cls.__repr__ = _never_fails(text)
        cls._repr_html_ = _never_fails(rich)


install()


# -- logging --------------------------------------------------------------------------

_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level=0, stderr=None):
    """pycaffe's init_log: print the solver's glog-style lines (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL)."""
    from solvers.log import install_handler
    return install_handler(stream=stderr, level=_GLOG_LEVELS.get(int(level), logging.INFO))


def log(message):
    """pycaffe's caffe.log: one INFO line in Caffe's log."""
    logging.getLogger("caffe").info("%s", message)


# -- timing -----------------------------------------------------------------------------

class Timer:
    """pycaffe's caffe.Timer: ``start()``, ``stop()``, ``ms`` (Caffe's Timer semantics).

    ``ms`` is the time from the last start to the last stop; read while
    running, it stops the timer first (as Caffe's MilliSeconds does), and
    it is 0 for a timer never started.
    """

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._start = self._stop = None
        self._running = False

    def start(self):
        if not self._running:
            self._start = self._clock()
            self._running = True

    def stop(self):
        if self._running:
            self._stop = self._clock()
            self._running = False

    @property
    def ms(self):
        if self._start is None:
            return 0.0
        self.stop()
        return (self._stop - self._start) * 1000.0
