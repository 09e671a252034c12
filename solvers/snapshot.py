"""Snapshot files: names, formats and the solver state, as Caffe writes them.

A snapshot at iteration N is two files, named as Caffe names them:

* ``<prefix>_iter_<N>.caffemodel`` (the train net's NetParameter with blobs),
  or ``<prefix>_iter_<N>.caffemodel.h5`` with ``snapshot_format: HDF5``;
* ``<prefix>_iter_<N>.solverstate`` (a SolverState: ``iter``, ``learned_net``
  = the model file name exactly as written, ``history`` = the solver's
  history blobs in learnable-parameter order, ``current_step``), or
  ``.solverstate.h5`` in Caffe's HDF5 layout.

Caffe does not remember where the data layers were nor the random generator's
state, so resuming from its snapshot sees other batches than the
uninterrupted run. We keep both in a JSON side file next to the solver state
(``<state file>.json``, see ``side_file.py``); a snapshot without one
(Caffe's) restores, with a warning that the data starts again.

Every file is written to a temporary name in the target directory and then
renamed (netspec.atomic), so a crash never leaves half a file. The three
files go in this order: model, side file, solver state. The solver state is
what a user resumes from, so whenever it is there, its model and side file
are too; the side file records the state's digest, so one left by a run
killed before its state was renamed is recognised as not belonging to an
older state of the same name.

Readers check what they read: a truncated, empty or foreign file, in either
format, is a SolverError (NetError for weights) naming it, never an
exception from deep inside protobuf or h5py.
"""
import os
import tempfile

import numpy as np

from netspec import caffe_pb2
from netspec.atomic import AtomicFile, remove_stale_temporaries as _remove_stale, temp_prefix
from netspec.errors import CaffeError, NetError, SolverError
from netspec.io import (array_to_blobproto, atomic_write_bytes, blobproto_to_array, file_digest,
                        read_binary)
from solvers import hdf5, side_file
from solvers.backend import to_numpy

BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO
HDF5 = caffe_pb2.SolverParameter.HDF5
SIDE_FILE_SUFFIX = side_file.SUFFIX
INT32_MAX = 2 ** 31 - 1


# -- names ---------------------------------------------------------------------

def snapshot_filename(prefix, iteration, extension):
    """Caffe's SnapshotFilename: ``<prefix>_iter_<N><extension>``."""
    return "%s_iter_%d%s" % (prefix, int(iteration), extension)


def model_extension(snapshot_format):
    return ".caffemodel.h5" if snapshot_format == HDF5 else ".caffemodel"


def state_extension(snapshot_format):
    return ".solverstate.h5" if snapshot_format == HDF5 else ".solverstate"


def side_file_path(state_path):
    """Where the data position and RNG state of a snapshot live."""
    return os.fspath(state_path) + SIDE_FILE_SUFFIX


def check_prefix_writable(prefix):
    """Caffe's CheckSnapshotWritePermissions, done before iteration 0 with a useful message."""
    probe = snapshot_filename(prefix, 0, ".tempfile")
    directory = os.path.dirname(os.path.abspath(probe))
    where = ("snapshot_prefix %r (files go to directory %r; working directory %r)"
             % (prefix, directory, os.getcwd()))
    if not os.path.isdir(directory):
        blocker = directory   # the deepest part of the path that exists: a file where a folder must be?
        while not os.path.lexists(blocker) and os.path.dirname(blocker) != blocker:
            blocker = os.path.dirname(blocker)
        if os.path.lexists(blocker) and not os.path.isdir(blocker):
            raise SolverError("cannot write snapshots: %s: %r is a file, not a directory; change "
                              "snapshot_prefix (or move the file)" % (where, blocker))
        raise SolverError("cannot write snapshots: %s: the directory does not exist; create it "
                          "or change snapshot_prefix" % where)
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=temp_prefix(os.path.basename(probe)))
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise SolverError("cannot write snapshots: %s: %s; make the directory writable or change "
                          "snapshot_prefix" % (where, e.strerror or e)) from None


def remove_stale_temporaries(prefix):
    """Delete the temporaries snapshots of ``prefix`` left behind by killed runs (logged)."""
    directory = os.path.dirname(os.path.abspath(snapshot_filename(prefix, 0, "")))
    base = os.path.basename(prefix) + "_iter_"
    return _remove_stale(directory, lambda target: target.startswith(base))


# -- HDF5 ---------------------------------------------------------------------------

def _h5py():
    try:
        import h5py
    except ImportError:
        raise SolverError("snapshot_format: HDF5 needs h5py (pip install h5py); or use "
                          "snapshot_format: BINARYPROTO") from None
    return h5py


def _fill_h5(path, fill):
    """Let ``fill(h5file)`` write a new HDF5 file at ``path`` (a temporary name)."""
    with _h5py().File(path, "w") as f:
        fill(f)


