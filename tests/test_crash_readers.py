"""Inputs that used to kill the interpreter: each is run in a child process, which must end with a
clean non-zero exit and a message naming the file, never by a signal (SIGBUS, SIGABRT, SIGSEGV).

The damaged LMDBs are copies of one made by tools/convert_mnist.py: truncated (a partial copy:
SIGBUS in liblmdb), a leaf page zeroed (liblmdb's assertion IS_LEAF: SIGABRT), the root page
garbled (MDB_CORRUPTED, then MDB_BAD_TXN).
"""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.errors import DataError
from solvers.data import lmdb_verify

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
P_LEAF = 0x02


def write_idx(path, arr, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
    return str(path)


@pytest.fixture(scope="module")
def mnist_lmdb(tmp_path_factory):
    """A 1000-record MNIST-like LMDB written by tools/convert_mnist.py (about 250 pages, 2 levels)."""
    d = tmp_path_factory.mktemp("lmdb")
    rng = np.random.default_rng(1)
    images = write_idx(d / "img", rng.integers(0, 256, (1000, 28, 28)), 2051)
    labels = write_idx(d / "lbl", rng.integers(0, 10, 1000), 2049)
    subprocess.run([sys.executable, str(TOOLS / "convert_mnist.py"), images, labels, str(d / "db")],
                   check=True, capture_output=True, env=_env(d))
    return d / "db"


def _env(tmp):
    """The child's environment: its own verdict cache, so nothing is remembered between tests."""
    return dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"))


def _pages(db):
    data = (db / "data.mdb").read_bytes()
    meta = lmdb_verify.check_meta(str(db))
    psize = meta["psize"]
    flags = [int.from_bytes(data[p * psize + 10:p * psize + 12], "little") for p in range(len(data) // psize)]
    return data, psize, flags, meta


def damaged(mnist_lmdb, tmp_path, how):
    """A copy of the LMDB damaged in one way."""
    db = tmp_path / ("db_" + how)
    shutil.copytree(mnist_lmdb, db)
    data, psize, flags, meta = _pages(db)
    name = db / "data.mdb"
    if how == "truncated":
        os.truncate(name, len(data) // 2)
    elif how == "zeroed_leaf":
        # not the first leaf (liblmdb checks the page it descends to): one it steps to from a sibling
        leaves = [p for p in range(2, len(flags)) if flags[p] == P_LEAF]
        page = leaves[len(leaves) // 2]
        with open(name, "r+b") as f:
            f.seek(page * psize)
            f.write(bytes(psize))
    elif how == "garbled_root":
        with open(name, "r+b") as f:
            f.seek(meta["main_root"] * psize)
            f.write(np.random.default_rng(0).integers(0, 256, psize, dtype=np.uint8).tobytes())
    elif how == "tiny":
        os.truncate(name, 100)
    return db


HOW = ["truncated", "zeroed_leaf", "garbled_root", "tiny"]
SAYS = {"truncated": "truncated", "zeroed_leaf": "corrupted", "garbled_root": "corrupted", "tiny": "truncated"}


def _assert_clean_failure(proc, db, how):
    assert proc.returncode == 1, "ended with %d (a negative status is a signal): %s" % (
        proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert str(db / "data.mdb") in proc.stderr and SAYS[how] in proc.stderr


@pytest.mark.parametrize("how", HOW)
def test_compute_image_mean_on_a_damaged_lmdb(mnist_lmdb, tmp_path, how):
    db = damaged(mnist_lmdb, tmp_path, how)
    proc = subprocess.run([sys.executable, str(TOOLS / "compute_image_mean.py"), str(db), str(tmp_path / "m")],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    _assert_clean_failure(proc, db, how)
    assert not (tmp_path / "m").exists()


NET = """layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 } data_param { source: "%s" batch_size: 8 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _solver(tmp_path, source, batch=8):
    (tmp_path / "net.prototxt").write_text((NET % source).replace("batch_size: 8", "batch_size: %d" % batch))
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 2\nsnapshot_prefix: "%s"\n'
        % (tmp_path / "net.prototxt", tmp_path / "snap"))
    return str(tmp_path / "solver.prototxt")


@pytest.mark.parametrize("how", ["truncated", "zeroed_leaf", "garbled_root"])
def test_training_from_a_damaged_lmdb(mnist_lmdb, tmp_path, how):
    db = damaged(mnist_lmdb, tmp_path, how)
    proc = subprocess.run([sys.executable, str(TOOLS / "solve.py"), "train", "--solver", _solver(tmp_path, db)],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    _assert_clean_failure(proc, db, how)
    assert "layer 'data'" in proc.stderr


def test_impossible_batch_size_fails_at_once(mnist_lmdb, tmp_path):
    """2^31 records per batch: refused before any thread starts, in well under the old 15 s wait."""
    start = time.time()
    proc = subprocess.run([sys.executable, str(TOOLS / "solve.py"), "train", "--solver",
                           _solver(tmp_path, mnist_lmdb, 2 ** 31)],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "layer 'data'" in proc.stderr and "batch" in proc.stderr and "2147483648" in proc.stderr
    assert time.time() - start < 10


# -- in-process checks of the same machinery ------------------------------------------------

@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(lmdb_verify, "_verified", {})


def data_layer(source, batch=8, prefetch=""):
    from google.protobuf import text_format
    from solvers.layer import create_layer
    lp = text_format.Parse('name: "data" type: "Data" top: "data" top: "label" data_param { source: "%s" '
                           'batch_size: %d backend: LMDB %s }' % (source, batch, prefetch),
                           caffe_pb2.LayerParameter())
    return create_layer(lp)


def test_corruption_is_not_reported_as_bad_txn(mnist_lmdb, tmp_path, fresh_cache, monkeypatch):
    """Unchecked (CAFFE_LMDB_VERIFY=0), liblmdb meets the garbled root: MDB_CORRUPTED, then MDB_BAD_TXN
    on every later call; both read as corruption of the named file."""
    from solvers.data.lmdb_source import LMDBReader
    monkeypatch.setenv("CAFFE_LMDB_VERIFY", "0")
    db = damaged(mnist_lmdb, tmp_path, "garbled_root")
    reader = LMDBReader(str(db))
    for _ in range(2):
        with pytest.raises(DataError) as err:
            list(reader.items())
        assert "corrupted" in str(err.value) and str(db / "data.mdb") in str(err.value)
        assert "BAD_TXN" not in str(err.value)
    reader.close()


def test_verdict_is_cached_by_size_and_mtime(mnist_lmdb, tmp_path, fresh_cache, monkeypatch):
    db = tmp_path / "copy"
    shutil.copytree(mnist_lmdb, db)
    walks = []
    real_walk = lmdb_verify._walk
    monkeypatch.setattr(lmdb_verify, "_walk", lambda *a: walks.append(a) or real_walk(*a))
    lmdb_verify.verify(str(db))
    lmdb_verify.verify(str(db))
    assert len(walks) == 1
    monkeypatch.setattr(lmdb_verify, "_verified", {})   # a new process: the cache file remembers
    lmdb_verify.verify(str(db))
    assert len(walks) == 1
    os.utime(db / "data.mdb", ns=(1, 1))                 # a changed file is walked again
    lmdb_verify.verify(str(db))
    assert len(walks) == 2


def test_a_database_this_toolkit_writes_needs_no_walk(tmp_path, fresh_cache, monkeypatch):
    from solvers.data.lmdb_source import LMDBReader, LMDBWriter
    with LMDBWriter(tmp_path / "db") as w:
        w.put("00000000", b"x")
    monkeypatch.setattr(lmdb_verify, "_walk", lambda *a: pytest.fail("walked a database just written"))
    reader = LMDBReader.open(str(tmp_path / "db"))
    assert len(reader) == 1
    reader.release()


@pytest.mark.parametrize("how", ["truncated", "zeroed_leaf"])
def test_data_layer_names_the_layer_and_file(mnist_lmdb, tmp_path, fresh_cache, how):
    db = damaged(mnist_lmdb, tmp_path, how)
    with pytest.raises(DataError) as err:
        data_layer(str(db)).setup([], [_blob(), _blob()])
    assert "layer 'data'" in str(err.value) and str(db / "data.mdb") in str(err.value)
    assert SAYS[how] in str(err.value)


def _blob():
    from solvers.blob import Blob
    return Blob()


def test_no_thread_starts_for_a_batch_that_cannot_fit(mnist_lmdb, monkeypatch):
    """Below Caffe's INT_MAX but above the machine's memory: refused before the prefetch thread."""
    from netspec import shapes
    monkeypatch.setattr(shapes, "physical_memory", lambda: 1 << 30)
    before = threading.active_count()
    with pytest.raises(DataError, match="memory"):
        data_layer(str(mnist_lmdb), batch=100000).setup([], [_blob(), _blob()])
    assert threading.active_count() == before


def test_closing_a_busy_prefetcher_is_bounded(monkeypatch):
    """A thread stuck in a batch does not hold close() up; it closes the source when it ends."""
    from solvers.data import prefetch

    class Slow(prefetch.BatchSource):
        def __init__(self):
            self.go, self.closed = threading.Event(), threading.Event()

        def next_batch(self):
            self.go.wait(10)
            return (np.zeros(1),)

        def get_state(self):
            return None

        def close(self):
            self.closed.set()

    monkeypatch.setattr(prefetch, "CLOSE_TIMEOUT", 0.2)
    source = Slow()
    p = prefetch.Prefetcher(source, 2)
    start = time.time()
    p.close()
    assert time.time() - start < 2 and not source.closed.is_set()
    source.go.set()
    assert source.closed.wait(5)
