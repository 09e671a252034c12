"""The Data layer over LMDB: Caffe's record order, wrap-around, transforms, state, errors."""
import json
import os
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import DataError
from solvers.blob import Blob
from solvers.data.datum import array_to_datum, encode_image
from solvers.data.idx import read_mnist
from solvers.layer import create_layer
from solvers.rng import set_random_seed

from helpers import GOLDEN, need_golden

ROOT = Path(__file__).resolve().parents[1]
SCALE = np.float32(0.00390625)


def golden_digits():
    return read_mnist(GOLDEN / "mnist-train-images-idx3-ubyte.gz", GOLDEN / "mnist-train-labels-idx1-ubyte.gz")


def make_layer(text, phase=caffe_pb2.TRAIN, ntop=2):
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(text, lp)
    if not lp.name:
        lp.name = "data"
    lp.type = lp.type or "Data"
    lp.phase = phase
    layer = create_layer(lp)
    top = [Blob() for _ in range(ntop)]
    layer.setup([], top)
    return layer, top


def data_layer(source, batch=4, transform="", extra="", phase=caffe_pb2.TRAIN, ntop=2):
    return make_layer('transform_param { %s } data_param { source: "%s" batch_size: %d backend: LMDB %s }'
                      % (transform, source, batch, extra), phase, ntop)


def write_db(path, arrays, labels=None, encode=None):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, a in enumerate(arrays):
            d = array_to_datum(a, labels[i] if labels is not None else i)
            if encode:
                d.data = encode_image(np.asarray(a), encode)
                d.encoded = True
                d.ClearField("channels")
                d.ClearField("height")
                d.ClearField("width")
            txn.put(b"%08d" % i, d.SerializeToString())
    env.close()
    return str(path)


def forward(layer, top):
    layer.forward([], top)
    return [t.data.copy() for t in top]


@pytest.fixture
def small_db(tmp_path):
    """10 records 1x6x5, pixel values encode the record index; labels 0..9."""
    arrays = [np.full((1, 6, 5), 10 * i, np.uint8) + np.arange(30, dtype=np.uint8).reshape(1, 6, 5)
              for i in range(10)]
    return write_db(tmp_path / "small_lmdb", arrays), np.stack(arrays)


def test_golden_lmdb_batches_in_key_order(monkeypatch):
    need_golden()
    images, labels = golden_digits()
    monkeypatch.chdir(GOLDEN)  # the seed's nets say source: "mnist_train_lmdb", relative
    layer, top = data_layer("mnist_train_lmdb", batch=64, transform="scale: 0.00390625")
    try:
        assert top[0].shape == (64, 1, 28, 28) and top[1].shape == (64,)
        for b in range(3):
            data, label = forward(layer, top)
            sl = slice(64 * b, 64 * b + 64)
            assert data.dtype == np.float32
            np.testing.assert_array_equal(data, images[sl, None].astype(np.float32) * SCALE)
            np.testing.assert_array_equal(label, labels[sl])
        assert layer.get_state()["cursor"] == {"index": 192, "key": "00000192"}
    finally:
        layer.close()


def test_golden_lmdb_opens_read_only_without_lock_file(tmp_path):
    need_golden()
    copy = tmp_path / "ro_lmdb"
    copy.mkdir()
    shutil.copy(GOLDEN / "mnist_test_lmdb" / "data.mdb", copy / "data.mdb")
    layer, top = data_layer(str(copy), batch=8)
    try:
        forward(layer, top)
    finally:
        layer.close()
    assert os.listdir(copy) == ["data.mdb"]  # no lock.mdb was created


def test_wraps_around_at_the_end(small_db):
    path, arrays = small_db
    layer, top = data_layer(path, batch=4)
    labels = [forward(layer, top)[1].tolist() for _ in range(4)]
    layer.close()
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]]


