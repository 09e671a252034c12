"""ImageData, MemoryData, HDF5Data and HDF5Output layers."""
import json

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.errors import CaffeError, DataError
from solvers.blob import Blob
from solvers.layer import create_layer
from solvers.rng import set_random_seed


def make_layer(text, ntop=2, bottom=(), phase=caffe_pb2.TRAIN):
    lp = caffe_pb2.LayerParameter()
    text_format.Merge(text, lp)
    lp.phase = phase
    layer = create_layer(lp)
    top = [Blob() for _ in range(ntop)]
    layer.setup(list(bottom), top)
    return layer, top


def fwd(layer, top, bottom=()):
    layer.forward(list(bottom), top)
    return [t.data.copy() for t in top]


@pytest.fixture
def images(tmp_path):
    """Six 4x5 BGR PNGs in tmp/img/, each filled with its index, and a list file."""
    (tmp_path / "img").mkdir()
    arrays = []
    for i in range(6):
        img = np.zeros((4, 5, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = 10 * i, 10 * i + 1, 10 * i + 2
        cv2.imwrite(str(tmp_path / "img" / ("im %d.png" % i)), img)  # a space in the name
        arrays.append(img.transpose(2, 0, 1))
    lst = tmp_path / "list.txt"
    lst.write_text("".join("im %d.png %d\n" % (i, 100 + i) for i in range(6)))
    return tmp_path, np.stack(arrays)


def image_layer(tmp_path, extra="", transform="", ntop=2, prefetch=""):
    return make_layer('name: "img" type: "ImageData" top: "data" top: "label" '
                      'transform_param { %s } image_data_param { source: "%s" root_folder: "%s/img/" '
                      'batch_size: 4 %s } %s' % (transform, tmp_path / "list.txt", tmp_path, extra, prefetch),
                      ntop)


def test_image_data_reads_the_list_in_order_and_wraps(images):
    tmp_path, arrays = images
    layer, top = image_layer(tmp_path)
    assert top[0].shape == (4, 3, 4, 5)
    d1, l1 = fwd(layer, top)
    d2, l2 = fwd(layer, top)
    layer.close()
    np.testing.assert_array_equal(d1, arrays[:4].astype(np.float32))
    assert l1.tolist() == [100, 101, 102, 103] and l2.tolist() == [104, 105, 100, 101]


def test_image_data_resize_gray_and_transform(images):
    tmp_path, arrays = images
    layer, top = image_layer(tmp_path, "new_height: 8 new_width: 6 is_color: false", "scale: 0.5")
    data, _ = fwd(layer, top)
    layer.close()
    assert data.shape == (4, 1, 8, 6)
    gray0 = cv2.resize(cv2.imread(str(tmp_path / "img" / "im 0.png"), cv2.IMREAD_GRAYSCALE), (6, 8))
    np.testing.assert_array_equal(data[0, 0], gray0.astype(np.float32) * np.float32(0.5))


def test_image_data_shuffle_is_seeded_and_state_resumes(images):
    tmp_path, _ = images

    def labels(seed, n=4):
        set_random_seed(seed)
        layer, top = image_layer(tmp_path, "shuffle: true")
        out = [fwd(layer, top)[1].tolist() for _ in range(n)]
        state = json.loads(json.dumps(layer.get_state()))
        after = fwd(layer, top)[1].tolist()
        layer.close()
        return out, state, after

    a, state, after = labels(5)
    b, _, _ = labels(5)
    assert a == b
    assert sorted(a[0] + a[1][:2]) == list(range(100, 106))  # one pass covers every image once
    set_random_seed(77)
    layer, top = image_layer(tmp_path, "shuffle: true")
    layer.set_state(state)
    assert fwd(layer, top)[1].tolist() == after
    layer.close()


def test_image_data_unreadable_image_names_file_and_line(images):
    tmp_path, _ = images
    (tmp_path / "img" / "im 3.png").write_bytes(b"not a png")
    layer, top = image_layer(tmp_path)
    with pytest.raises(DataError, match=r"list.txt line 4.*im 3.png"):
        fwd(layer, top)
    layer.close()


def test_image_data_missing_list_and_bad_line(images, tmp_path):
    with pytest.raises(DataError, match="not found.*working directory"):
        make_layer('name: "img" type: "ImageData" top: "data" top: "label" '
                   'image_data_param { source: "%s" batch_size: 2 }' % (tmp_path / "nope.txt"))
    (tmp_path / "bad.txt").write_text("im 0.png 1\nim 1.png one\n")
    with pytest.raises(DataError, match="bad.txt line 2"):
        make_layer('name: "img" type: "ImageData" top: "data" top: "label" '
                   'image_data_param { source: "%s" batch_size: 2 }' % (tmp_path / "bad.txt"))


def memory_layer(batch=2):
    return make_layer('name: "mem" type: "MemoryData" top: "data" top: "label" '
                      'memory_data_param { batch_size: %d channels: 1 height: 2 width: 3 }' % batch)


def test_memory_data_serves_arrays_in_batches():
    layer, top = memory_layer()
    assert top[0].shape == (2, 1, 2, 3) and top[1].shape == (2,)
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    layer.set_input_arrays(data, np.array([5, 6, 7, 8], np.float32))
    d1, l1 = fwd(layer, top)
    d2, l2 = fwd(layer, top)
    d3, l3 = fwd(layer, top)
    np.testing.assert_array_equal(d1, data[:2])
    np.testing.assert_array_equal(d2, data[2:])
    np.testing.assert_array_equal(d3, data[:2])
    assert l1.tolist() == [5, 6] and l2.tolist() == [7, 8]
    assert layer.get_state() == {"index": 2}


def test_memory_data_checks_shapes():
    layer, top = memory_layer()
    with pytest.raises(DataError, match="no data"):
        fwd(layer, top)
    with pytest.raises(DataError, match="N x 1 x 2 x 3"):
        layer.set_input_arrays(np.zeros((2, 1, 3, 3), np.float32), np.zeros(2))
    with pytest.raises(DataError, match="multiple of batch_size"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3), np.float32), np.zeros(3))
    with pytest.raises(DataError, match="one label per item"):
        layer.set_input_arrays(np.zeros((2, 1, 2, 3), np.float32), np.zeros(4))


