"""The data tools: get_mnist (mirrors, MD5, resume, --from), convert_imageset,
compute_image_mean, examples/mnist/create_mnist.py and bench/data.py.

Downloads are tested against a local HTTP server serving files from tmp_path
(this machine has no internet); the MNIST test files are the copy shipped in
examples/mnist/mnist_test_set.
"""
import gzip
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.errors import DataError
from solvers.data.download import get_dataset, md5_of
from solvers.data.image_mean import compute_image_mean, save_image_mean
from solvers.data.imageset import convert_imageset

from helpers import records

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MNIST = ROOT / "examples" / "mnist" / "mnist_test_set"   # the MNIST test set shipped in the repository
GOLDEN = SHARED / "golden" / "lenet"
LABELS = "t10k-labels-idx1-ubyte"
IMAGES = "t10k-images-idx3-ubyte"


def need(path):
    if not Path(path).exists():
        pytest.skip("%s not found (shared data beside the checkout)" % path)


def run_tool(*args, cwd=ROOT):
    return subprocess.run([sys.executable] + [str(a) for a in args], capture_output=True, text=True,
                          cwd=str(cwd), timeout=120)


# -- a local mirror -----------------------------------------------------------

class Mirror:
    """A threaded HTTP server over a folder, with optional Range support and corruption."""

    def __init__(self, root, honour_range=True):
        self.root = Path(root)
        self.honour_range = honour_range
        self.corrupt = set()
        self.requests = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = mirror.root / self.path.lstrip("/")
                rng = self.headers.get("Range")
                mirror.requests.append((self.path, rng))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if path.name in mirror.corrupt:
                    data = data[:-16] + b"\0" * 16
                start = 0
                if rng and mirror.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path):
    need(MNIST / (LABELS + ".gz"))
    served = tmp_path / "served"
    served.mkdir()
    for name in (LABELS, IMAGES):
        shutil.copy(MNIST / (name + ".gz"), served / (name + ".gz"))
    m = Mirror(served)
    yield m
    m.close()


DEAD = "http://127.0.0.1:9/nothing-here/"  # the discard port: connection refused


def quiet(*args):
    pass


def test_download_tries_mirrors_in_turn_and_checks_md5(tmp_path, mirror):
    out = tmp_path / "out"
    files = get_dataset(out, splits=("test",), mirrors=[DEAD, mirror.url], timeout=5, log=quiet)
    assert sorted(os.listdir(out)) == [IMAGES + ".gz", LABELS + ".gz"]
    for name, path in files.items():
        assert md5_of(path) == md5_of(MNIST / (name + ".gz"))
    # a second run finds the good files and downloads nothing
    n = len(mirror.requests)
    get_dataset(out, splits=("test",), mirrors=[mirror.url], log=quiet)
    assert len(mirror.requests) == n


def test_download_resumes_a_partial_file(tmp_path, mirror):
    out = tmp_path / "out"
    out.mkdir()
    full = (MNIST / (IMAGES + ".gz")).read_bytes()
    (out / (IMAGES + ".gz.part")).write_bytes(full[:700000])
    get_dataset(out, splits=("test",), mirrors=[mirror.url], log=quiet)
    assert ("/" + IMAGES + ".gz", "bytes=700000-") in mirror.requests
    assert (out / (IMAGES + ".gz")).read_bytes() == full
    assert not (out / (IMAGES + ".gz.part")).exists()


def test_server_without_range_support_restarts_the_download(tmp_path, mirror):
    mirror.honour_range = False
    out = tmp_path / "out"
    out.mkdir()
    (out / (LABELS + ".gz.part")).write_bytes(b"garbage from an old attempt")
    get_dataset(out, splits=("test",), mirrors=[mirror.url], log=quiet)
    assert md5_of(out / (LABELS + ".gz")) == "ec29112dd5afa0611ce80d1b7f02629c"


def test_md5_mismatch_keeps_nothing(tmp_path, mirror):
    mirror.corrupt.add(LABELS + ".gz")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="(?s)could not get %s.*MD5" % LABELS):
        get_dataset(out, splits=("test",), mirrors=[mirror.url], log=quiet)
    assert not any(p.name.startswith(LABELS) for p in out.iterdir())


def test_bad_resumed_part_is_discarded_then_refetched(tmp_path, mirror):
    out = tmp_path / "out"
    out.mkdir()
    (out / (LABELS + ".gz.part")).write_bytes(b"\x1f\x8b not the right start")
    with pytest.raises(DataError):
        get_dataset(out, splits=("test",), mirrors=[mirror.url], log=quiet)
    assert not (out / (LABELS + ".gz")).exists() and not (out / (LABELS + ".gz.part")).exists()
    get_dataset(out, splits=("test",), mirrors=[mirror.url], log=quiet)
    assert md5_of(out / (LABELS + ".gz")) == "ec29112dd5afa0611ce80d1b7f02629c"


