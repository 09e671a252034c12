"""``import caffe`` as pycaffe code writes it: the surface of BVLC's python/caffe/__init__.py,
one set of module objects under both names, coexistence with a real pycaffe, and the pycaffe
behaviours BVLC's own tests check (test_io, test_net, test_solver, test_net_spec, test_coord_map,
test_nccl), written here in their style with a plain ``import caffe``."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import caffe
from caffe import layers as L, params as P
from caffe.proto import caffe_pb2

from helpers import simple_net_file

ROOT = Path(__file__).resolve().parents[1]

# The names BVLC master's python/caffe/__init__.py imports into ``caffe``.
PYCAFFE_NAMES = """Net SGDSolver NesterovSolver AdaGradSolver RMSPropSolver AdaDeltaSolver AdamSolver
    NCCL Timer init_log log set_mode_cpu set_mode_gpu set_device Layer get_solver layer_type_list
    set_random_seed solver_count set_solver_count solver_rank set_solver_rank set_multiprocess
    has_nccl __version__ TRAIN TEST Classifier Detector io layers params NetSpec to_proto""".split()


# -- the package ------------------------------------------------------------------------------

def test_every_name_of_pycaffes_init_is_there():
    missing = [name for name in PYCAFFE_NAMES if not hasattr(caffe, name)]
    assert missing == []
    assert caffe.TRAIN == caffe_pb2.TRAIN == 0 and caffe.TEST == caffe_pb2.TEST == 1
    assert issubclass(caffe.Classifier, caffe.Net) and issubclass(caffe.Detector, caffe.Net)


def test_submodules_are_the_facades_own_objects():
    import caffe.classifier
    import caffe.coord_map
    import caffe.detector
    import caffe.draw
    import caffe.io
    import caffe.net_spec
    import caffe.proto.caffe_pb2
    import netspec.caffe_pb2
    import solvers.caffe
    assert caffe is solvers.caffe
    for name in ("io", "draw", "net_spec", "coord_map", "classifier", "detector", "proto"):
        assert sys.modules["caffe." + name] is sys.modules["solvers.caffe." + name] is getattr(caffe, name)
    assert caffe_pb2 is caffe.proto.caffe_pb2 is netspec.caffe_pb2
    assert caffe.Classifier is caffe.classifier.Classifier and caffe.Detector is caffe.detector.Detector
    assert L is caffe.net_spec.layers and P is caffe.net_spec.params


def test_a_submodule_imported_first_is_still_the_facades():
    """``from caffe.proto import caffe_pb2`` / ``import caffe.io`` as a program's first import."""
    code = """
        from caffe.proto import caffe_pb2
        import caffe.io, caffe.coord_map
        import netspec.caffe_pb2, solvers.caffe
        assert caffe_pb2 is netspec.caffe_pb2
        assert caffe.io is solvers.caffe.io and caffe.coord_map is solvers.caffe.coord_map
        print("same")
    """
    res = _python(code, ROOT, [ROOT])
    assert res.returncode == 0 and res.stdout.strip() == "same", res.stderr


def test_toolkit_marker_says_which_caffe_this_is():
    assert caffe.toolkit.startswith("caffe-toolkit ")
    assert Path(caffe.__file__).resolve().parent == ROOT / "solvers" / "caffe"


FAKE_PYCAFFE = '''
"""A stand-in for BVLC's pycaffe: records what --backend caffe asks of it."""
import os
REAL_PYCAFFE = True
calls = []
def set_mode_cpu(): calls.append("set_mode_cpu")
def set_mode_gpu(): calls.append("set_mode_gpu")
def set_device(i): calls.append("set_device %d" % i)
class _Net:
    def copy_from(self, path): calls.append("copy_from " + path)
class _Solver:
    def __init__(self, path):
        self.net, self.test_nets = _Net(), []
        calls.append("get_solver " + path)
    def restore(self, path): calls.append("restore " + path)
    def solve(self):
        calls.append("solve")
        with open(os.environ["FAKE_PYCAFFE_LOG"], "w") as f:
            f.write("\\n".join(calls))
def get_solver(path): return _Solver(path)
'''


@pytest.fixture
def fake_pycaffe(tmp_path):
    """A folder holding a package ``caffe`` that is not this toolkit's."""
    (tmp_path / "pycaffe" / "caffe").mkdir(parents=True)
    (tmp_path / "pycaffe" / "caffe" / "__init__.py").write_text(FAKE_PYCAFFE)
    return tmp_path / "pycaffe"