def _write_atomic(path, fill_path):
    """``fill_path(tmp)`` writes a temporary beside ``path``, which then replaces ``path``."""
    path = os.fspath(path)
    try:
        with AtomicFile(path) as f:
            fill_path(f.tmp)
            f.commit()
    except OSError as e:
        raise SolverError("cannot write %r: %s" % (path, e.strerror or e)) from None


def read_hdf5(path, what, read, error=SolverError):
    """``read(h5file)`` of the HDF5 file ``path``; every failure is ``error`` naming it (solvers.hdf5)."""
    _h5py()
    return hdf5.read_file(path, what, read, error)


def _dataset(h5, name, where, error=SolverError):
    return hdf5.dataset(h5, name, where, error)


def _group(h5, name, where, error=SolverError):
    return hdf5.group(h5, name, where, error)


def _scalar_int(h5, name, where, lo, hi):
    ds = _dataset(h5, name, where)
    values = np.asarray(ds[()]).ravel()
    if values.size != 1 or ds.dtype.kind == "f" and not float(values[0]).is_integer():
        raise SolverError("%s: %r must hold one integer, it holds %s" % (where, name, values[:4]))
    value = int(values[0])
    if not lo <= value <= hi:
        raise SolverError("%s: %r is %d; it must be from %d to %d" % (where, name, value, lo, hi))
    return value


# -- the model -------------------------------------------------------------------

def write_model(net, path, snapshot_format=BINARYPROTO, write_diff=False):
    """Write the net's blobs as Caffe's Snapshot does (binary NetParameter or HDF5)."""
    if snapshot_format == HDF5:
        write_net_hdf5(net, path, write_diff)
    else:
        atomic_write_bytes(os.fspath(path), lambda: net.to_proto(write_diff).SerializeToString())


def write_net_hdf5(net, path, write_diff=False):
    """Caffe's Net::ToHDF5: groups ``data/<layer>/<j>`` (and ``diff/...``), owned blobs only."""
    def fill(f):
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for layer_id, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            layer_data = data.create_group(name)
            layer_diff = diff.create_group(name) if diff is not None else None
            for j, blob in enumerate(layer.blobs):
                if net._param_owners[net._param_ids[layer_id][j]] == -1:
                    layer_data.create_dataset(str(j), data=to_numpy(blob.data).astype(np.float32))
                if layer_diff is not None:
                    layer_diff.create_dataset(str(j), data=to_numpy(blob.diff).astype(np.float32))
    _write_atomic(path, lambda tmp: _fill_h5(tmp, fill))


def read_net_hdf5(path, wanted):
    """The blobs of an HDF5 model for the layers in ``wanted`` ({name: [blob shapes]}).

    Returns {layer name: {blob index: float32 array}}; each dataset's shape is
    checked against ``wanted`` before it is read, so a foreign file cannot make
    us allocate what it claims. Errors are NetError naming the file.
    """
    def read(f):
        where = "HDF5 weights %r" % os.fspath(path)
        data = _group(f, "data", where, NetError)
        out = {}
        for name in data:
            if name not in wanted:
                continue
            group = _group(data, name, where + " data", NetError)
            shapes = wanted[name]
            extra = sorted(k for k in group if not (k.isdigit() and int(k) < len(shapes)))
            if extra:
                raise NetError("layer %r: %s holds blob %r, but the layer has %d blob(s)"
                               % (name, os.fspath(path), extra[0], len(shapes)))
            blobs = {}
            for j, shape in enumerate(shapes):
                if str(j) not in group:
                    continue
                ds = _dataset(group, str(j), "%s layer %r" % (where, name), NetError)
                if tuple(ds.shape) != tuple(shape):
                    raise NetError("layer %r blob %d: shape mismatch, the net has %s but %s holds %s"
                                   % (name, j, tuple(shape), os.fspath(path), tuple(ds.shape)))
                blobs[j] = np.asarray(ds[...], dtype=np.float32)
            out[name] = blobs
        return out
    return read_hdf5(path, "HDF5 weights", read, NetError)


# -- the solver state ------------------------------------------------------------

def encode_state(iteration, learned_net, history, current_step):
    """A SolverState message from the solver's numbers and history arrays."""
    state = caffe_pb2.SolverState()
    state.iter = int(iteration)
    state.learned_net = learned_net
    state.current_step = int(current_step)
    for h in history:
        state.history.add().CopyFrom(array_to_blobproto(to_numpy(h)))
    return state


def _fill_state(tmp, iteration, learned_net, history, current_step, snapshot_format):
    if snapshot_format == HDF5:
        def fill(f):
            f.create_dataset("iter", data=np.array([iteration], dtype=np.int32))
            f.create_dataset("learned_net", data=np.bytes_(learned_net.encode("utf-8")))
            f.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
            group = f.create_group("history")
            for i, h in enumerate(history):
                group.create_dataset(str(i), data=to_numpy(h).astype(np.float32))
        _fill_h5(tmp, fill)
    else:
        with open(tmp, "wb") as f:
            f.write(encode_state(iteration, learned_net, history, current_step).SerializeToString())


