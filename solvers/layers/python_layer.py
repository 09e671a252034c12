"""Caffe's "Python" layer type: a layer written in Python by the user.

A net names the code with ``python_param { module: "my_layers" layer: "MyLayer"
param_str: "..." }``. As pycaffe does, the module is imported by name (from
``sys.path`` as it stands, plus the current working directory), the class is
instantiated with the LayerParameter, ``param_str`` and ``phase`` are set on
the instance, then ``setup(bottom, top)`` and ``reshape(bottom, top)`` run;
``forward`` and ``backward`` are delegated. The user's class derives from
:class:`PythonLayer` (re-exported as ``caffe.Layer``)::

    class Double(PythonLayer):
        def setup(self, bottom, top):
            self.factor = float(self.param_str or 2)
        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].shape)
        def forward(self, bottom, top):
            top[0].data[...] = self.factor * bottom[0].data
        def backward(self, top, propagate_down, bottom):
            if propagate_down[0]:
                bottom[0].diff[...] = self.factor * top[0].diff

Learnable parameters go in ``self.blobs`` (``self.blobs.add_blob(*shape)``);
the net treats them like any layer's parameters. ``share_in_parallel`` is
read but has no effect (there is one solver process).

``python_param.layer`` must name a class derived from :class:`PythonLayer`:
anything else (``os.abort``, ``sys.exit``) is refused before it is called.
An exception raised by the user's code comes out as an error that is both a
LayerError naming the layer and an instance of the user's exception type
(``except RuntimeError`` still catches it, as in pycaffe), with the original
exception (and its traceback) chained as ``__cause__``. ``sys.exit`` in user
code is a LayerError too: a layer cannot end the program (KeyboardInterrupt
passes through as it is).
"""
import importlib
import inspect
import os
import sys

from netspec.errors import LayerError
from solvers.blob import Blob
from solvers.layer import Layer, register_layer


class BlobVec(list):
    """A Python layer's parameter blobs (pycaffe's ``layer.blobs``)."""

    def add_blob(self, *shape):
        """Append a new zero-filled float32 Blob of ``shape`` and return it."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        blob = Blob(tuple(int(s) for s in shape))
        self.append(blob)
        return blob


class PythonLayer:
    """Base class for user layers (pycaffe's ``caffe.Layer``).

    Override ``setup`` (read ``self.param_str``, check bottoms, add blobs),
    ``reshape`` (shape the tops; called before every forward), ``forward`` and,
    if the layer needs gradients, ``backward``. ``self.phase`` is the net's
    phase (0 = TRAIN, 1 = TEST); ``self.blobs`` holds learnable parameters.
    """

    type = "Python"

    def __init__(self, layer_param=None):
        self.layer_param = layer_param
        self.param_str = layer_param.python_param.param_str if layer_param is not None else ""
        self.phase = layer_param.phase if layer_param is not None else 0
        self.blobs = BlobVec()

    def setup(self, bottom, top):
        """One-time set-up; the default does nothing."""

    def reshape(self, bottom, top):
        raise NotImplementedError("%s must define reshape(bottom, top) to shape its tops"
                                  % type(self).__name__)

    def forward(self, bottom, top):
        raise NotImplementedError("%s must define forward(bottom, top)" % type(self).__name__)

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError("%s defines no backward(top, propagate_down, bottom); write one, or "
                                  "keep gradients away from it (propagate_down: false)" % type(self).__name__)


_LIKE = {}


def layer_error_like(error, message):
    """A LayerError saying ``message`` that is also an instance of ``type(error)``.

    The class is made once per user exception type, deriving from both; the
    user's ``__init__`` is not called (its arguments are unknown). Where the
    two cannot be combined (SystemExit, a type with its own ``__new__`` or
    layout), a plain LayerError is returned.
    """
    cls = type(error)
    if not isinstance(error, Exception):
        return LayerError(message)
    like = _LIKE.get(cls)
    if like is None:
        if issubclass(cls, LayerError):
            like = cls
        else:
            try:
                like = type(cls.__name__, (cls, LayerError),
                            {"__module__": cls.__module__, "__str__": _message,
                             "__doc__": "%s raised by a Python layer; also a LayerError." % cls.__name__})
            except TypeError:
                like = LayerError
        _LIKE[cls] = like
    try:
        made = like.__new__(like, message)
        BaseException.__init__(made, message)
    except Exception:
        return LayerError(message)
    return made


def _message(self):
    return str(self.args[0]) if self.args else ""


def _user_failure(e, what):
    """The error for exception ``e`` raised by user code doing ``what`` (KeyboardInterrupt is re-raised)."""
    if isinstance(e, KeyboardInterrupt):
        raise e
    if isinstance(e, SystemExit):
        return LayerError("%s called sys.exit(%r); a layer cannot end the program, raise an exception "
                          "instead" % (what, e.code))
    return layer_error_like(e, "%s raised %s: %s" % (what, type(e).__name__, e))


def _import_module(layer, name, class_name):
    """Import the user's module by name, with the working directory on sys.path as pycaffe users expect."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise layer.error(
                "python_param.module %r (holding layer class %r) not found. Python looked in the working "
                "directory %s and sys.path (%s); put %s.py there or add its folder to PYTHONPATH"
                % (name, class_name, cwd, os.pathsep.join(p or "." for p in sys.path),
                   name.replace(".", os.sep))) from e
        raise layer.error("importing python_param.module %r (for class %r) failed: %s" % (name, class_name, e)) from e
    except BaseException as e:
        raise _user_failure(e, "layer %r (type %s): importing python_param.module %r (for class %r)"
                            % (layer.name, layer.type, name, class_name)) from e


