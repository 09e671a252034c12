"""The toolkit's one exception family.

Caffe aborts the process on a failed CHECK; here every such failure is a
Python exception whose message names the file, line, layer or blob to fix.
"""


class CaffeError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class ProtoError(CaffeError):
    """A prototxt or binary proto file (net, solver, weights) cannot be read or written."""


class NetSpecError(CaffeError):
    """A NetSpec description is wrong: unknown keyword or type, clashing tops."""


class UnknownLayerTypeError(NetSpecError, AttributeError):
    """``L.<Type>`` names a layer type nobody registered (an AttributeError too, so hasattr() works)."""


class NotATopError(NetSpecError, TypeError):
    """A layer got something other than a Top as a bottom: a TypeError, as pycaffe raises."""


class BlobShapeError(ProtoError, ValueError):
    """A BlobProto's values do not fill its shape: a ValueError, as pycaffe's reshape raises."""


class LayerError(CaffeError):
    """A layer cannot be set up or run: wrong bottom/top counts, shapes, parameters."""


class NetError(CaffeError):
    """A net cannot be built: missing bottoms, bad sharing, mismatched weights."""


class DataError(CaffeError):
    """A data source is missing, empty or holds records that disagree."""


class SolverError(CaffeError):
    """A solver cannot be built or run: bad settings, unwritable snapshots, NaN loss."""


class SideFileError(SolverError):
    """A snapshot's side file (``.solverstate.json``: data position, RNG) is damaged or foreign."""


def resolved_path(path):
    """``(resolved: ABS, working directory: CWD)``: what a "not found" message adds to a path.

    Relative paths in nets and solvers resolve against the directory the
    program runs in, which is the usual surprise; every missing-file error
    says both.
    """
    import os
    return "(resolved: %s, working directory: %s)" % (os.path.abspath(path), os.getcwd())


def os_error_text(error, path=None, say_where=True):
    """What went wrong in an OSError (or a library's I/O error), for a one-line message.

    A full disk is said in so many words: ENOSPC, or any write error on a
    file system with (almost) no free space left (liblmdb, for one, reports a
    full disk as an I/O error). ``path`` is where the write went; it is named
    at the end unless ``say_where`` is false.
    """
    import errno
    import os
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    where = getattr(error, "filename", None) or path
    full = getattr(error, "errno", None) == errno.ENOSPC
    if where and not full:
        folder = where if os.path.isdir(where) else os.path.dirname(os.path.abspath(where))
        try:
            st = os.statvfs(folder)
            full = st.f_bavail * st.f_frsize < (1 << 20)
        except (AttributeError, OSError):
            pass
    if full:
        reason = "no space left on device" + ("" if "space" in reason.lower() else "; the system said: " + reason)
    return "%s%s" % (reason, " (%s)" % where if where and say_where else "")