def _python(code, cwd, pythonpath, **env):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(cwd),
                          capture_output=True, text=True, timeout=120, env=env)


def test_a_real_pycaffe_on_pythonpath_wins(fake_pycaffe, tmp_path):
    """PYTHONPATH comes before site-packages, whichever way this toolkit was pip-installed."""
    res = _python("import caffe; print(caffe.__file__, getattr(caffe, 'REAL_PYCAFFE', False))",
                  tmp_path, [fake_pycaffe])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(fake_pycaffe / "caffe" / "__init__.py"), "True"]


def test_backend_caffe_looks_past_our_own_caffe(fake_pycaffe, tmp_path):
    """tools/solve.py puts the checkout first on sys.path: --backend caffe must still find pycaffe."""
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 max_iter: 1\n')
    record = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(fake_pycaffe)]),
               FAKE_PYCAFFE_LOG=str(record))
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "solve.py"), "train", "-solver",
                          "solver.prototxt", "--backend", "caffe"], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert record.read_text().split("\n") == ["set_mode_cpu", "get_solver solver.prototxt", "solve"]
    assert "Using BVLC Caffe's pycaffe from %s" % (fake_pycaffe / "caffe" / "__init__.py") in res.stderr


SCHEMA_OF_ITS_OWN = '''
from google.protobuf import descriptor_pb2, descriptor_pool
_file = descriptor_pb2.FileDescriptorProto(name="caffe.proto", package="caffe")
_file.message_type.add(name="BlobShape")
descriptor_pool.Default().AddSerializedFile(_file.SerializeToString())
'''


def test_backend_caffe_trains_a_pycaffe_whose_schema_clashes_with_ours_in_its_own_process(tmp_path):
    """protobuf holds one 'caffe.proto' per process: such a pycaffe runs in a fresh interpreter."""
    (tmp_path / "pycaffe" / "caffe").mkdir(parents=True)
    (tmp_path / "pycaffe" / "caffe" / "__init__.py").write_text(SCHEMA_OF_ITS_OWN + FAKE_PYCAFFE)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 max_iter: 1\n')
    (tmp_path / "w.caffemodel").write_bytes(b"")
    record = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path / "pycaffe")]),
               FAKE_PYCAFFE_LOG=str(record))
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "solve.py"), "train", "-solver",
                          "solver.prototxt", "--backend", "caffe", "-weights", "w.caffemodel"],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "'caffe.proto'" in res.stderr and "separate Python process" in res.stderr
    assert record.read_text().split("\n") == ["set_mode_cpu", "get_solver solver.prototxt",
                                               "copy_from w.caffemodel", "solve"]
    assert "Optimization Done." in res.stderr


def test_backend_caffe_never_hands_the_solver_to_ourselves(monkeypatch):
    """With only this toolkit's caffe importable, the answer is a clear error, not ourselves."""
    from solvers import caffe_backend
    from netspec.errors import CaffeError
    assert caffe_backend.is_toolkit_caffe(caffe)
    monkeypatch.setattr(sys, "path", [str(ROOT)])
    with pytest.raises(CaffeError, match="only this toolkit's own caffe package") as e:
        caffe_backend.import_pycaffe()
    assert "PYTHONPATH" in str(e.value) and sys.modules["caffe"] is caffe


# -- caffe.io (BVLC's test_io.py) -------------------------------------------------------------

def test_blobproto_to_array_old_and_new_shapes():
    import numpy as np
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.arange(100.0))
    blob.num, blob.channels, blob.height, blob.width = (1, 1, 10, 10)
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 10, 10)
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.arange(100.0))
    blob.shape.dim.extend([10, 10])
    arr = caffe.io.blobproto_to_array(blob)
    assert arr.shape == (10, 10) and arr[3, 4] == 34


def test_blobproto_without_shape_is_a_value_error_as_in_pycaffe():
    """BVLC's test_no_shape: many values and no shape raise ValueError; one value is a scalar."""
    import numpy as np
    from netspec.errors import ProtoError
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100))
    with pytest.raises(ValueError, match="100 values"):
        caffe.io.blobproto_to_array(blob)
    with pytest.raises(ProtoError):
        caffe.io.blobproto_to_array(blob)
    scalar = caffe_pb2.BlobProto()
    scalar.data.append(123)
    assert caffe.io.blobproto_to_array(scalar) == 123
    assert caffe.io.blobproto_to_array(scalar).shape == ()


