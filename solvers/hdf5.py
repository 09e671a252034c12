"""Reading HDF5 files without h5py's exceptions escaping: snapshots, HDF5 weights, HDF5Data files.

h5py answers an empty, truncated or foreign file with OSError, KeyError,
TypeError, ValueError... from deep inside. ``read_file`` opens the file and
runs the caller's reader, which checks the layout it expects with ``dataset``
and ``group``; anything h5py still raises becomes the caller's error class,
naming the file.
"""
import os

from netspec.errors import CaffeError


def h5py_module(error, what):
    try:
        import h5py
    except ImportError:
        raise error("reading %s needs h5py (pip install h5py)" % what) from None
    return h5py


def read_file(path, what, read, error):
    """Open the HDF5 file ``path`` and return ``read(h5file)``; every failure is ``error`` naming it."""
    h5py = h5py_module(error, what)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error("%s %r not found or not a regular file (resolved to %s, working directory %s)"
                    % (what, path, os.path.abspath(path), os.getcwd()))
    try:
        with h5py.File(path, "r") as f:
            return read(f)
    except CaffeError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, IndexError, AttributeError,
            UnicodeDecodeError, MemoryError) as e:
        raise error("cannot read %s %r: it is empty, truncated or not an HDF5 file of the expected "
                    "layout (%s: %s)" % (what, path, type(e).__name__, e)) from None


def dataset(h5, name, where, error):
    """The numeric dataset ``name`` of group ``h5``, or ``error`` saying what is there instead."""
    import h5py
    item = h5.get(name)
    if not isinstance(item, h5py.Dataset):
        raise error("%s: %r is %s, not a dataset" % (where, name, "missing" if item is None else "a group"))
    if item.dtype.kind not in "iufb":
        raise error("%s: dataset %r holds %s, not numbers" % (where, name, item.dtype))
    return item


def group(h5, name, where, error):
    """The group ``name`` of ``h5``, or ``error`` saying what is there instead."""
    import h5py
    item = h5.get(name)
    if not isinstance(item, h5py.Group):
        raise error("%s: %r is %s, not a group" % (where, name, "missing" if item is None else "a dataset"))
    return item
