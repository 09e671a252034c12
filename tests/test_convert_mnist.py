"""MNIST IDX -> LMDB: record for record what Caffe's convert_mnist_data wrote.

The golden folder holds the IDX subsets Caffe converted and the LMDBs it
made from them; converting the same files here must give the same keys and
the same serialized Datum bytes.
"""
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netspec.errors import DataError
from solvers.data.idx import read_mnist
from solvers.data.lmdb_source import LMDBWriter
from solvers.data.mnist import convert_mnist, write_mnist_lmdb

from helpers import GOLDEN, need_golden, records

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path, arr, magic, gz=False):
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(data)
    return path


def small_mnist(tmp_path, n=25, gz=False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    ip = write_idx(tmp_path / ("img" + suffix), images, 2051, gz)
    lp = write_idx(tmp_path / ("lbl" + suffix), labels, 2049, gz)
    return images, labels, ip, lp


@pytest.mark.parametrize("split", ["train", "test"])
def test_golden_idx_converts_to_caffes_lmdb(tmp_path, split):
    need_golden()
    out = tmp_path / ("mnist_%s_lmdb" % split)
    n = convert_mnist(GOLDEN / ("mnist-%s-images-idx3-ubyte.gz" % split),
                      GOLDEN / ("mnist-%s-labels-idx1-ubyte.gz" % split), out)
    ours, caffes = records(out), records(GOLDEN / ("mnist_%s_lmdb" % split))
    assert n == len(caffes) == {"train": 8000, "test": 2000}[split]
    assert [k for k, _ in ours] == [k for k, _ in caffes]
    assert ours == caffes  # identical serialized Datum bytes, record for record


def test_records_hold_pixels_label_and_keys(tmp_path):
    images, labels, ip, lp = small_mnist(tmp_path, gz=True)
    convert_mnist(ip, lp, tmp_path / "db")
    from netspec import caffe_pb2
    recs = records(tmp_path / "db")
    assert [k for k, _ in recs] == [b"%08d" % i for i in range(25)]
    for i, (_, v) in enumerate(recs):
        d = caffe_pb2.Datum.FromString(v)
        assert (d.channels, d.height, d.width, d.label) == (1, 28, 28, labels[i])
        assert np.array_equal(np.frombuffer(d.data, np.uint8).reshape(28, 28), images[i])


def test_raw_and_gz_inputs_give_the_same_db(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _, _, ip, lp = small_mnist(a, gz=False)
    _, _, gip, glp = small_mnist(b, gz=True)
    convert_mnist(ip, lp, tmp_path / "raw_db")
    convert_mnist(gip, glp, tmp_path / "gz_db")
    assert records(tmp_path / "raw_db") == records(tmp_path / "gz_db")


def test_refuses_to_overwrite_unless_asked(tmp_path):
    _, _, ip, lp = small_mnist(tmp_path)
    convert_mnist(ip, lp, tmp_path / "db")
    with pytest.raises(DataError, match="overwrite"):
        convert_mnist(ip, lp, tmp_path / "db")
    images2, labels2 = np.zeros((3, 28, 28), np.uint8), np.ones(3, np.uint8)
    write_mnist_lmdb(images2, labels2, tmp_path / "db", overwrite=True)
    assert len(records(tmp_path / "db")) == 3


def test_build_is_atomic_and_leaves_no_temporaries(tmp_path):
    _, _, ip, lp = small_mnist(tmp_path)
    convert_mnist(ip, lp, tmp_path / "db")
    assert sorted(os.listdir(tmp_path)) == ["db", "img", "lbl"]
    # an error in the middle of a build leaves neither the target nor a temporary
    with pytest.raises(RuntimeError):
        with LMDBWriter(tmp_path / "db2", batch_size=2) as w:
            w.put(b"00000000", b"x")
            w.put(b"00000001", b"y")
            w.put(b"00000002", b"z")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["db", "img", "lbl"]


def test_map_size_grows_on_demand(tmp_path):
    with LMDBWriter(tmp_path / "db", map_size=64 * 1024, batch_size=500) as w:
        for i in range(3000):
            w.put(b"%08d" % i, bytes(800))
        start = w.map_size
    assert start > 64 * 1024  # it had to double (several times) to hold ~2.4 MB
    assert len(records(tmp_path / "db")) == 3000


def test_bad_magic_names_the_file(tmp_path):
    images, labels, ip, lp = small_mnist(tmp_path)
    with pytest.raises(DataError, match="lbl.*magic 2049.*images file"):
        read_mnist(lp, lp)
    bad = write_idx(tmp_path / "bad", images, 0x12345678)
    with pytest.raises(DataError, match="bad.*bad magic"):
        convert_mnist(bad, lp, tmp_path / "db")
    assert not (tmp_path / "db").exists()


def test_truncated_file_and_count_mismatch(tmp_path):
    images, labels, ip, lp = small_mnist(tmp_path)
    data = Path(ip).read_bytes()
    (tmp_path / "short").write_bytes(data[:-100])
    with pytest.raises(DataError, match="short.*truncated"):
        convert_mnist(tmp_path / "short", lp, tmp_path / "db")
    few = write_idx(tmp_path / "few", labels[:5], 2049)
    with pytest.raises(DataError, match="25 images.*5 labels"):
        convert_mnist(ip, few, tmp_path / "db")
    with pytest.raises(DataError, match="not found"):
        convert_mnist(tmp_path / "missing", lp, tmp_path / "db")


def test_command_line_tool(tmp_path):
    _, _, ip, lp = small_mnist(tmp_path, gz=True)
    tool = [sys.executable, str(ROOT / "tools" / "convert_mnist.py")]
    r = subprocess.run(tool + [str(ip), str(lp), str(tmp_path / "db")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(records(tmp_path / "db")) == 25
    r = subprocess.run(tool + [str(ip), str(lp), str(tmp_path / "db")], capture_output=True, text=True)
    assert r.returncode == 1 and "overwrite" in r.stderr
    r = subprocess.run(tool + [str(ip), str(lp), str(tmp_path / "db"), "--overwrite"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(tool + [str(lp), str(lp), str(tmp_path / "db2")], capture_output=True, text=True)
    assert r.returncode == 1 and "magic" in r.stderr and "Traceback" not in r.stderr
