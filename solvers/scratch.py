"""Work arrays whose contents die with the call, shared by every layer.

Layers run one at a time, so a process needs one buffer per slot, as large as
its largest request, instead of a fresh data-sized temporary in every call
(a large NumPy temporary is a fresh mmap: its pages fault in, zeroed, every
time) or one kept buffer per layer and net.
"""
import math
import threading

import numpy as np

from solvers.backend import get_array_module

_pool = threading.local()


def scratch(like, slot, shape, dtype=None):
    """A work array of ``shape`` (``like``'s dtype by default), slot ``slot`` of a per-thread pool.

    A call's largest temporary takes slot 0, the others it uses at the same
    time 1, 2, ...; the contents are arbitrary. Other array modules (CuPy,
    with its own memory pool) get a fresh array.
    """
    xp = get_array_module(like)
    dtype = np.dtype(like.dtype if dtype is None else dtype)
    shape = tuple(shape)
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    nbytes = dtype.itemsize * math.prod(shape)
    pool = _pool.__dict__
    buf = pool.get(slot)
    if buf is None or buf.size < nbytes:
        buf = pool[slot] = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)