def test_offline_message_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"(?s)--from DIR.*dataset-fashion-mnist") as e:
        get_dataset(tmp_path / "out", splits=("test",), mirrors=[DEAD], timeout=2, log=quiet)
    assert "--split" not in str(e.value)   # no flag of some other command
    with pytest.raises(DataError, match=r"(?s)dataset-fashion-mnist.*alone with --split-test N"):
        get_dataset(tmp_path / "out", splits=("test",), mirrors=[DEAD], timeout=2, log=quiet,
                    test_only="--split-test N")


def test_from_dir_accepts_gz_and_raw_copies(tmp_path):
    need(MNIST / (LABELS + ".gz"))
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in (LABELS, IMAGES):
        (raw / name).write_bytes(gzip.decompress((MNIST / (name + ".gz")).read_bytes()))
    files = get_dataset(tmp_path / "a", from_dir=raw, splits=("test",), log=quiet)
    assert sorted(os.listdir(tmp_path / "a")) == [IMAGES, LABELS]
    assert Path(files[LABELS]).read_bytes() == (raw / LABELS).read_bytes()
    get_dataset(tmp_path / "b", from_dir=MNIST, splits=("test",), log=quiet)
    assert sorted(os.listdir(tmp_path / "b")) == [IMAGES + ".gz", LABELS + ".gz"]
    # a damaged local copy is refused
    data = bytearray((raw / LABELS).read_bytes())
    data[100] ^= 1
    (raw / LABELS).write_bytes(bytes(data))
    with pytest.raises(DataError, match="MD5"):
        get_dataset(tmp_path / "c", from_dir=raw, splits=("test",), log=quiet)
    # the training files are not in the shipped test-set folder: say so
    with pytest.raises(DataError, match="(?s)train-images-idx3-ubyte.*not in.*--split test"):
        get_dataset(tmp_path / "d", from_dir=MNIST, log=quiet, test_only="--split test")


def test_fashion_mnist_from_debian_package(tmp_path):
    need("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
    files = get_dataset(tmp_path, dataset="fashion-mnist", splits=("test",), mirrors=[DEAD], log=quiet)
    assert sorted(files) == [IMAGES, LABELS]


def test_get_mnist_command_line(tmp_path):
    need(MNIST / (LABELS + ".gz"))
    r = run_tool(ROOT / "tools" / "get_mnist.py", tmp_path / "m", "--from", MNIST, "--split", "test")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / (LABELS + ".gz")).is_file()
    r = run_tool(ROOT / "tools" / "get_mnist.py", tmp_path / "m2", "--from", MNIST)
    assert r.returncode == 1 and "--split test" in r.stderr and "Traceback" not in r.stderr


# -- convert_imageset -----------------------------------------------------------

@pytest.fixture
def image_list(tmp_path):
    root = tmp_path / "pics"
    (root / "sub").mkdir(parents=True)
    arrays = []
    rng = np.random.default_rng(1)
    for i in range(5):
        img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "sub" / ("p%d.png" % i)), img)
        arrays.append(img)
    (tmp_path / "list.txt").write_text("".join("sub/p%d.png %d\n" % (i, i % 3) for i in range(5)))
    return root, tmp_path / "list.txt", arrays


def test_convert_imageset_raw_records(tmp_path, image_list):
    root, lst, arrays = image_list
    n, skipped = convert_imageset(str(root) + "/", str(lst), tmp_path / "db")
    assert (n, skipped) == (5, 0)
    recs = records(tmp_path / "db")
    assert [k for k, _ in recs] == [b"%08d_sub/p%d.png" % (i, i) for i in range(5)]
    for i, (_, v) in enumerate(recs):
        d = caffe_pb2.Datum.FromString(v)
        assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 6, 7, i % 3, False)
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 6, 7),
                                      arrays[i].transpose(2, 0, 1))


def test_convert_imageset_encoded_gray_resize(tmp_path, image_list):
    root, lst, arrays = image_list
    convert_imageset(str(root), str(lst), tmp_path / "enc", encoded=True)
    d = caffe_pb2.Datum.FromString(records(tmp_path / "enc")[0][1])
    assert d.encoded and d.data == (root / "sub" / "p0.png").read_bytes()  # the file itself
    convert_imageset(str(root), str(lst), tmp_path / "small", resize_height=3, resize_width=4, gray=True)
    d = caffe_pb2.Datum.FromString(records(tmp_path / "small")[0][1])
    assert (d.channels, d.height, d.width) == (1, 3, 4)
    expect = cv2.resize(cv2.imread(str(root / "sub" / "p0.png"), cv2.IMREAD_GRAYSCALE), (4, 3))
    np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 4), expect)
    convert_imageset(str(root), str(lst), tmp_path / "jpg", encoded=True, encode_type="jpg")
    d = caffe_pb2.Datum.FromString(records(tmp_path / "jpg")[0][1])
    assert d.encoded and d.data[:2] == b"\xff\xd8"  # re-encoded as JPEG


