"""Blob: Caffe's N-d float32 array pair (``data`` and ``diff``)."""
from netspec.errors import CaffeError
from netspec.shapes import shape_count
from solvers.backend import default_xp, to_numpy

MAX_AXES = 32


class Blob:
    """Holds ``data`` and ``diff`` of one shape, both float32.

    ``reshape`` keeps the buffers when the new shape fits in what is already
    allocated (as Caffe does), so a net reshaped to a smaller batch allocates
    nothing. Two blobs may share one buffer (``share_data``/``share_diff``):
    that is how in-place reshapes and shared parameters work.

    The diff buffer is allocated (zeroed) on first use of ``diff``: most blobs
    of a net that only runs forward (a test net) never need one.
    """

    def __init__(self, shape=(), xp=None):
        self.xp = xp if xp is not None else default_xp()
        self._shape = ()
        self._data_buf = self.xp.zeros(0, dtype=self.xp.float32)
        self._diff_store = None   # the diff buffer, once allocated
        self._diff_size = 0       # its size when allocated (what the old diff held, or the capacity)
        self._diff = None         # the diff view for the current shape, once asked for
        self.data = None
        self.reshape(shape)

    # -- shape ---------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and not isinstance(shape[0], (int,)) and hasattr(shape[0], "__len__"):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if len(shape) > MAX_AXES:
            raise CaffeError("blob shape %s has more than %d axes" % (shape, MAX_AXES))
        count = shape_count(shape, "blob")
        if count > self._data_buf.size:
            try:
                self._data_buf = self.xp.zeros(count, dtype=self.xp.float32)
            except MemoryError:
                raise CaffeError("blob of shape %s needs %.1f GB: out of memory"
                                 % (list(shape), count * 4 / 1e9)) from None
            self._diff_store = None
            self._diff_size = count
        self._shape = shape
        self.data = self._data_buf[:count].reshape(shape)
        self._diff = None

    @property
    def _diff_buf(self):
        """The whole diff buffer (allocated, zeroed, on first use)."""
        buf = self._diff_store
        if buf is None or buf.size < self.data.size:
            buf = self._diff_store = self.xp.zeros(max(self._diff_size, self.data.size), dtype=self.xp.float32)
        return buf

    @_diff_buf.setter
    def _diff_buf(self, buf):
        self._diff_store = buf
        self._diff_size = buf.size
        self._diff = None

    @property
    def diff(self):
        d = self._diff
        if d is None:
            d = self._diff = self._diff_buf[:self.data.size].reshape(self._shape)
        return d

    @diff.setter
    def diff(self, value):
        self._diff = value

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return int(self.data.size)

    @property
    def num_axes(self):
        return len(self._shape)

    def canonical_axis(self, axis):
        """Caffe's CanonicalAxisIndex: negative axes count from the end."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise CaffeError("axis %d out of range for a %d-axis blob of shape %s" % (axis, n, self._shape))
        return axis + n if axis < 0 else axis

    def count_range(self, start, end=None):
        """Product of the dimensions in [start, end)."""
        end = len(self._shape) if end is None else end
        c = 1
        for s in self._shape[start:end]:
            c *= s
        return c

    def _legacy(self, index):
        if len(self._shape) > 4:
            raise CaffeError("num/channels/height/width need a blob of at most 4 axes, got shape %s"
                             % (self._shape,))
        return self._shape[index] if index < len(self._shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def shape_string(self):
        return " ".join(str(s) for s in self._shape) + " (%d)" % self.count

    # -- sharing -------------------------------------------------------
    def share_data(self, other):
        """Make this blob's data the same memory as ``other``'s (counts must agree)."""
        if other.count != self.count:
            raise CaffeError("share_data: counts differ (%s vs %s)" % (self._shape, other.shape))
        self._data_buf = other._data_buf
        self.data = other.data.reshape(self._shape)

    def share_diff(self, other):
        if other.count != self.count:
            raise CaffeError("share_diff: counts differ (%s vs %s)" % (self._shape, other.shape))
        self._diff_buf = other._diff_buf
        self._diff = other.diff.reshape(self._shape)

    # -- proto ---------------------------------------------------------
    def from_proto(self, proto, reshape=True, name="blob"):
        """Load a BlobProto (``shape``, or the legacy num/channels/height/width) as Caffe's FromProto.

        With ``reshape=False`` the blob keeps its shape and only the value
        count must agree (callers such as ``Net.copy_from`` check shapes first).
        """
        from netspec.errors import ProtoError
        from netspec.io import blobproto_to_array
        try:
            data = blobproto_to_array(proto)
            diff = blobproto_to_array(proto, return_diff=True) if (proto.diff or proto.double_diff) else None
        except ProtoError as e:
            raise CaffeError("%s: %s" % (name, e)) from None
        if reshape:
            self.reshape(data.shape)
        elif data.size != self.count:
            raise CaffeError("%s: shape mismatch, blob is %s but proto holds %s" % (name, self._shape, data.shape))
        self.data[...] = self.xp.asarray(data.reshape(self._shape))
        if diff is not None:
            self.diff[...] = self.xp.asarray(diff.reshape(self._shape))

    def to_proto(self, write_diff=False):
        """A BlobProto with ``shape`` and the data (and diff): the arrays go in as packed
        bytes, not as Python lists (a list of floats takes ~8x the array's memory)."""
        from netspec.io import array_to_blobproto
        return array_to_blobproto(to_numpy(self.data), to_numpy(self.diff) if write_diff else None)

    def __repr__(self):
        return "<Blob shape=%s dtype=float32>" % (self._shape,)