def write_h5(path, data, label):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["label"] = label
    return str(path)


def test_hdf5_data_reads_across_files(tmp_path):
    a = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    b = 100 + np.arange(2 * 2, dtype=np.float32).reshape(2, 2)
    files = [write_h5(tmp_path / "a.h5", a, np.array([0, 1, 2])), write_h5(tmp_path / "b.h5", b, np.array([3, 4]))]
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    layer, top = make_layer('name: "h5" type: "HDF5Data" top: "data" top: "label" '
                            'hdf5_data_param { source: "%s" batch_size: 4 }' % (tmp_path / "list.txt"))
    assert top[0].shape == (4, 2) and top[1].shape == (4,)
    d1, l1 = fwd(layer, top)
    d2, l2 = fwd(layer, top)
    np.testing.assert_array_equal(d1, np.concatenate([a, b[:1]]))
    assert l1.tolist() == [0, 1, 2, 3] and l2.tolist() == [4, 0, 1, 2]
    state = json.loads(json.dumps(layer.get_state()))
    nxt = fwd(layer, top)
    layer.set_state(state)
    again = fwd(layer, top)
    np.testing.assert_array_equal(nxt[0], again[0])



@pytest.mark.parametrize("change,message", [
    ({"file_order": [0, 0]}, "file order"), ({"file": 5}, "file order"),
    ({"perm": [0, 1, 7]}, "permutation"), ({"row": 9}, "outside"), ({"row": -1}, "outside")])