def write_state(path, iteration, learned_net, history, current_step, snapshot_format=BINARYPROTO,
                side=None):
    """Write the solver state file (binary SolverState, or Caffe's HDF5 layout).

    With ``side`` (a dict), its side file is written too, before the state is
    renamed into place and carrying the state's digest: the newest state file
    always has its own side file, and a side file without its state is never
    taken for another state's.
    """
    path = os.fspath(path)
    try:
        with AtomicFile(path) as f:
            _fill_state(f.tmp, iteration, learned_net, history, current_step, snapshot_format)
            if side is not None:
                side_file.write(path, dict(side, state_sha256=file_digest(f.tmp, "sha256")))
            f.commit()
    except OSError as e:
        raise SolverError("cannot write %r: %s" % (path, e.strerror or e)) from None


def read_state(path):
    """Read a .solverstate (binary) or .solverstate.h5 into a dict, checked.

    Keys: ``iter``, ``learned_net`` ("" when absent), ``current_step``,
    ``history`` (list of float32 arrays in learnable-parameter order).
    A file that is not a solver state, or one whose numbers are impossible
    (a negative iteration, a model name that is not text) is a SolverError.
    """
    path = os.fspath(path)
    if path.endswith(".h5"):
        state = read_hdf5(path, "solver state", _read_state_hdf5)
    else:
        state = _read_state_binary(path)
    learned = state["learned_net"]
    if isinstance(learned, bytes):
        try:
            state["learned_net"] = learned.decode("utf-8")
        except UnicodeDecodeError:
            raise SolverError("cannot restore from %r: its learned_net (the model file name) is not "
                              "UTF-8 text (%r); the file is damaged" % (path, learned[:40])) from None
    for key in ("iter", "current_step"):
        if not 0 <= state[key] <= INT32_MAX:
            raise SolverError("cannot restore from %r: %s is %d; it must be from 0 to %d (the file is "
                              "damaged or was edited)" % (path, key, state[key], INT32_MAX))
    return state


def _read_state_binary(path):
    try:
        state = read_binary(path, caffe_pb2.SolverState)
        history = [blobproto_to_array(h) for h in state.history]
    except CaffeError as e:
        raise SolverError("cannot restore from %r: %s" % (path, e)) from None
    return {"iter": state.iter,
            "learned_net": state.learned_net if state.HasField("learned_net") else "",
            "current_step": state.current_step,
            "history": history}


def _read_state_hdf5(f):
    where = "solver state %r" % f.filename
    learned = ""
    if "learned_net" in f:
        item = f["learned_net"]
        raw = item[()] if isinstance(item, _h5py().Dataset) else None
        if isinstance(raw, np.ndarray) and raw.size == 1:
            raw = raw.ravel()[0]
        if not isinstance(raw, (bytes, np.bytes_, str)):
            raise SolverError("%s: learned_net must be a string dataset (the model file name)" % where)
        learned = bytes(raw) if not isinstance(raw, str) else raw
    history = []
    if "history" in f:
        group = _group(f, "history", where)
        names = sorted(group, key=lambda k: int(k) if k.isdigit() else -1)
        if names != [str(i) for i in range(len(names))]:
            raise SolverError("%s: history must hold datasets named 0..%d, it holds %s"
                              % (where, len(names) - 1, names[:5]))
        history = [np.asarray(_dataset(group, k, where)[...], dtype=np.float32) for k in names]
    return {"iter": _scalar_int(f, "iter", where, -INT32_MAX - 1, INT32_MAX),
            "learned_net": learned,
            "current_step": _scalar_int(f, "current_step", where, -INT32_MAX - 1, INT32_MAX)
            if "current_step" in f else 0,
            "history": history}


def resolve_learned_net(learned_net, state_path):
    """Find the model a state names: Caffe opens it from the working directory; failing that,
    we also look next to the state file (snapshots moved together still restore)."""
    if os.path.isabs(learned_net) or os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.path.abspath(state_path)), os.path.basename(learned_net))
    if os.path.exists(beside):
        return beside
    raise SolverError("solver state %r names the model %r, which is neither in the working directory "
                      "(%s) nor next to the state file" % (os.fspath(state_path), learned_net, os.getcwd()))


# -- the side file (see side_file.py) --------------------------------------------------

def write_side_file(state_path, payload):
    """Write the JSON side file next to ``state_path`` on its own (write_state(side=...) pairs them)."""
    return side_file.write(state_path, payload)


def read_side_file(state_path):
    """The side file's dict, checked against its schema; None when the snapshot has none."""
    return side_file.read(state_path)
