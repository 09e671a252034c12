"""The "Python" layer type: loading the user's module, the pycaffe Layer contract, errors."""
import sys
import textwrap
import uuid

import numpy as np
import pytest
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import LayerError
from solvers.blob import Blob
from solvers.layer import create_layer
from solvers.layers.python_layer import PythonLayer

LAYERS = '''
from solvers.layers.python_layer import PythonLayer

class Scaled(PythonLayer):
    """top = w * bottom with one learnable scalar w (initialised from param_str)."""
    calls = []

    def setup(self, bottom, top):
        self.calls.append("setup")
        if len(bottom) != 1:
            raise Exception("Scaled needs one bottom")
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str)

    def reshape(self, bottom, top):
        self.calls.append("reshape")
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data * top[0].diff


class Broken(PythonLayer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        raise ValueError("boom in forward")


class Plain:
    """No base class: refused, as Caffe refuses it (only caffe.Layer subclasses are layers)."""
    def setup(self, bottom, top):
        pass


class NoArg(PythonLayer):
    """A constructor without the LayerParameter argument: still usable."""
    def __init__(self):
        super().__init__()

    def reshape(self, bottom, top):
        top[0].reshape(2)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase


class Fussy(Exception):
    """A user exception whose constructor needs two arguments."""
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


class Raising(PythonLayer):
    """Raises, in the method param_str names, the exception the test module sets in RAISE."""
    RAISE = None

    def setup(self, bottom, top):
        if self.param_str == "setup":
            raise self.RAISE

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        raise self.RAISE
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module with user layers in the working directory (not on sys.path yet), unique per test."""
    name = "user_layers_%s" % uuid.uuid4().hex[:8]
    (tmp_path / (name + ".py")).write_text(LAYERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


def python_lp(module, cls, param_str="", phase=caffe_pb2.TRAIN):
    lp = caffe_pb2.LayerParameter(name="py", type="Python", phase=phase)
    lp.python_param.module = module
    lp.python_param.layer = cls
    lp.python_param.param_str = param_str
    return lp


def test_user_layer_runs_with_caffe_contract(user_module):
    layer = create_layer(python_lp(user_module, "Scaled", "2.5", caffe_pb2.TEST))
    impl = layer.impl
    assert isinstance(impl, PythonLayer)
    assert impl.param_str == "2.5" and impl.phase == caffe_pb2.TEST
    x = Blob((2, 3))
    x.data[...] = np.arange(6).reshape(2, 3)
    top = [Blob()]
    layer.setup([x], top)
    assert impl.calls[:2] == ["setup", "reshape"]
    assert len(layer.blobs) == 1 and layer.blobs[0] is impl.blobs[0]   # the net sees the user's blobs
    assert layer.param_propagate_down == [True]
    layer.forward([x], top)
    np.testing.assert_allclose(top[0].data, 2.5 * x.data)
    top[0].diff[...] = 1
    layer.backward(top, [True], [x])
    np.testing.assert_allclose(x.diff, 2.5)
    np.testing.assert_allclose(layer.blobs[0].diff, [15.0])


def test_class_without_constructor_argument(user_module):
    layer = create_layer(python_lp(user_module, "NoArg", phase=caffe_pb2.TEST))
    top = [Blob()]
    layer.setup([], top)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, [1, 1])
    assert list(layer.blobs) == []


@pytest.mark.parametrize("module, name, what", [
    ("os", "abort", "not a class"), ("sys", "exit", "not a class"), ("os", "getcwd", "not a class"),
    ("os", "sep", "not a class"), ("collections", "OrderedDict", "not derived from caffe.Layer")])
def test_only_layer_classes_are_called(module, name, what):
    """os.abort would kill the interpreter if it were called: it is refused by its type."""
    with pytest.raises(LayerError) as err:
        create_layer(python_lp(module, name))
    msg = str(err.value)
    assert "'py'" in msg and "%s.%s" % (module, name) in msg and what in msg and "caffe.Layer" in msg


def test_duck_typed_class_is_refused(user_module):
    with pytest.raises(LayerError, match="not derived from caffe.Layer"):
        create_layer(python_lp(user_module, "Plain"))


def _raising(user_module, exc, where="forward"):
    layer = create_layer(python_lp(user_module, "Raising", where))
    layer.impl.RAISE = exc
    top = [Blob()]
    layer.setup([], top)
    if where == "forward":
        layer.forward([], top)


@pytest.mark.parametrize("where", ["setup", "forward"])
@pytest.mark.parametrize("exc, kind", [
    (RuntimeError("user says no"), RuntimeError), (KeyError("missing"), KeyError),
    (OSError(2, "No such file"), OSError), (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), ValueError),
    (ZeroDivisionError("divided"), ArithmeticError)])
def test_user_exception_type_still_catches_and_the_layer_is_named(user_module, where, exc, kind):
    """pycaffe's test: an exception from setup/forward is caught by ``except RuntimeError``."""
    try:
        _raising(user_module, exc, where)
    except kind as e:
        assert isinstance(e, LayerError) and isinstance(e, type(exc))
        assert "'py'" in str(e) and "Raising.%s" % where in str(e) and type(exc).__name__ in str(e)
        assert e.__cause__ is exc
    else:
        pytest.fail("nothing raised")


def _imported(name):
    """The user module, imported as the Python layer imports it (from the working directory)."""
    import importlib
    import os
    sys.path.append(os.getcwd())
    return importlib.import_module(name)


def test_user_exception_with_its_own_constructor(user_module):
    mod = _imported(user_module)
    with pytest.raises(mod.Fussy) as err:
        _raising(user_module, mod.Fussy(7, "detail"))
    assert isinstance(err.value, LayerError) and "'py'" in str(err.value) and "7" in str(err.value)


@pytest.mark.parametrize("where", ["setup", "forward"])
def test_sys_exit_in_user_code_is_a_named_error(user_module, where):
    with pytest.raises(LayerError) as err:
        _raising(user_module, SystemExit(3), where)
    assert not isinstance(err.value, SystemExit)
    assert "sys.exit(3)" in str(err.value) and "'py'" in str(err.value)


def test_keyboard_interrupt_passes_through(user_module):
    with pytest.raises(KeyboardInterrupt):
        _raising(user_module, KeyboardInterrupt())


def test_missing_module_names_layer_module_and_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LayerError) as err:
        create_layer(python_lp("no_such_module_xyz", "Foo"))
    msg = str(err.value)
    assert "'py'" in msg and "no_such_module_xyz" in msg and "'Foo'" in msg
    assert "PYTHONPATH" in msg and str(tmp_path) in msg
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


def test_missing_class_lists_what_the_module_has(user_module):
    with pytest.raises(LayerError) as err:
        create_layer(python_lp(user_module, "Nope"))
    msg = str(err.value)
    assert "'Nope'" in msg and user_module in msg and "Scaled" in msg and "Broken" in msg


def test_module_that_fails_to_import(tmp_path, monkeypatch):
    (tmp_path / "bad_import_mod.py").write_text("import numpy\nraise RuntimeError('half-written module')\n")
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(LayerError, match="half-written module") as err:
            create_layer(python_lp("bad_import_mod", "X"))
        assert isinstance(err.value.__cause__, RuntimeError)
    finally:
        sys.modules.pop("bad_import_mod", None)


def test_user_exceptions_become_layer_errors_with_the_cause_chained(user_module):
    layer = create_layer(python_lp(user_module, "Broken"))
    x, top = Blob((2,)), [Blob()]
    layer.setup([x], top)
    with pytest.raises(LayerError) as err:
        layer.forward([x], top)
    assert "'py'" in str(err.value) and "Broken.forward" in str(err.value) and "boom in forward" in str(err.value)
    cause = err.value.__cause__
    assert isinstance(cause, ValueError)
    assert cause.__traceback__ is not None   # the user's traceback is kept
    with pytest.raises(LayerError, match="needs one bottom"):
        create_layer(python_lp(user_module, "Scaled", "1")).setup([], [Blob()])
    with pytest.raises(LayerError, match="backward"):   # the base class has no gradient to offer
        layer.backward(top, [True], [x])


def test_python_param_must_name_module_and_layer():
    with pytest.raises(LayerError, match="module and layer"):
        create_layer(caffe_pb2.LayerParameter(name="py", type="Python"))


def test_python_layer_inside_a_net(user_module):
    net_mod = pytest.importorskip("solvers.net")
    text = textwrap.dedent('''
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
        layer { name: "py" type: "Python" bottom: "x" top: "y"
                python_param { module: "%s" layer: "Scaled" param_str: "3" } }
        layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }
    ''' % user_module)
    net = net_mod.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    net.blobs["x"].data[...] = [[1, 2], [3, 4]]
    assert net.forward_backward() == pytest.approx(30.0)
    np.testing.assert_allclose(net.params["py"][0].diff, [10.0])
    assert net.learnable_params[0] is net.params["py"][0]


def test_user_runtime_error_escapes_net_construction_as_runtime_error(user_module, tmp_path):
    """As pycaffe's test_python_layer: caffe.Net(...) raises RuntimeError for a failing setup."""
    net_mod = pytest.importorskip("solvers.net")
    _imported(user_module).Raising.RAISE = RuntimeError("setup refuses")
    text = ('layer { name: "py" type: "Python" top: "y" '
            'python_param { module: "%s" layer: "Raising" param_str: "setup" } }' % user_module)
    with pytest.raises(RuntimeError) as err:
        net_mod.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    assert isinstance(err.value, LayerError) and "'py'" in str(err.value) and "setup refuses" in str(err.value)
    text = text.replace('param_str: "setup"', 'param_str: ""')
    net = net_mod.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    sys.modules[user_module].Raising.RAISE = RuntimeError("forward refuses")
    with pytest.raises(RuntimeError, match="'py'.*forward refuses"):
        net.forward()


def test_pycaffe_exception_layer_case(user_module, tmp_path):
    """pycaffe's own test: ``self.assertRaises(RuntimeError, caffe.Net, net_file, caffe.TRAIN)``."""
    caffe = pytest.importorskip("solvers.caffe")
    _imported(user_module).Raising.RAISE = RuntimeError("exception layer")
    net_file = tmp_path / "exception.prototxt"
    net_file.write_text('name: "pythonnet" force_backward: true input: "data" input_shape { dim: 10 dim: 9 '
                        'dim: 8 } layer { type: "Python" name: "layer" bottom: "data" top: "top" '
                        'python_param { module: "%s" layer: "Raising" param_str: "setup" } }' % user_module)
    with pytest.raises(RuntimeError) as err:
        caffe.Net(str(net_file), caffe.TRAIN)
    assert "'layer'" in str(err.value) and "exception layer" in str(err.value)
