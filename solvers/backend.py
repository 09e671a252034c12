"""Array module selection: NumPy on the CPU, CuPy on a GPU.

Layers never import numpy for math on the hot path; they ask for the array
module of their blobs (``get_array_module``), so switching to the GPU is a mode
switch, not a rewrite.
"""
import numpy as np

_state = {"mode": "CPU", "device": 0}


_cupy_memo = []  # the import is tried once: a failed import is not cached by Python


def _cupy():
    if not _cupy_memo:
        try:
            import cupy
        except ImportError:  # the GPU extra is optional
            cupy = None
        _cupy_memo.append(cupy)
    return _cupy_memo[0]


def get_array_module(*arrays):
    """Return cupy if any argument is a CuPy array, else numpy."""
    cp = _cupy()
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return np


def default_xp():
    """The array module new blobs are allocated with in the current mode."""
    if _state["mode"] == "GPU":
        return _cupy()
    return np


def set_mode_cpu():
    _state["mode"] = "CPU"


def set_mode_gpu():
    from netspec.errors import CaffeError
    cp = _cupy()
    if cp is None:
        raise CaffeError("set_mode_gpu: CuPy is not installed; install the GPU extra "
                         "(pip install '.[gpu]' or a cupy-cudaXXx wheel) or stay on the CPU")
    cp.cuda.Device(_state["device"]).use()
    _state["mode"] = "GPU"


def set_device(device_id):
    _state["device"] = int(device_id)
    if _state["mode"] == "GPU":
        _cupy().cuda.Device(int(device_id)).use()


def mode():
    return _state["mode"]


def to_numpy(a):
    """A NumPy copy/view of an array of either module (for saving and printing)."""
    if isinstance(a, np.ndarray):
        return a
    return a.get()