def test_array_to_datum_without_label_is_smaller():
    import numpy as np
    with_label = caffe.io.array_to_datum(np.ones((10, 10, 3)), label=1)
    without = caffe.io.array_to_datum(np.ones((10, 10, 3)))
    assert len(with_label.SerializeToString()) > len(without.SerializeToString())


# -- NCCL, Timer, log (BVLC's test_nccl.py and _caffe.cpp) -------------------------------------

def test_no_nccl_here_and_nccl_says_so():
    from netspec.errors import CaffeError
    assert caffe.has_nccl() is False
    with pytest.raises(CaffeError, match="no NCCL"):
        caffe.NCCL.new_uid()
    with pytest.raises(CaffeError, match="has_nccl"):
        caffe.NCCL(None, b"uid")
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(False)


def test_timer_measures_from_start_to_stop():
    ticks = iter([10.0, 10.25, 11.0, 11.5])
    timer = caffe.Timer(clock=lambda: next(ticks))
    assert timer.ms == 0.0                       # never started
    timer.start()
    timer.stop()
    assert timer.ms == pytest.approx(250.0)
    timer.start()
    assert timer.ms == pytest.approx(500.0)      # reading a running timer stops it
    assert caffe.Timer().ms == 0.0


def test_log_writes_a_caffe_info_line(caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="caffe"):
        caffe.log("hello from pycaffe code")
    assert ("caffe", logging.INFO, "hello from pycaffe code") in caplog.record_tuples


# -- Net and Solver (BVLC's test_net.py, test_solver.py) ---------------------------------------



def test_save_hdf5_and_load_hdf5_round_trip(tmp_path):
    """BVLC's test_save_hdf5 (a temporary name without .h5), plus the file's layout."""
    h5py = pytest.importorskip("h5py", reason="HDF5 weights need h5py")
    import numpy as np
    net = caffe.Net(simple_net_file(tmp_path / "net.prototxt"), caffe.TRAIN)
    weights = tmp_path / "weights_no_extension"
    net.save_hdf5(str(weights))
    with h5py.File(weights, "r") as f:
        assert sorted(f) == ["data"]                          # no /diff: Caffe writes it only on request
        assert sorted(f["data"]) == sorted(net.layer_names)   # a group per layer, empty when no blobs
        assert sorted(f["data/conv"]) == ["0", "1"] and len(f["data/loss"]) == 0
        assert f["data/ip/0"].shape == net.params["ip"][0].data.shape
        assert f["data/conv/1"].dtype == np.float32
    other = caffe.Net(simple_net_file(tmp_path / "net2.prototxt"), caffe.TRAIN)
    assert not np.array_equal(other.params["ip"][0].data, net.params["ip"][0].data)
    other.load_hdf5(str(weights))
    for name in net.params:
        for mine, theirs in zip(net.params[name], other.params[name]):
            assert np.abs(mine.data - theirs.data).sum() == 0


SHARED = """name: 'shared'
layer { type: 'Input' name: 'data' top: 'data' input_param { shape { dim: 2 dim: 4 } } }
layer { type: 'InnerProduct' name: 'ip1' bottom: 'data' top: 'ip1' param { name: 'w' }
  inner_product_param { num_output: 4 bias_term: false weight_filler { type: 'gaussian' } } }
layer { type: 'InnerProduct' name: 'ip2' bottom: 'ip1' top: 'ip2' param { name: 'w' }
  inner_product_param { num_output: 4 bias_term: false weight_filler { type: 'gaussian' } } }
"""


def test_hdf5_weights_of_shared_params_are_written_once(tmp_path):
    """Caffe's ToHDF5 writes a shared blob under its owner only; loading fills the sharer too."""
    h5py = pytest.importorskip("h5py", reason="HDF5 weights need h5py")
    import numpy as np
    (tmp_path / "shared.prototxt").write_text(SHARED)
    net = caffe.Net(str(tmp_path / "shared.prototxt"), caffe.TEST)
    net.save_hdf5(str(tmp_path / "w.h5"))
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert list(f["data/ip1"]) == ["0"] and list(f["data/ip2"]) == []
    other = caffe.Net(str(tmp_path / "shared.prototxt"), caffe.TEST)
    other.params["ip1"][0].data[...] = 0
    other.load_hdf5(str(tmp_path / "w.h5"))
    assert np.array_equal(other.params["ip2"][0].data, net.params["ip1"][0].data)