def test_convert_imageset_shuffle_skip_and_atomic(tmp_path, image_list):
    root, lst, _ = image_list
    lst.write_text(lst.read_text() + "sub/missing.png 1\n")
    warnings = []
    n, skipped = convert_imageset(str(root), str(lst), tmp_path / "db", shuffle=True,
                                  rng=np.random.default_rng(3), warn=warnings.append)
    assert (n, skipped) == (5, 1)
    assert "line 6" in warnings[0] and "missing.png" in warnings[0]
    keys = [k.decode() for k, _ in records(tmp_path / "db")]
    assert sorted(k[9:] for k in keys) == ["sub/p%d.png" % i for i in range(5)]
    assert keys != sorted(keys, key=lambda k: k[9:])  # shuffled order (seeded)
    with pytest.raises(DataError, match="overwrite"):
        convert_imageset(str(root), str(lst), tmp_path / "db")


def test_convert_imageset_command_line_and_data_layer(tmp_path, image_list):
    root, lst, arrays = image_list
    r = run_tool(ROOT / "tools" / "convert_imageset.py", str(root) + "/", lst, tmp_path / "db",
                 "--encoded", "--encode_type", "png")
    assert r.returncode == 0, r.stderr
    from google.protobuf import text_format
    from solvers.blob import Blob
    from solvers.layer import create_layer
    lp = caffe_pb2.LayerParameter()
    text_format.Merge('name: "d" type: "Data" top: "data" top: "label" '
                      'data_param { source: "%s" batch_size: 5 backend: LMDB }' % (tmp_path / "db"), lp)
    layer = create_layer(lp)
    top = [Blob(), Blob()]
    layer.setup([], top)
    layer.forward([], top)
    layer.close()
    np.testing.assert_array_equal(top[0].data, np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32))
    assert top[1].data.tolist() == [0, 1, 2, 0, 1]


# -- compute_image_mean -------------------------------------------------------

def test_image_mean_equals_caffes_golden_file(tmp_path):
    need(GOLDEN / "mean.binaryproto")
    save_image_mean(GOLDEN / "mnist_train_lmdb", tmp_path / "mean.binaryproto")
    assert (tmp_path / "mean.binaryproto").read_bytes() == (GOLDEN / "mean.binaryproto").read_bytes()
    r = run_tool(ROOT / "tools" / "compute_image_mean.py", GOLDEN / "mnist_train_lmdb", tmp_path / "m2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m2").read_bytes() == (GOLDEN / "mean.binaryproto").read_bytes()
    assert "channel [0]" in r.stdout
    assert sorted(os.listdir(tmp_path)) == ["m2", "mean.binaryproto"]  # no temporaries left


def test_image_mean_of_colour_records(tmp_path, image_list):
    root, lst, arrays = image_list
    convert_imageset(str(root), str(lst), tmp_path / "db")
    mean = compute_image_mean(tmp_path / "db")
    np.testing.assert_allclose(mean, np.mean(np.stack(arrays), axis=0).transpose(2, 0, 1), rtol=1e-6)
    env = lmdb.open(str(tmp_path / "empty"))
    env.close()
    with pytest.raises(DataError, match="empty"):
        compute_image_mean(tmp_path / "empty")


# -- the MNIST example and the benchmark -------------------------------------

def test_create_mnist_offline_split_reproduces_caffes_lmdbs(tmp_path):
    need(MNIST / (IMAGES + ".gz"))
    need(GOLDEN / "mnist_train_lmdb")
    script = ROOT / "examples" / "mnist" / "create_mnist.py"
    r = run_tool(script, "--out", tmp_path, "--from", MNIST)
    # advice in this command's own flags, not get_mnist.py's --split test
    assert r.returncode == 1 and "alone with --split-test N" in r.stderr and "--split test" not in r.stderr
    assert "Traceback" not in r.stderr
    r = run_tool(script, "--out", tmp_path, "--split-test", "8000")
    assert r.returncode == 0, r.stderr
    assert records(tmp_path / "mnist_train_lmdb") == records(GOLDEN / "mnist_train_lmdb")
    assert records(tmp_path / "mnist_test_lmdb") == records(GOLDEN / "mnist_test_lmdb")


def test_bench_prints_images_per_second():
    need(GOLDEN / "mnist_train_lmdb")
    r = run_tool(ROOT / "bench" / "data.py", "--seconds", "0.3")
    assert r.returncode == 0, r.stderr
    assert "images/s" in r.stdout
    rate = float(r.stdout.split("transform:")[1].split()[0])
    assert rate > 1000  # a smoke check; the target (>= 20,000/s) is for a quiet machine


def test_unreachable_mirror_is_not_retried_for_every_file(tmp_path, mirror):
    logged = []
    get_dataset(tmp_path / "out", splits=("test",), mirrors=[DEAD, mirror.url], timeout=5,
                log=logged.append)
    assert sum(DEAD in line for line in logged) == 1  # tried for the first file only