def test_hdf5_data_refuses_a_saved_state_that_does_not_fit(tmp_path, change, message):
    """A side file's state for another data set is an error at restore, not an IndexError mid-run."""
    files = [write_h5(tmp_path / "a.h5", np.zeros((3, 2), np.float32), np.arange(3)),
             write_h5(tmp_path / "b.h5", np.ones((3, 2), np.float32), np.arange(3))]
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    layer, top = make_layer('name: "h5" type: "HDF5Data" top: "data" top: "label" '
                            'hdf5_data_param { source: "%s" batch_size: 2 shuffle: true }' % (tmp_path / "list.txt"))
    state = dict(json.loads(json.dumps(layer.get_state())), **change)
    with pytest.raises(DataError, match=message):
        layer.set_state(state)


def test_memory_and_image_data_refuse_saved_positions_that_do_not_fit(images):
    layer, top = memory_layer()
    layer.set_input_arrays(np.zeros((4, 1, 2, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(DataError, match="outside the 4 items"):
        layer.set_state({"index": 4})
    tmp_path, _ = images
    layer, top = image_layer(tmp_path, "shuffle: true")
    state = layer.get_state()
    with pytest.raises(DataError, match="not a permutation"):
        layer.set_state(dict(state, order=state["order"][:-1]))
    layer.close()

def test_hdf5_data_errors(tmp_path):
    f = write_h5(tmp_path / "a.h5", np.zeros((2, 2), np.float32), np.zeros(2))
    (tmp_path / "list.txt").write_text(f + "\n")
    with pytest.raises(DataError, match="no dataset 'labels'"):
        make_layer('name: "h5" type: "HDF5Data" top: "data" top: "labels" '
                   'hdf5_data_param { source: "%s" batch_size: 2 }' % (tmp_path / "list.txt"))
    with pytest.raises(DataError, match="not found"):
        make_layer('name: "h5" type: "HDF5Data" top: "data" '
                   'hdf5_data_param { source: "%s" batch_size: 2 }' % (tmp_path / "none.txt"), ntop=1)



def test_hdf5_data_damaged_files_are_named_errors(tmp_path):
    """Truncated, foreign or non-numeric HDF5 files: a DataError naming the file, not h5py's exceptions."""
    h5py = pytest.importorskip("h5py")
    good = write_h5(tmp_path / "good.h5", np.zeros((4, 3), np.float32), np.arange(4))
    raw = open(good, "rb").read()
    (tmp_path / "truncated.h5").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "empty.h5").write_bytes(b"")
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("data")
        f["label"] = np.arange(4)
    with h5py.File(tmp_path / "text.h5", "w") as f:
        f["data"] = np.array([b"ab", b"cd"])
        f["label"] = np.arange(2)
    for name, message in [("truncated", "truncated"), ("empty", "empty"), ("group", "is a group"),
                          ("text", "not numbers")]:
        (tmp_path / ("%s.txt" % name)).write_text(str(tmp_path / ("%s.h5" % name)) + "\n")
        with pytest.raises(DataError, match=message) as e:
            make_layer('name: "h5" type: "HDF5Data" top: "data" top: "label" '
                       'hdf5_data_param { source: "%s" batch_size: 2 }' % (tmp_path / ("%s.txt" % name)))
        assert "%s.h5" % name in str(e.value)

def test_hdf5_output_appends_every_batch(tmp_path):
    h5py = pytest.importorskip("h5py")
    data, label = Blob((2, 3)), Blob((2,))
    out = tmp_path / "out.h5"
    layer, _ = make_layer('name: "out" type: "HDF5Output" bottom: "data" bottom: "label" '
                          'hdf5_output_param { file_name: "%s" }' % out, ntop=0, bottom=(data, label))
    for k in range(2):
        data.data[...] = np.arange(6).reshape(2, 3) + 10 * k
        label.data[...] = [k, k + 1]
        layer.forward([data, label], [])
    with h5py.File(out, "r") as f:
        assert f["data"].shape == (4, 3)
        np.testing.assert_array_equal(f["data"][2:], np.arange(6).reshape(2, 3) + 10)
        np.testing.assert_array_equal(f["label"][:], [0, 1, 1, 2])


def test_data_layers_take_no_bottoms(images):
    tmp_path, _ = images
    with pytest.raises(CaffeError):
        make_layer('name: "mem" type: "MemoryData" top: "data" '
                   'memory_data_param { batch_size: 1 channels: 1 height: 1 width: 1 }', ntop=1)


@pytest.fixture
def windows(tmp_path):
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    for i, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / ("w%d.png" % i)), img)
    (tmp_path / "windows.txt").write_text(
        "# 0\nw0.png\n3 20 30\n3\n1 0.9 2 3 12 15\n0 0.1 0 0 29 19\n2 0.3 5 5 9 9\n"
        "# 1\nw1.png\n3 20 30\n2\n2 0.7 10 2 25 18\n0 0.0 1 1 8 8\n")
    boxes = {(1, 0): (2, 3, 12, 15), (2, 1): (10, 2, 25, 18)}
    bgs = [(0, (0, 0, 29, 19)), (0, (5, 5, 9, 9)), (1, (1, 1, 8, 8))]  # overlap < bg_threshold 0.5
    return tmp_path, imgs, boxes, bgs


