"""Checking a shape before anything is allocated for it.

Shapes come from files (BlobProto dims, Datum channels/height/width, IDX
headers, a net's batch_size) and a damaged or hostile file can give a
negative dimension, or dimensions whose product overflows. NumPy then fails
deep inside with a ValueError, or tries to allocate terabytes. Every reader
asks ``shape_count`` first; Caffe's own limit on a blob is INT_MAX elements.
"""
import os

from netspec.errors import CaffeError

INT_MAX = 2 ** 31 - 1


def shape_count(dims, where, error=CaffeError, limit=INT_MAX):
    """The number of elements of shape ``dims``, checked.

    Raises ``error`` (naming ``where``) when a dimension is negative or the
    product exceeds ``limit`` (Caffe's INT_MAX elements per blob by default;
    None: no limit). The product of the non-zero dimensions is bounded too:
    NumPy refuses a shape it cannot index even when it holds nothing.
    """
    dims = tuple(int(d) for d in dims)
    count, span = 1, 1   # span: the product of the non-zero dims, which NumPy must index even when count is 0
    for d in dims:
        if d < 0:
            raise error("%s: shape %s has a negative dimension" % (where, list(dims)))
        count *= d
        span *= max(d, 1)
    if limit is not None and span > limit:
        raise error("%s: shape %s %s more than the limit of %d elements%s; the file is damaged or the "
                    "size is a mistake" % (where, list(dims), "holds %d elements," % count if count else "spans",
                                           limit, " (Caffe's INT_MAX)" if limit == INT_MAX else ""))
    return count


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(nbytes, where, error=CaffeError):
    """Raise ``error`` when ``nbytes`` is more than the machine's whole memory."""
    total = physical_memory()
    if total and nbytes > total:
        raise error("%s needs %.1f GB of memory but this machine has %.1f GB in all; make it smaller"
                    % (where, nbytes / 1e9, total / 1e9))