def test_golden_run_wraps_after_8000_records(monkeypatch):
    need_golden()
    _, labels = golden_digits()
    layer, top = data_layer(str(GOLDEN / "mnist_train_lmdb"), batch=64, extra="prefetch: 0")
    layer.set_state({"cursor": {"index": 7936, "key": "00007936"}})
    first = forward(layer, top)[1]
    second = forward(layer, top)[1]  # 8000 = 125 * 64: starts again at record 0
    np.testing.assert_array_equal(first, labels[7936:8000])
    np.testing.assert_array_equal(second, labels[:64])


def test_single_top_gives_data_only(small_db):
    path, arrays = small_db
    layer, top = data_layer(path, batch=3, ntop=1)
    (data,) = forward(layer, top)
    layer.close()
    np.testing.assert_array_equal(data, arrays[:3].astype(np.float32))


def test_rand_skip_is_seeded_and_below_the_limit(small_db):
    path, _ = small_db
    starts = []
    for seed in (1, 1, 2, 3, 4, 5):
        set_random_seed(seed)
        layer, top = data_layer(path, batch=2, extra="rand_skip: 7")
        starts.append(int(forward(layer, top)[1][0]))
        layer.close()
    assert starts[0] == starts[1]
    assert all(0 <= s < 7 for s in starts)
    assert len(set(starts)) > 1


def test_prefetch_thread_and_synchronous_reads_agree(small_db):
    path, _ = small_db
    out = []
    for extra in ("prefetch: 0", "prefetch: 3"):
        set_random_seed(7)
        layer, top = data_layer(path, batch=3, transform="mirror: true crop_size: 4", extra=extra)
        out.append([forward(layer, top)[0] for _ in range(5)])
        layer.close()
    np.testing.assert_array_equal(np.stack(out[0]), np.stack(out[1]))


def test_mean_file_scale_and_mean_values(tmp_path, small_db):
    path, arrays = small_db
    mean = np.linspace(0, 50, 30, dtype=np.float32).reshape(1, 6, 5)
    bp = caffe_pb2.BlobProto(num=1, channels=1, height=6, width=5)
    bp.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(bp.SerializeToString())
    layer, top = data_layer(path, batch=2, transform='scale: 0.5 mean_file: "%s"' % (tmp_path / "mean.binaryproto"))
    data = forward(layer, top)[0]
    layer.close()
    np.testing.assert_array_equal(data, (arrays[:2].astype(np.float32) - mean) * np.float32(0.5))
    layer, top = data_layer(path, batch=2, transform="mean_value: 3.5 scale: 2")
    data = forward(layer, top)[0]
    layer.close()
    np.testing.assert_array_equal(data, (arrays[:2].astype(np.float32) - np.float32(3.5)) * 2)


def test_golden_mean_file(monkeypatch):
    need_golden()
    images, _ = golden_digits()
    from solvers.data.transformer import load_mean_file
    mean = load_mean_file(str(GOLDEN / "mean.binaryproto"))
    assert mean.shape == (1, 28, 28)
    layer, top = data_layer(str(GOLDEN / "mnist_train_lmdb"), batch=16,
                            transform='scale: 0.00390625 mean_file: "%s"' % (GOLDEN / "mean.binaryproto"))
    data = forward(layer, top)[0]
    layer.close()
    np.testing.assert_array_equal(data, (images[:16, None].astype(np.float32) - mean) * SCALE)


def test_mean_file_with_shape_field(tmp_path, small_db):
    path, arrays = small_db
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([1, 1, 6, 5])
    bp.data.extend([1.0] * 30)
    (tmp_path / "m.binaryproto").write_bytes(bp.SerializeToString())
    layer, top = data_layer(path, batch=2, transform='mean_file: "%s"' % (tmp_path / "m.binaryproto"))
    np.testing.assert_array_equal(forward(layer, top)[0], arrays[:2] - np.float32(1))
    layer.close()


