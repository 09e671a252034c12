"""Small helpers several test modules share (imported as ``from helpers import ...``)."""
import struct
from pathlib import Path

import numpy as np
import pytest

from solvers.blob import Blob

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "lenet"


def need_golden():
    """Skip unless the golden LeNet data made with BVLC Caffe lies beside the checkout."""
    if not (GOLDEN / "mnist_train_lmdb" / "data.mdb").is_file():
        pytest.skip("golden LeNet data from BVLC Caffe not found at %s" % GOLDEN)


def blob(values, cls=Blob):
    """A Blob (or ``cls``, e.g. a float64 Blob) holding ``values`` as its data, in its dtype."""
    values = np.asarray(values)
    b = cls(values.shape)
    b.data[...] = values
    return b


def rnd(*shape, seed=0):
    """Standard normal float32 values of ``shape``, the same for the same seed."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def records(path):
    """Every (key, value) of an LMDB, in key order."""
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = list(txn.cursor())
    env.close()
    return out


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    return struct.unpack(">II", data[16:24])


class _Quiet:
    """A progress reporter that says nothing."""

    def update(self, done):
        pass

    def done(self, message=None):
        pass


def make_digits_lmdb(path, n, seed):
    """A small deterministic LMDB of n 6x6 'digits' whose brightness tells one of 4 labels."""
    from solvers.data.mnist import write_mnist_lmdb
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = (rng.integers(0, 60, (n, 6, 6)) + labels[:, None, None] * 60).astype(np.uint8)
    write_mnist_lmdb(images, labels, str(path), progress=_Quiet())


def digits_net(source="digits", test_batch=None):
    """The tiny prototxt the snapshot, signal and kill tests train on make_digits_lmdb's data:
    Data (TRAIN, batch 4; and TEST, batch ``test_batch``, when given) -> InnerProduct 4 -> loss."""
    data = ('layer { name: "data" type: "Data" top: "data" top: "label"%s\n'
            '  transform_param { scale: 0.00390625 } data_param { source: "%s" batch_size: %d'
            ' backend: LMDB } }\n')
    if test_batch is None:
        layers = data % ("", source, 4)
    else:
        layers = (data % (" include { phase: TRAIN }", source, 4)
                  + data % (" include { phase: TEST }", source, test_batch))
    return ('name: "tiny"\n' + layers
            + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
            '  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')


def caffemodel_params(path):
    """{(layer name, blob index): float32 data} of a .caffemodel."""
    from solvers.net import read_weights
    param = read_weights(str(path))
    return {(l.name, j): np.array(b.data, np.float32) for l in param.layer for j, b in enumerate(l.blobs)}


SOLVE = Path(__file__).resolve().parents[1] / "tools" / "solve.py"


def signal_when_logged(args, cwd, log_name, pattern, signum, timeout=120, env=None):
    """Run tools/solve.py ``args`` in ``cwd``; once its log matches ``pattern``, send ``signum``.

    Returns (exit status, log text, stderr text). Fails the test if the run
    ends first or the pattern never shows.
    """
    import os
    import re
    import subprocess
    import sys
    import time
    log_path, err_path = Path(cwd) / log_name, Path(cwd) / (log_name + ".stderr")
    regex = re.compile(pattern)
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(SOLVE)] + list(args) + ["--log", log_name],
                                cwd=str(cwd), stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, **(env or {})))
        try:
            deadline = time.monotonic() + timeout
            while not (log_path.exists() and regex.search(log_path.read_text())):
                if proc.poll() is not None:
                    pytest.fail("solve.py ended (status %s) before %r showed:\n%s"
                                % (proc.returncode, pattern, err_path.read_text()[-3000:]))
                if time.monotonic() > deadline:
                    pytest.fail("the log never showed %r" % pattern)
                time.sleep(0.02)
            proc.send_signal(signum)
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, log_path.read_text(), err_path.read_text()


def simple_net_file(path, num_output=13, ip_top="ip"):
    """BVLC's python/caffe/test/test_net.py net, written to ``path``: DummyData -> Convolution ->
    InnerProduct (top ``ip_top``) -> SoftmaxWithLoss; returns the path as a string."""
    path.write_text("""name: 'testnet' force_backward: true
    layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
      dummy_data_param { num: 5 channels: 2 height: 3 width: 4
        num: 5 channels: 1 height: 1 width: 1
        data_filler { type: 'gaussian' std: 1 }
        data_filler { type: 'constant' } } }
    layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
      convolution_param { num_output: 11 kernel_size: 2 pad: 3
        weight_filler { type: 'gaussian' std: 1 }
        bias_filler { type: 'constant' value: 2 } }
        param { decay_mult: 1 } param { decay_mult: 0 } }
    layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: '%s'
      inner_product_param { num_output: %d
        weight_filler { type: 'gaussian' std: 2.5 }
        bias_filler { type: 'constant' value: -3 } } }
    layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: '%s' bottom: 'label' top: 'loss' }"""
                    % (ip_top, num_output, ip_top))
    return str(path)
