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


def test_backend_caffe_never_hands_the_solver_to_ourselves(monkeypatch):
    """With only this toolkit's caffe importable, the answer is a clear error, not ourselves."""
    from solvers import caffe_backend
    from netspec.errors import CaffeError
    assert caffe_backend.is_toolkit_caffe(caffe)
    monkeypatch.setattr(sys, "path", [str(ROOT)])
    with pytest.raises(CaffeError, match="only this toolkit's own caffe package") as e:
        caffe_backend.import_pycaffe()
    assert "PYTHONPATH" in str(e.value) and sys.modules["caffe"] is caffe