def test_centre_crop_in_test_phase(small_db):
    path, arrays = small_db
    layer, top = data_layer(path, batch=3, transform="crop_size: 4", phase=caffe_pb2.TEST)
    data = forward(layer, top)[0]
    layer.close()
    assert data.shape == (3, 1, 4, 4)
    # (6-4)//2 = 1 rows, (5-4)//2 = 0 columns off
    np.testing.assert_array_equal(data, arrays[:3, :, 1:5, 0:4])


def test_random_crop_and_mirror_in_train_are_seeded(small_db):
    path, arrays = small_db

    def run(seed):
        set_random_seed(seed)
        layer, top = data_layer(path, batch=10, transform="crop_size: 3 mirror: true")
        data = forward(layer, top)[0]
        layer.close()
        return data

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # every item is some 3x3 window of its record, flipped or not
    offsets, flips = set(), 0
    for i in range(10):
        found = [(h, w, m) for h in range(4) for w in range(3) for m in (False, True)
                 if np.array_equal(a[i, 0], (arrays[i, 0, h:h + 3, w:w + 3])[:, ::-1] if m
                                   else arrays[i, 0, h:h + 3, w:w + 3])]
        assert len(found) == 1, "item %d is not a crop of its record" % i
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 1 and 0 < flips < 10


def test_mirror_in_test_phase_and_mean_follows_the_crop(tmp_path, small_db):
    path, arrays = small_db
    mean = (np.arange(30, dtype=np.float32) ** 2 / 7).reshape(1, 6, 5)
    bp = caffe_pb2.BlobProto(num=1, channels=1, height=6, width=5)
    bp.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(bp.SerializeToString())
    set_random_seed(0)
    layer, top = data_layer(path, batch=10, phase=caffe_pb2.TEST,
                            transform='crop_size: 4 mirror: true mean_file: "%s"' % (tmp_path / "mean.binaryproto"))
    data = forward(layer, top)[0]
    layer.close()
    plain = arrays[:, :, 1:5, 0:4].astype(np.float32) - mean[:, 1:5, 0:4]
    flipped = 0
    for i in range(10):
        if np.array_equal(data[i], plain[i]):
            continue
        np.testing.assert_array_equal(data[i], plain[i][..., ::-1])
        flipped += 1
    assert 0 < flipped < 10


def test_state_save_and_restore_resumes_exactly(small_db):
    path, _ = small_db
    set_random_seed(11)
    layer, top = data_layer(path, batch=3, transform="crop_size: 4 mirror: true")
    for _ in range(3):
        forward(layer, top)
    state = json.loads(json.dumps(layer.get_state()))  # JSON-able
    expected = [forward(layer, top) for _ in range(4)]
    layer.close()
    set_random_seed(999)  # a different seed: the saved state must be what counts
    other, top2 = data_layer(path, batch=3, transform="crop_size: 4 mirror: true")
    forward(other, top2)
    other.set_state(state)
    got = [forward(other, top2) for _ in range(4)]
    other.close()
    for (d1, l1), (d2, l2) in zip(expected, got):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)


