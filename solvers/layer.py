"""Caffe's layer contract and the registry from type string to class.

A layer is one class registered under its Caffe type string::

    @register_layer("ReLU")
    class ReLULayer(Layer):
        def reshape(self, bottom, top): top[0].reshape_like(bottom[0])
        def forward(self, bottom, top): ...
        def backward(self, top, propagate_down, bottom): ...

Conventions shared by every layer (as in Caffe):

* ``bottom`` and ``top`` are lists of Blobs; a top may be the very same Blob
  as a bottom (in-place), so a layer that needs its input in backward must
  keep a copy when ``top[0] is bottom[0]``.
* ``backward`` writes (overwrites) bottom diffs where ``propagate_down[i]``,
  and ADDS to parameter diffs (``self.blobs[j].diff``) where
  ``self.param_propagate_down[j]``; the solver zeroes parameter diffs, so
  gradient accumulation (``iter_size``) and shared parameters just work.
* Loss layers read their loss weight from ``top[0].diff`` (a scalar the Net
  fills before backward), exactly as Caffe does.
* Math uses ``xp = self.xp_of(bottom[0])``, never a hard numpy import, so the
  same code runs on CuPy.
"""

from netspec.errors import LayerError
from solvers.backend import get_array_module

LAYER_REGISTRY = {}


def register_layer(type_name):
    """Class decorator: register a Layer subclass under a Caffe type string."""
    def wrap(cls):
        if type_name in LAYER_REGISTRY and LAYER_REGISTRY[type_name] is not cls:
            raise LayerError("layer type %r registered twice (%s and %s)"
                             % (type_name, LAYER_REGISTRY[type_name].__name__, cls.__name__))
        LAYER_REGISTRY[type_name] = cls
        cls.type_name = type_name
        return cls
    return wrap


def layer_type_list():
    import solvers.layers  # noqa: F401  (fills the registry)
    return sorted(LAYER_REGISTRY)


def create_layer(layer_param):
    """Instantiate the registered class for ``layer_param.type``."""
    import solvers.layers  # noqa: F401
    cls = LAYER_REGISTRY.get(layer_param.type)
    if cls is None:
        from netspec.net_spec import _suggest   # NetSpec's: a match ignoring case comes first
        hint = _suggest(layer_param.type, LAYER_REGISTRY)
        raise LayerError("layer %r: unknown layer type %r.%s Known types: %s"
                         % (layer_param.name, layer_param.type, hint, ", ".join(sorted(LAYER_REGISTRY))))
    return cls(layer_param)


class Layer:
    """Base class: Caffe's SetUp = check blob counts, layer_setup, reshape."""

    # Blob-count constraints, as Caffe's ExactNumBottomBlobs() & co. None = no constraint.
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    equal_num_bottom_top = False
    auto_top_blobs = False   # Caffe's AutoTopBlobs: the net creates missing tops up to min/exact.
    is_loss = False          # loss layers get loss_weight 1 on their first top by default
    type_name = None

    def __init__(self, layer_param):
        self.layer_param = layer_param
        self.name = layer_param.name
        self.phase = layer_param.phase
        self.blobs = []                 # learnable parameters (Blobs)
        self.param_propagate_down = []  # per parameter blob: compute its gradient?

    @property
    def type(self):
        return self.layer_param.type or self.type_name

    # -- the contract ---------------------------------------------------
    def setup(self, bottom, top):
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)

    def layer_setup(self, bottom, top):
        """One-time set-up: read parameters, create ``self.blobs``."""

    def reshape(self, bottom, top):
        raise NotImplementedError("%s must implement reshape" % type(self).__name__)

    def forward(self, bottom, top):
        raise NotImplementedError("%s must implement forward" % type(self).__name__)

    def backward(self, top, propagate_down, bottom):
        """Default: a layer with nothing to propagate (data layers, Silence...)."""

    def allow_force_backward(self, bottom_index):
        return True

    # -- resumable state (data layers' read position) --------------------
    def get_state(self):
        """JSON-able state a snapshot must keep to resume exactly (None: nothing)."""
        return None

    def set_state(self, state):
        """Restore what ``get_state`` returned."""

    # -- helpers --------------------------------------------------------
    @staticmethod
    def xp_of(blob):
        return get_array_module(blob.data)

    def error(self, message):
        """A LayerError that names this layer and its type."""
        return LayerError("layer %r (type %s): %s" % (self.name, self.type, message))

    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)

        def check(what, n, exact, lo, hi):
            if exact is not None and n != exact:
                raise self.error("takes exactly %d %s blob(s), got %d" % (exact, what, n))
            if lo is not None and n < lo:
                raise self.error("takes at least %d %s blob(s), got %d" % (lo, what, n))
            if hi is not None and n > hi:
                raise self.error("takes at most %d %s blob(s), got %d" % (hi, what, n))
        check("bottom", nb, self.exact_num_bottom, self.min_bottom, self.max_bottom)
        check("top", nt, self.exact_num_top, self.min_top, self.max_top)
        if self.equal_num_bottom_top and nb != nt:
            raise self.error("needs as many tops as bottoms, got %d bottoms and %d tops" % (nb, nt))

    def __repr__(self):
        return "<%s layer %r>" % (self.type, self.name)