def test_load_hdf5_of_another_net_names_the_layer(tmp_path):
    pytest.importorskip("h5py", reason="HDF5 weights need h5py")
    from netspec.errors import NetError
    net = caffe.Net(simple_net_file(tmp_path / "net.prototxt", num_output=13), caffe.TRAIN)
    net.save_hdf5(str(tmp_path / "w.h5"))
    wider = caffe.Net(simple_net_file(tmp_path / "wide.prototxt", num_output=7), caffe.TRAIN)
    with pytest.raises(NetError, match="layer 'ip'.*shape"):
        wider.load_hdf5(str(tmp_path / "w.h5"))


SOLVER = """train_net: "%s" test_net: "%s" test_iter: 2 test_interval: 1000
base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
display: 100 max_iter: 100 snapshot_after_train: false snapshot_prefix: "%s/model"
"""


@pytest.fixture
def solver(tmp_path):
    net = simple_net_file(tmp_path / "net.prototxt", num_output=13)
    (tmp_path / "solver.prototxt").write_text(SOLVER % (net, net, tmp_path))
    caffe.set_random_seed(7)
    return caffe.SGDSolver(str(tmp_path / "solver.prototxt"))


def test_add_callback_runs_at_caffes_points(solver):
    """on_start before forward/backward (diffs still cleared), on_gradients_ready after backward
    and before the update (diffs filled, weights not yet moved): Caffe's Solver::Step."""
    import numpy as np
    seen = []
    weights = solver.net.params["ip"][0]

    def on_start():
        seen.append(("start", solver.iter, float(np.abs(weights.diff).sum()), weights.data.copy()))

    def on_gradients_ready():
        seen.append(("ready", solver.iter, float(np.abs(weights.diff).sum()), weights.data.copy()))

    solver.add_callback(on_start, on_gradients_ready)
    solver.step(2)
    assert [(kind, it) for kind, it, _, _ in seen] == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]
    assert seen[0][2] == 0 and seen[1][2] > 0                   # backward ran in between
    assert np.array_equal(seen[0][3], seen[1][3])               # the update comes after "ready"
    assert not np.array_equal(seen[1][3], seen[2][3])           # ... and before the next start


def test_solver_basics_as_bvlc_tests_them(solver, tmp_path, monkeypatch):
    import numpy as np
    assert solver.iter == 0
    data = solver.net.layers[1].blobs[0].data
    data[...] = 0
    solver.net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()                                       # base_lr 0.01, no decay on zeros
    assert np.abs(data + 0.01).max() < 1e-7
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    solver.snapshot()
    assert (tmp_path / "model_iter_0.caffemodel").is_file()
    assert (tmp_path / "model_iter_0.solverstate").is_file()
    solver.solve()
    assert solver.iter == 100
    del solver
    assert all(np.isfinite(p.data.sum() + p.diff.sum()) for net in nets
               for ps in net.params.values() for p in ps)


# -- Python layers with param_str (BVLC's test_python_layer_with_param_str.py) ------------------

class SimpleParamLayer(caffe.Layer):
    """Multiplies by the number in its param_str."""

    def setup(self, bottom, top):
        self.value = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


def test_python_layer_with_param_str(tmp_path):
    import numpy as np
    path = tmp_path / "param_net.prototxt"
    path.write_text("""name: 'pythonnet' force_backward: true
    input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }
    layer { type: 'Python' name: 'mul10' bottom: 'data' top: 'mul10'
      python_param { module: '%s' layer: 'SimpleParamLayer' param_str: '10' } }
    layer { type: 'Python' name: 'mul2' bottom: 'mul10' top: 'mul2'
      python_param { module: '%s' layer: 'SimpleParamLayer' param_str: '2' } }"""
                    % (__name__, __name__))
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs["data"].data[...] = 1
    net.forward()
    assert np.all(net.blobs["mul2"].data == 20)
    net.blobs["mul2"].diff[...] = 1
    net.backward()
    assert np.all(net.blobs["data"].diff == 20)


