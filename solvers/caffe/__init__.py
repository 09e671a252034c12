"""pycaffe's public surface over this toolkit: ``import solvers.caffe as caffe``.

Code written for BVLC Caffe's Python module runs after changing only its
import line::

    import solvers.caffe as caffe
    from solvers.caffe import layers as L, params as P
    from solvers.caffe.proto import caffe_pb2

    caffe.set_mode_cpu()
    net = caffe.Net('deploy.prototxt', caffe.TEST, weights='model.caffemodel')
    solver = caffe.SGDSolver('solver.prototxt')
    solver.step(1)
    solver.net.blobs['conv1'].data

Where pycaffe would abort the process (a glog CHECK failure), a CaffeError
with a message is raised instead. Importing this package also gives Net,
Blob and Solver their IPython/Jupyter representations (``solvers.inspect``).
"""
from netspec import caffe_pb2 as _caffe_pb2
from netspec.net_spec import NetSpec, layers, params, to_proto
from solvers.backend import set_device, set_mode_cpu, set_mode_gpu
from solvers.blob import Blob
from solvers.layer import layer_type_list
from solvers.layers.python_layer import PythonLayer as Layer
from solvers.rng import set_random_seed

from solvers.caffe.pycaffe import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, Net,
                                   RMSPropSolver, SGDSolver, Solver, get_solver, init_log)
from solvers.caffe import proto  # noqa: E402  (caffe.proto.caffe_pb2)
from solvers.caffe import io  # noqa: E402
from solvers.caffe import draw  # noqa: E402
from solvers.caffe import net_spec  # noqa: E402
from solvers.caffe.classifier import Classifier  # noqa: E402

TRAIN = _caffe_pb2.TRAIN
TEST = _caffe_pb2.TEST
__version__ = "1.0.0"

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "Classifier", "Layer",
           "NesterovSolver", "Net", "NetSpec", "RMSPropSolver", "SGDSolver", "Solver", "TEST",
           "TRAIN", "draw", "get_solver", "init_log", "io", "layer_type_list", "layers",
           "net_spec", "params", "proto", "set_device", "set_mode_cpu", "set_mode_gpu",
           "set_random_seed", "to_proto"]
