"""IDX files, the format MNIST (and Fashion-MNIST) ship in.

An IDX file is a big-endian header (magic ``0x0000 TT NN``: element type TT,
NN dimensions, then NN uint32 sizes) followed by the raw elements. MNIST
images are magic 2051 (uint8, 3 dims), labels 2049 (uint8, 1 dim). Files
may be gzipped; we look at the first two bytes rather than the file name,
because people gunzip files and keep the ``.gz`` name (and the reverse).
"""
import gzip
import os

import numpy as np

from netspec.errors import DataError, resolved_path
from netspec.shapes import INT_MAX, shape_count

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# IDX element type code -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path):
    """The file's contents, gunzipped if it is a gzip file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()
            return f.read()
    except FileNotFoundError:
        raise DataError("IDX file %r not found %s" % (path, resolved_path(path))) from None
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
        raise DataError("IDX file %s cannot be read: %s (a partial download? fetch it again)"
                        % (path, e)) from None


def parse_idx(buf, path="<bytes>", expect_magic=None):
    """Parse IDX bytes into a numpy array (native byte order)."""
    if len(buf) < 4:
        raise DataError("IDX file %s is too short (%d bytes) to hold a header" % (path, len(buf)))
    magic = int.from_bytes(buf[:4], "big")
    type_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise DataError("IDX file %s has bad magic number %d (0x%08x); expected %s"
                        % (path, magic, magic,
                           expect_magic if expect_magic else "an IDX header 0x0000TTNN"))
    if expect_magic is not None and magic != expect_magic:
        what = {IMAGES_MAGIC: "an images file (2051)", LABELS_MAGIC: "a labels file (2049)"}
        raise DataError("IDX file %s has magic %d but %s was expected; are the image and label "
                        "files swapped?" % (path, magic, what.get(expect_magic, expect_magic)))
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError("IDX file %s is truncated inside its header" % path)
    dims = tuple(int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[type_code])
    have = len(buf) - header
    # a valid file holds every element it declares, so more elements than bytes (or than INT_MAX,
    # for a shape with a 0 in it) can only be damage
    need = shape_count(dims, "IDX file %s: header" % path, DataError, limit=max(have, INT_MAX)) * dtype.itemsize
    if have != need:
        raise DataError("IDX file %s: header says shape %s (%d bytes of data) but the file holds "
                        "%d bytes; the file is truncated or not what it claims"
                        % (path, dims, need, have))
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path, expect_magic=None):
    return parse_idx(read_bytes(path), os.fspath(path), expect_magic)


def read_mnist(images_path, labels_path):
    """MNIST images (N, rows, cols) uint8 and labels (N,) uint8, checked to agree."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError("%s holds %d images but %s holds %d labels; they must be a matching pair"
                        % (images_path, images.shape[0], labels_path, labels.shape[0]))
    return images, labels
