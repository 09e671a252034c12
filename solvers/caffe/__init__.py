"""pycaffe's public surface over this toolkit; ``import caffe`` gives this very module.

Code written for BVLC Caffe's Python module runs unchanged::

    import caffe
    from caffe import layers as L, params as P
    from caffe.proto import caffe_pb2

    caffe.set_mode_cpu()
    net = caffe.Net('deploy.prototxt', caffe.TEST, weights='model.caffemodel')
    solver = caffe.SGDSolver('solver.prototxt')
    solver.step(1)
    solver.net.blobs['conv1'].data

Where pycaffe would abort the process (a glog CHECK failure), a CaffeError
with a message is raised instead. Importing this package also gives Net,
Blob and Solver their IPython/Jupyter representations (``solvers.inspect``).

The top-level package ``caffe`` (``caffe/__init__.py``) only calls
``alias_as("caffe")``, so ``caffe`` and ``solvers.caffe`` (and each
``caffe.X`` and ``solvers.caffe.X``) are one module object. ``toolkit``
marks this implementation: BVLC's pycaffe has no such attribute.
"""
import sys
from netspec import caffe_pb2 as _caffe_pb2
from netspec.net_spec import NetSpec, layers, params, to_proto
from solvers.backend import set_device, set_mode_cpu, set_mode_gpu
from solvers.blob import Blob
from solvers.layer import layer_type_list
from solvers.layers.python_layer import PythonLayer as Layer
from solvers.rng import set_random_seed
from solvers.threads import set_num_threads

from solvers.layer import create_layer

from solvers.caffe.pycaffe import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, Net,
                                   RMSPropSolver, SGDSolver, Solver, Timer, get_solver, init_log, log)
from solvers.caffe.parallel import (NCCL, has_nccl, set_multiprocess, set_solver_count,
                                    set_solver_rank, solver_count, solver_rank)
from solvers.caffe import proto  # noqa: E402  (caffe.proto.caffe_pb2)
from solvers.caffe import io  # noqa: E402
from solvers.caffe import draw  # noqa: E402
from solvers.caffe import net_spec  # noqa: E402
from solvers.caffe import coord_map  # noqa: E402
from solvers.caffe import classifier, detector  # noqa: E402
from solvers.caffe.classifier import Classifier  # noqa: E402
from solvers.caffe.detector import Detector  # noqa: E402

TRAIN = _caffe_pb2.TRAIN
TEST = _caffe_pb2.TEST
__version__ = "1.0.0"      # the pycaffe (BVLC Caffe) version whose interface this follows


def _toolkit_marker():
    from importlib import metadata
    try:
        version = metadata.version("caffe-toolkit")
    except metadata.PackageNotFoundError:    # run from a source tree without pip install
        version = "source tree"
    return "caffe-toolkit %s (pure Python/NumPy, not BVLC Caffe)" % version


toolkit = _toolkit_marker()


def alias_as(name):
    """Make ``name`` and ``name.<sub>`` this package and its submodules in ``sys.modules``.

    Called by the top-level ``caffe`` package: afterwards ``import caffe.io``
    or ``from caffe.proto import caffe_pb2`` find the modules already loaded
    here instead of loading second copies.
    """
    prefix = __name__ + "."
    sys.modules[name] = sys.modules[__name__]
    for key, module in list(sys.modules.items()):
        if key.startswith(prefix) and module is not None:
            sys.modules[name + "." + key[len(prefix):]] = module


__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "Classifier", "Detector",
           "Layer", "NCCL", "NesterovSolver", "Net", "NetSpec", "RMSPropSolver", "SGDSolver",
           "Solver", "TEST", "TRAIN", "Timer", "classifier", "coord_map", "create_layer",
           "detector", "draw", "get_solver", "has_nccl", "init_log", "io", "layer_type_list",
           "layers", "log", "net_spec", "params", "proto", "set_device", "set_mode_cpu",
           "set_mode_gpu", "set_multiprocess", "set_num_threads", "set_random_seed", "set_solver_count",
           "set_solver_rank", "solver_count", "solver_rank", "to_proto", "toolkit"]