def _instantiate(layer, cls, layer_param, where):
    """Create the user's object: with the LayerParameter when its constructor takes one (pycaffe's way)."""
    try:
        inspect.signature(cls).bind(layer_param)
        args = (layer_param,)
    except (TypeError, ValueError):
        args = ()
    try:
        return cls(*args)
    except BaseException as e:
        raise _user_failure(e, "layer %r (type %s): creating %s" % (layer.name, layer.type, where)) from e


@register_layer("Python")
class PythonLayerHost(Layer):
    """Caffe's PythonLayer: hosts the user's object and delegates the layer contract to it."""

    def __init__(self, layer_param):
        self._blobs = []
        self._ppd = []
        super().__init__(layer_param)
        pp = layer_param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both module and layer (got module %r, layer %r)"
                             % (pp.module, pp.layer))
        module = _import_module(self, pp.module, pp.layer)
        cls = getattr(module, pp.layer, None)
        where = "%s.%s" % (pp.module, pp.layer)
        self.source_file = getattr(module, "__file__", "?")
        if cls is None:
            classes = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_"))
            raise self.error("module %r (%s) has no class %r; it defines: %s"
                             % (pp.module, getattr(module, "__file__", "?"), pp.layer, ", ".join(classes) or "none"))
        if not (inspect.isclass(cls) and issubclass(cls, PythonLayer)):
            what = ("a class, but not derived from caffe.Layer" if inspect.isclass(cls)
                    else "not a class (it is %s)" % type(cls).__name__)
            raise self.error("python_param names %s, which is %s; it must name a layer class written "
                             "as 'class %s(caffe.Layer)' (solvers.layers.python_layer.PythonLayer)"
                             % (where, what, pp.layer))
        self.where = where
        self.impl = _instantiate(self, cls, layer_param, where)
        self.impl.param_str = pp.param_str
        self.impl.phase = self.phase
        existing = getattr(self.impl, "blobs", None)
        if not isinstance(existing, BlobVec):
            self.impl.blobs = BlobVec(existing or [])

    # The user's blobs are the layer's blobs: the net and solvers see what setup added.
    @property
    def blobs(self):
        impl = self.__dict__.get("impl")
        return impl.blobs if impl is not None else self._blobs

    @blobs.setter
    def blobs(self, value):
        impl = self.__dict__.get("impl")
        if impl is not None:
            impl.blobs = value if isinstance(value, BlobVec) else BlobVec(value)
        else:
            self._blobs = value

    @property
    def param_propagate_down(self):
        while len(self._ppd) < len(self.blobs):
            self._ppd.append(True)
        return self._ppd

    @param_propagate_down.setter
    def param_propagate_down(self, value):
        self._ppd = list(value)

    def _call(self, method, *args):
        try:
            return getattr(self.impl, method)(*args)
        except BaseException as e:
            raise _user_failure(e, "layer %r (type %s): %s.%s (user code in %s)"
                                % (self.name, self.type, self.where, method, self.source_file)) from e

    def setup(self, bottom, top):
        self._call("setup", bottom, top)
        self._call("reshape", bottom, top)

    def reshape(self, bottom, top):
        self._call("reshape", bottom, top)

    def forward(self, bottom, top):
        self._call("forward", bottom, top)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", top, list(propagate_down), bottom)
