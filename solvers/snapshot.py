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
(``<state file>.json``); a snapshot without one (Caffe's) restores fine.

Every file is written to a temporary name in the target directory and then
renamed, so a crash never leaves half a snapshot.
"""
import json
import os
import tempfile

import numpy as np

from netspec import caffe_pb2
from netspec.errors import CaffeError, SolverError
from netspec.io import array_to_blobproto, atomic_write_bytes, blobproto_to_array, read_binary
from solvers.backend import to_numpy

BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO
HDF5 = caffe_pb2.SolverParameter.HDF5
SIDE_FILE_SUFFIX = ".json"


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
        raise SolverError("cannot write snapshots: %s: the directory does not exist; create it "
                          "or change snapshot_prefix" % where)
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=os.path.basename(probe) + ".")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise SolverError("cannot write snapshots: %s: %s; make the directory writable or change "
                          "snapshot_prefix" % (where, e.strerror or e)) from None


# -- atomic HDF5 -----------------------------------------------------------------

def _h5py():
    try:
        import h5py
    except ImportError:
        raise SolverError("snapshot_format: HDF5 needs h5py (pip install h5py); or use "
                          "snapshot_format: BINARYPROTO") from None
    return h5py


def _atomic_h5(path, fill):
    """Create an HDF5 file at a temporary name, let ``fill(h5file)`` write it, rename it into place."""
    h5py = _h5py()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise SolverError("cannot write %r: %s" % (path, e.strerror or e)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


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
    _atomic_h5(path, fill)


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


def write_state(path, iteration, learned_net, history, current_step, snapshot_format=BINARYPROTO):
    """Write the solver state file (binary SolverState, or Caffe's HDF5 layout)."""
    if snapshot_format == HDF5:
        def fill(f):
            f.create_dataset("iter", data=np.array([iteration], dtype=np.int32))
            f.create_dataset("learned_net", data=np.bytes_(learned_net.encode("utf-8")))
            f.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
            group = f.create_group("history")
            for i, h in enumerate(history):
                group.create_dataset(str(i), data=to_numpy(h).astype(np.float32))
        _atomic_h5(path, fill)
    else:
        state = encode_state(iteration, learned_net, history, current_step)
        atomic_write_bytes(os.fspath(path), state.SerializeToString)


def read_state(path):
    """Read a .solverstate (binary) or .solverstate.h5 into a dict.

    Keys: ``iter``, ``learned_net`` ("" when absent), ``current_step``,
    ``history`` (list of float32 arrays in learnable-parameter order).
    """
    path = os.fspath(path)
    if path.endswith(".h5"):
        return _read_state_hdf5(path)
    try:
        state = read_binary(path, caffe_pb2.SolverState)
    except CaffeError as e:
        raise SolverError("cannot restore from %r: %s" % (path, e)) from None
    return {"iter": state.iter,
            "learned_net": state.learned_net if state.HasField("learned_net") else "",
            "current_step": state.current_step,
            "history": [blobproto_to_array(h) for h in state.history]}


def _read_state_hdf5(path):
    h5py = _h5py()
    if not os.path.isfile(path):
        raise SolverError("cannot restore: solver state %r not found (resolved to %s, working "
                          "directory %s)" % (path, os.path.abspath(path), os.getcwd()))
    with h5py.File(path, "r") as f:
        learned = ""
        if "learned_net" in f:
            raw = f["learned_net"][()]
            learned = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        group = f["history"] if "history" in f else {}
        history = [np.asarray(group[str(i)][...], dtype=np.float32) for i in range(len(group))]
        return {"iter": int(np.asarray(f["iter"][()]).ravel()[0]),
                "learned_net": learned,
                "current_step": int(np.asarray(f["current_step"][()]).ravel()[0])
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


# -- the side file -------------------------------------------------------------------

def write_side_file(state_path, payload):
    """Write the JSON side file (data positions, RNG state) next to ``state_path``, atomically."""
    path = side_file_path(state_path)
    atomic_write_bytes(path, lambda: json.dumps(payload, sort_keys=True, default=_jsonable).encode("utf-8"))
    return path


def _jsonable(value):
    """NumPy scalars and arrays in a layer's state become plain JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError("%s is not JSON serialisable; a layer's get_state() must return plain data"
                    % type(value).__name__)


def read_side_file(state_path):
    """The side file's dict, or None when the snapshot has none (e.g. it came from Caffe)."""
    path = side_file_path(state_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise SolverError("side file %r of snapshot %r cannot be read (%s); delete it to resume "
                          "as Caffe would, without the data position"
                          % (path, os.fspath(state_path), e)) from None