def test_encoded_png_records(tmp_path):
    rng = np.random.default_rng(0)
    color = [rng.integers(0, 256, (3, 5, 4), dtype=np.uint8) for _ in range(4)]
    path = write_db(tmp_path / "enc_lmdb", color, encode="png")
    layer, top = data_layer(path, batch=4)
    np.testing.assert_array_equal(forward(layer, top)[0], np.stack(color).astype(np.float32))
    layer.close()
    import cv2
    layer, top = data_layer(path, batch=2, transform="force_gray: true")
    gray = forward(layer, top)[0]
    layer.close()
    assert gray.shape == (2, 1, 5, 4)
    expect = cv2.cvtColor(np.ascontiguousarray(color[0].transpose(1, 2, 0)), cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(gray[0, 0], expect, atol=1)


def test_float_data_records(tmp_path):
    arrays = [np.full((2, 3, 3), i + 0.25, np.float32) for i in range(3)]
    path = write_db(tmp_path / "float_lmdb", arrays)
    layer, top = data_layer(path, batch=3, transform="scale: 2")
    np.testing.assert_array_equal(forward(layer, top)[0], np.stack(arrays) * 2)
    layer.close()


# -- errors, all at setup unless a bad record is only met later ---------------

def test_missing_database_names_layer_paths_and_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        data_layer("no_such_lmdb")
    msg = str(e.value)
    assert "'data'" in msg and "'no_such_lmdb'" in msg
    assert str(tmp_path / "no_such_lmdb") in msg and str(tmp_path) in msg


def test_empty_database(tmp_path):
    env = lmdb.open(str(tmp_path / "empty_lmdb"))
    env.close()
    with pytest.raises(DataError, match="empty"):
        data_layer(str(tmp_path / "empty_lmdb"))


def test_record_of_another_shape(tmp_path):
    arrays = [np.zeros((1, 4, 4), np.uint8)] * 3 + [np.zeros((1, 5, 4), np.uint8)]
    path = write_db(tmp_path / "mixed_lmdb", arrays)
    layer, top = data_layer(path, batch=2)
    forward(layer, top)
    with pytest.raises(DataError, match="shape"):
        forward(layer, top)
    layer.close()


def test_leveldb_backend_is_a_clear_error(small_db):
    path, _ = small_db
    try:
        import plyvel  # noqa: F401
        pytest.skip("plyvel is installed: LEVELDB is supported")
    except ImportError:
        pass
    with pytest.raises(DataError, match="LEVELDB.*plyvel.*backend: LMDB"):
        make_layer('data_param { source: "%s" batch_size: 2 }' % path)


@pytest.mark.parametrize("transform, match", [
    ("crop_size: 7", "crop_size 7 is larger"),
    ("mean_value: 1 mean_value: 2", "mean_value"),
    ("force_color: true force_gray: true", "force_color and force_gray"),
    ('mean_file: "/nonexistent/mean.binaryproto"', "not found"),
])
def test_bad_transform_params(small_db, transform, match):
    path, _ = small_db
    with pytest.raises(DataError, match=match):
        data_layer(path, transform=transform)


def test_mean_file_of_the_wrong_shape(tmp_path, small_db):
    path, _ = small_db
    bp = caffe_pb2.BlobProto(num=1, channels=1, height=28, width=28)
    bp.data.extend([0.0] * 784)
    (tmp_path / "m.binaryproto").write_bytes(bp.SerializeToString())
    with pytest.raises(DataError, match="mean_file.*shape"):
        data_layer(path, transform='mean_file: "%s"' % (tmp_path / "m.binaryproto"))
    with pytest.raises(DataError, match="not a BlobProto"):
        (tmp_path / "junk").write_bytes(b"\xff\xff\xff")
        data_layer(path, transform='mean_file: "%s"' % (tmp_path / "junk"))


def test_corrupt_record_is_raised_in_forward(tmp_path):
    env = lmdb.open(str(tmp_path / "bad_lmdb"))
    with env.begin(write=True) as txn:
        txn.put(b"00000000", array_to_datum(np.zeros((1, 2, 2), np.uint8), 1).SerializeToString())
        txn.put(b"00000001", b"\xff\xff\xff not a datum")
    env.close()
    layer, top = data_layer(str(tmp_path / "bad_lmdb"), batch=2)
    with pytest.raises(DataError, match="00000001.*not a serialized caffe Datum"):
        forward(layer, top)
    layer.close()


def test_seed_lenet_net_reads_caffes_lmdb_relative_to_cwd(monkeypatch):
    need_golden()
    from solvers.net import Net
    _, labels = golden_digits()
    monkeypatch.chdir(GOLDEN)
    net = Net("lenet_auto_train.prototxt", "TRAIN")
    try:
        net.forward()
        np.testing.assert_array_equal(net.blobs["label"].data, labels[:64])
        assert net.layers[0].get_state()["cursor"]["index"] == 64
    finally:
        net.layers[0].close()