def window_layer(tmp_path, extra="", transform=""):
    return make_layer('name: "win" type: "WindowData" top: "data" top: "label" '
                      'transform_param { crop_size: 8 %s } window_data_param { source: "%s" '
                      'root_folder: "%s/" batch_size: 4 fg_fraction: 0.5 %s }'
                      % (transform, tmp_path / "windows.txt", tmp_path, extra))


def test_window_data_samples_background_then_foreground_windows(windows):
    tmp_path, imgs, boxes, bgs = windows
    set_random_seed(4)
    layer, top = window_layer(tmp_path, "bg_threshold: 0.5")
    assert top[0].shape == (4, 3, 8, 8)
    data, label = fwd(layer, top)
    layer.close()
    assert label[:2].tolist() == [0, 0] and set(label[2:].tolist()) <= {1, 2}
    candidates = [(lab, imgs[i], b) for (lab, i), b in boxes.items()] + [(0, imgs[i], b) for i, b in bgs]
    for k in range(4):
        ok = False
        for lab, img, (x1, y1, x2, y2) in candidates:
            warped = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (8, 8)).transpose(2, 0, 1).astype(np.float32)
            ok |= lab == label[k] and np.array_equal(warped, data[k])
        assert ok, "item %d is not a warped window of its label" % k


def test_window_data_context_pad_leaves_zero_border_and_is_seeded(windows):
    tmp_path, _, _, _ = windows
    out = []
    for _ in range(2):
        set_random_seed(9)
        layer, top = window_layer(tmp_path, 'context_pad: 2 crop_mode: "square"', "mirror: true scale: 0.5")
        out.append(fwd(layer, top))
        layer.close()
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
    # background window 0 covers the whole image: with context padding it sticks out, so zeros remain
    assert (out[0][0] == 0).any()


def test_window_data_errors(windows, tmp_path):
    tmp_path, _, _, _ = windows
    (tmp_path / "bad.txt").write_text("# 0\nw0.png\n3 20 30\n2\n1 0.9 2 3 12 15\n")
    with pytest.raises(DataError, match="ends inside"):
        make_layer('name: "win" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 8 } '
                   'window_data_param { source: "%s" batch_size: 2 }' % (tmp_path / "bad.txt"))
    with pytest.raises(DataError, match="crop_size"):
        make_layer('name: "win" type: "WindowData" top: "data" top: "label" '
                   'window_data_param { source: "%s" batch_size: 2 }' % (tmp_path / "windows.txt"))