# -- NetSpec (BVLC's test_net_spec.py) ---------------------------------------------------------

def test_a_tuple_bottom_is_a_type_error_and_a_netspec_error():
    from netspec.errors import NetSpecError
    data = L.DummyData(ntop=2, shape=[dict(dim=[1]), dict(dim=[1])])
    with pytest.raises(TypeError, match=r"^Silence layer: bottom 0 is not a Top \(type is <class 'tuple'>\)"):
        L.Silence(data, ntop=0)
    with pytest.raises(NetSpecError, match=r"unpack it .*L\.Silence\(\*tops"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)                   # each element of the tuple is a Top


def test_unknown_layer_type_is_a_public_error_class():
    from caffe.net_spec import NetSpecError, UnknownLayerTypeError
    from netspec import errors
    assert errors.UnknownLayerTypeError is UnknownLayerTypeError
    with pytest.raises(UnknownLayerTypeError, match="Convolution") as e:
        L.Convolutoin
    assert isinstance(e.value, NetSpecError) and isinstance(e.value, AttributeError)
    assert not hasattr(L, "NoSuchLayerType")


def test_netspec_prototxt_as_pycaffe_writes_it():
    """BVLC's test_net_spec.py lenet: layer order, names and auto-named tops."""
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    proto = n.to_proto()
    assert [l.name for l in proto.layer] == ["data", "conv1", "pool1", "ip1", "relu1", "ip2", "loss"]
    assert list(proto.layer[4].top) == ["ip1"]                 # in place


# -- caffe.coord_map (BVLC's test_coord_map.py) ------------------------------------------------

