"""LeNet on MNIST, as Caffe's "learning LeNet" notebook writes it with NetSpec.

Writes lenet_auto_train.prototxt, lenet_auto_test.prototxt and
lenet_auto_solver.prototxt into --out (default: this folder). Paths inside
the files are relative to the repository root, where training runs
(``python tools/solve.py examples/mnist/lenet_auto_solver.prototxt``), as
Caffe's own examples are run from its root; an --out outside the
repository is written as an absolute path. The LMDBs come from
tools/convert_mnist.py (or Caffe's convert_mnist_data).

    python examples/mnist/lenet.py [--out DIR]
"""
import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout, no install needed
    sys.path.insert(0, str(REPO))

from netspec import TEST, NetSpec, layers as L, params as P, solver, write_prototxt  # noqa: E402

TRAIN_NET = "lenet_auto_train.prototxt"
TEST_NET = "lenet_auto_test.prototxt"
SOLVER = "lenet_auto_solver.prototxt"


def lenet(lmdb, batch_size):
    """The notebook's LeNet: LMDB data scaled to [0, 1), two conv/pool, two inner products.

    Beyond the notebook, an Accuracy layer in the TEST phase only (as in
    BVLC's lenet_train_test.prototxt), so the log reports the test accuracy;
    the train net is the notebook's.
    """
    n = NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.accuracy = L.Accuracy(n.score, n.label, include=dict(phase=TEST))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


def lenet_solver(train_net, test_net, snapshot_prefix, test_iter=100):
    """The notebook's solver: SGD with momentum, "inv" decay, 10000 iterations.

    CPU mode and random_seed 1 as in the golden run of this example, so two
    runs give the same numbers. ``test_iter`` batches of 100 make one test
    pass: 100 for MNIST's 10,000 test digits (see ``test_iter_for``).
    """
    return solver(train_net=train_net, test_net=[test_net],
                  test_iter=[test_iter],
                  test_interval=500,
                  base_lr=0.01, momentum=0.9, weight_decay=5e-4,
                  lr_policy='inv', gamma=1e-4, power=0.75,
                  display=100, max_iter=10000,
                  snapshot=5000, snapshot_prefix=snapshot_prefix,
                  random_seed=1, solver_mode='CPU')


def test_iter_for(test_lmdb, batch_size=100, default=100):
    """Test batches that see each test record once: ceil(records / batch_size).

    2,000 digits (the offline 8000/2000 split) give 20, MNIST's 10,000 give
    100. Without a readable LMDB yet, ``default``.
    """
    from netspec.errors import CaffeError
    from solvers.data.lmdb_source import LMDBReader, is_lmdb_dir
    if not is_lmdb_dir(test_lmdb):
        return default
    try:
        reader = LMDBReader(test_lmdb)
    except CaffeError:
        return default
    try:
        return max(1, -(-len(reader) // batch_size))
    finally:
        reader.close()


def _as_written(path):
    """A path as the files refer to it: from the repository root, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


def write_lenet(out, train_source="examples/mnist/mnist_train_lmdb",
                test_source="examples/mnist/mnist_test_lmdb"):
    """Write the two nets and the solver into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / TRAIN_NET, out / TEST_NET, out / SOLVER]
    write_prototxt(lenet(train_source, 64), paths[0])
    write_prototxt(lenet(test_source, 100), paths[1])
    test_iter = test_iter_for(REPO / test_source)   # relative to the root, where training runs
    write_prototxt(lenet_solver(_as_written(paths[0]), _as_written(paths[1]),
                                _as_written(out / "lenet"), test_iter), paths[2])
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="folder for the three files (default: %(default)s)")
    parser.add_argument("--train-source", default="examples/mnist/mnist_train_lmdb",
                        help="training LMDB as the net names it (default: %(default)s)")
    parser.add_argument("--test-source", default="examples/mnist/mnist_test_lmdb",
                        help="test LMDB as the net names it (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in write_lenet(args.out, args.train_source, args.test_source):
        print("wrote", path)


if __name__ == "__main__":
    main()