def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    """conv -> pool -> deconv, the pattern every coordinate-map test starts from."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [s * 2 for s in dstride] if isinstance(dstride, list) else dstride * 2
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=deconv_ks, stride=dstride, pad=dpad)
    return n


def test_coord_map_through_conv_pool_deconv():
    from caffe.coord_map import coord_map_from_to
    n = coord_net_spec()
    assert [x.tolist() if hasattr(x, "tolist") else x for x in coord_map_from_to(n.deconv, n.data)] \
        == [1, [1.0], [0.0]]                    # 2x pool, 2x deconv: identity
    n = coord_net_spec(pool=4, dstride=4)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, a, b) == (1, 1, -1)             # 4x: shifted by one


def test_coord_map_pass_through_padding_and_rect():
    from caffe.coord_map import coord_map_from_to
    n = coord_net_spec()
    base = coord_map_from_to(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.conv1x1 = L.Convolution(n.relu, num_output=10, kernel_size=1, stride=1, pad=0)
    for top in (n.relu, n.conv1x1):
        assert coord_map_from_to(top, n.data) == base
    pad = 7
    n = coord_net_spec(pad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (base[1], base[2] - pad)
    n = coord_net_spec(dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (base[1], base[2] + pad)
    n = coord_net_spec(pad=pad, dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == base[1:]
    n3, n5 = coord_net_spec(ks=3, stride=1, pad=0), coord_net_spec(ks=5, stride=2, pad=10)
    n35 = coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    m3, m5, m35 = (coord_map_from_to(n.deconv, n.data) for n in (n3, n5, n35))
    assert m3[0] == m5[0] == m35[0] == 1
    assert (m3[1], m3[2]) == (m35[1][0], m35[2][0]) and (m5[1], m5[2]) == (m35[1][1], m35[2][1])


def test_coord_map_multi_bottom_and_nd():
    from caffe.coord_map import coord_map_from_to
    n = coord_net_spec()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10, kernel_size=5,
                                            stride=2, pad=0)
    assert coord_map_from_to(n.conv_data, n.data) == coord_map_from_to(n.conv_aux, n.aux)
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 100, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=[3, 3, 3], stride=[1, 1, 1], pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=0)
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=4, stride=2, pad=0)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and len(a) == len(b) == 3 and (a == 1).all()
    assert b[0] - 1 == b[1] and b[1] - 1 == b[2]


def test_crop_of_crop_and_the_crop_helper():
    from caffe.coord_map import coord_map_from_to, crop
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=4)
    assert coord_map_from_to(n.crop, n.data) == (ax, a, b + 4)
    n = coord_net_spec(pool=4, dstride=4, pad=5)               # b = -1 - 5: crop 6 on each side
    n.score = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["deconv", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [6]


def test_crop_refuses_what_cannot_be_cropped():
    from caffe.coord_map import CoordMapError, CropError, coord_map_from_to, crop
    n = coord_net_spec()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError, match="no chain of spatial layers"):
        coord_map_from_to(n.ip, n.data)
    n = coord_net_spec(pool=3, dstride=2)
    with pytest.raises(AssertionError, match="scales differ"):
        crop(n.deconv, n.data)
    n = coord_net_spec(dpad=10)
    with pytest.raises(CropError, match="negative"):
        crop(n.deconv, n.data)
    assert issubclass(CoordMapError, RuntimeError) and issubclass(CropError, AssertionError)


# -- caffe.draw --------------------------------------------------------------------------------

@pytest.mark.parametrize("ext, magic", [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<svg"), ("pdf", b"%PDF")])
def test_draw_net_to_file_writes_the_format_asked_for(tmp_path, ext, magic):
    import shutil
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed (apt-get install graphviz)")
    from netspec.io import read_net
    net = read_net(simple_net_file(tmp_path / "net.prototxt"))
    target = tmp_path / ("net." + ext)
    written = caffe.draw.draw_net_to_file(net, str(target), "LR")
    assert Path(written) == target
    data = target.read_bytes()
    assert magic in data[:400]
    assert not (tmp_path / "net.dot").exists()


# -- caffe.Detector ----------------------------------------------------------------------------

DEPLOY = """name: 'detect'
layer { type: 'Input' name: 'data' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.3 } } }
layer { type: 'Softmax' name: 'prob' bottom: 'ip' top: 'prob' }
"""


@pytest.fixture
def detector_files(tmp_path):
    import cv2
    import numpy as np
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    caffe.set_random_seed(3)
    caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST).save(str(tmp_path / "w.caffemodel"))
    image = np.random.default_rng(0).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "im.png"), image)
    return tmp_path


def test_detector_classifies_each_window_as_the_net_would(detector_files):
    import numpy as np
    d = detector_files
    det = caffe.Detector(str(d / "deploy.prototxt"), str(d / "w.caffemodel"), raw_scale=255,
                         channel_swap=(2, 1, 0))
    windows = [np.array([2, 3, 12, 13]), np.array([0, 0, 20, 24]), np.array([5, 5, 9, 21])]
    found = det.detect_windows([(str(d / "im.png"), windows)])
    assert [x["filename"] for x in found] == [str(d / "im.png")] * 3
    assert [list(x["window"]) for x in found] == [list(w) for w in windows]
    image = caffe.io.load_image(str(d / "im.png"))
    net = caffe.Net(str(d / "deploy.prototxt"), str(d / "w.caffemodel"), caffe.TEST)
    for x, (y0, x0, y1, x1) in zip(found, windows):
        net.blobs["data"].data[0] = det.transformer.preprocess("data", image[y0:y1, x0:x1])
        expected = net.forward()["prob"][0]
        assert np.allclose(x["prediction"], expected, atol=1e-6)


def test_detector_context_pad_fills_outside_the_image_with_the_mean(detector_files):
    import numpy as np
    d = detector_files
    mean = np.array([0.3, 0.2, 0.1], np.float32)                 # per channel, in the net's order
    det = caffe.Detector(str(d / "deploy.prototxt"), str(d / "w.caffemodel"), mean=mean,
                         raw_scale=2.0, channel_swap=(2, 1, 0), context_pad=2)
    assert det.crop_dims == (8, 8, 3)
    image = caffe.io.load_image(str(d / "im.png"))
    crop = det.crop(image, np.array([0, 0, 4, 4]))              # the top-left corner: context sticks out
    assert crop.shape == (8, 8, 3)
    fill = mean[::-1] / 2.0                                       # the mean pixel back in image space
    assert np.allclose(crop[0, 0], fill) and np.allclose(crop[:, 0], fill)
    assert not np.allclose(crop[4, 4], fill)
    inside = det.crop(image, np.array([8, 8, 12, 12]))           # context fits: no mean anywhere
    assert inside.shape == (8, 8, 3) and not np.allclose(inside[0, 0], fill)
    found = det.detect_windows([(str(d / "im.png"), [np.array([0, 0, 4, 4])])])
    assert found[0]["prediction"].shape == (5,)
