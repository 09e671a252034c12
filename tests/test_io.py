"""netspec.io: Caffe's text and binary files, named errors, atomic writes."""

import os
from pathlib import Path

import numpy as np
import pytest

from netspec import caffe_pb2, io
from netspec.errors import ProtoError

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
LENET = GOLDEN / "lenet"


def golden(*parts):
    path = GOLDEN.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"golden data not found at {path} (BVLC Caffe reference files are absent)")
    return path


SMALL_NET = """name: "tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 2 dim: 3 } }
}
layer {
  name: "ip"
  type: "InnerProduct"
  bottom: "data"
  top: "ip"
  param { lr_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.01 } }
}
"""


# ---------------------------------------------------------------- text parsing and errors

def test_parse_text_reads_fields_and_keeps_schema_defaults():
    net = io.parse_text(SMALL_NET, caffe_pb2.NetParameter)
    assert [l.name for l in net.layer] == ["data", "ip"]
    ip = net.layer[1]
    assert ip.param[1].lr_mult == 2 and ip.param[1].decay_mult == 0
    assert ip.param[0].decay_mult == 1  # schema default, not re-typed
    assert ip.inner_product_param.bias_term is True
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3]


def test_malformed_prototxt_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "c"\n  type: "ReLU"\n  bottom: 3\n}\n')
    with pytest.raises(ProtoError) as err:
        io.read_text(path, caffe_pb2.NetParameter)
    msg = str(err.value)
    assert msg.startswith(f"{path}:5:11: ")
    assert "Expected string" in msg
    lines = msg.splitlines()
    assert lines[1].strip() == "bottom: 3"
    # the caret sits under the offending token
    assert lines[2].index("^") == lines[1].index("3")


def test_unknown_field_suggests_closest_names(tmp_path):
    path = tmp_path / "typo.prototxt"
    path.write_text('layer {\n  name: "c"\n  type: "Convolution"\n'
                    '  convolution_parm { num_output: 3 }\n}\n')
    with pytest.raises(ProtoError) as err:
        io.read_net(path)
    msg = str(err.value)
    assert f"{path}:4:3:" in msg
    assert 'no field named "convolution_parm"' in msg
    assert "did you mean 'convolution_param'" in msg


def test_unknown_enum_value_suggests_valid_values():
    text = 'layer { name: "p" type: "Pooling" pooling_param { pool: MAXX } }'
    with pytest.raises(ProtoError) as err:
        io.parse_text(text, caffe_pb2.NetParameter, filename="pool.prototxt")
    msg = str(err.value)
    assert msg.startswith("pool.prototxt:1:")
    assert "did you mean MAX" in msg


def test_solver_file_read_as_net_gets_a_hint():
    with pytest.raises(ProtoError) as err:
        io.parse_text('base_lr: 0.1\n', caffe_pb2.NetParameter, "solver.prototxt")
    assert "solver.prototxt:1:1:" in str(err.value)
    assert "field of SolverParameter" in str(err.value)


def test_v1_enum_type_in_new_layer_block_gets_a_hint():
    with pytest.raises(ProtoError) as err:
        io.parse_text('layer {\n  type: CONVOLUTION\n}\n', caffe_pb2.NetParameter, "n.prototxt")
    assert "n.prototxt:2:9:" in str(err.value)
    assert "double quotes" in str(err.value)


def test_unclosed_block_says_where_it_opened():
    with pytest.raises(ProtoError) as err:
        io.parse_text('name: "x"\nlayer {\n  name: "c"\n', caffe_pb2.NetParameter, "open.prototxt")
    assert "open.prototxt:" in str(err.value)
    assert "opened at line 2, column 7" in str(err.value)


def test_binary_bytes_given_as_text_is_a_named_error():
    with pytest.raises(ProtoError) as err:
        io.parse_text(b"\x0a\x05\xff\xfe\x00", caffe_pb2.NetParameter, "w.caffemodel")
    assert "w.caffemodel" in str(err.value) and "UTF-8" in str(err.value)


def test_missing_file_names_written_and_resolved_path_and_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtoError) as err:
        io.read_net("models/nope.prototxt")
    msg = str(err.value)
    assert "'models/nope.prototxt'" in msg
    assert str(tmp_path / "models" / "nope.prototxt") in msg
    assert f"working directory: {str(tmp_path)!r}" in msg
    with pytest.raises(ProtoError):
        io.read_binary("nope.caffemodel", caffe_pb2.NetParameter)
    with pytest.raises(ProtoError, match="directory"):
        io.read_text(tmp_path, caffe_pb2.NetParameter)


# ---------------------------------------------------------------- binary errors

def test_truncated_caffemodel_is_a_named_error(tmp_path):
    data = golden("lenet", "lenet_init.caffemodel").read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[:100000])
    with pytest.raises(ProtoError) as err:
        io.read_net(cut)
    msg = str(err.value)
    assert str(cut) in msg
    assert "100000 bytes" in msg
    assert "caffe.NetParameter" in msg
    assert "cut short" in msg and "(layer)" in msg


def test_wrong_type_binary_says_what_the_file_holds():
    state = golden("lenet", "lenet_iter_250.solverstate")
    with pytest.raises(ProtoError) as err:
        io.read_binary(state, caffe_pb2.NetParameter)
    msg = str(err.value)
    assert str(state) in msg and f"{state.stat().st_size} bytes" in msg
    assert "caffe.SolverState" in msg
    with pytest.raises(ProtoError, match="caffe.BlobProto"):
        io.read_binary(LENET / "mean.binaryproto", caffe_pb2.SolverState)
    with pytest.raises(ProtoError, match="caffe.NetParameter"):
        io.read_blob_proto(LENET / "lenet_init.caffemodel")


def test_text_file_read_as_binary_is_recognised():
    path = golden("lenet", "lenet_auto_train.prototxt")
    with pytest.raises(ProtoError, match="text"):
        io.read_binary(path, caffe_pb2.NetParameter)


def test_empty_and_garbage_binary_files(tmp_path):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(ProtoError, match="empty"):
        io.read_net(empty)
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ProtoError, match="junk.caffemodel"):
        io.read_net(junk)
    h5 = tmp_path / "w.caffemodel"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00\xff" * 20)
    with pytest.raises(ProtoError, match="HDF5"):
        io.read_net(h5)


# ---------------------------------------------------------------- atomic writes

def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


class _Unserialisable:
    def SerializeToString(self):
        raise RuntimeError("boom")


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path, monkeypatch):
    target = tmp_path / "w.caffemodel"
    target.write_bytes(b"old contents")
    with pytest.raises(ProtoError, match="untouched"):
        io.write_binary(_Unserialisable(), target)
    assert target.read_bytes() == b"old contents"

    text_target = tmp_path / "net.prototxt"
    text_target.write_text("old text")

    def fail(message):
        raise RuntimeError("cannot print")
    monkeypatch.setattr(io, "to_text", fail)
    with pytest.raises(ProtoError):
        io.write_text(caffe_pb2.NetParameter(name="x"), text_target)
    assert text_target.read_text() == "old text"
    assert _leftovers(tmp_path, {"w.caffemodel", "net.prototxt"}) == []


def test_atomic_write_keeps_old_file_when_the_disk_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "net.caffemodel"
    target.write_bytes(b"old contents")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ProtoError, match="No space left"):
        io.write_binary(caffe_pb2.NetParameter(name="new"), target)
    assert target.read_bytes() == b"old contents"
    assert _leftovers(tmp_path, {"net.caffemodel"}) == []


def test_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "net.prototxt"
    target.write_text("old")
    os.chmod(target, 0o640)
    io.write_text(caffe_pb2.NetParameter(name="new"), target)
    assert target.read_text() == 'name: "new"\n'
    assert (target.stat().st_mode & 0o777) == 0o640
    with pytest.raises(ProtoError, match="does not exist"):
        io.write_text(caffe_pb2.NetParameter(), tmp_path / "no" / "dir.prototxt")


# ---------------------------------------------------------------- round trips and formatting

def test_round_trip_text_binary_text(tmp_path):
    net = io.parse_text(SMALL_NET, caffe_pb2.NetParameter)
    net.layer[1].blobs.add().CopyFrom(io.array_to_blobproto(np.arange(12, dtype=np.float32)
                                                            .reshape(4, 3) / 7))
    io.write_binary(net, tmp_path / "a.caffemodel")
    back = io.read_binary(tmp_path / "a.caffemodel", caffe_pb2.NetParameter)
    assert back == net
    io.write_text(back, tmp_path / "a.prototxt")
    again = io.read_text(tmp_path / "a.prototxt", caffe_pb2.NetParameter)
    assert again == net
    # text keeps every float32 bit
    assert np.array_equal(io.blobproto_to_array(again.layer[1].blobs[0]),
                          np.arange(12, dtype=np.float32).reshape(4, 3) / 7)


def test_text_output_prints_numbers_as_caffe_does():
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="d", type="Data")
    layer.param.add(lr_mult=1, decay_mult=0)
    layer.transform_param.scale = 1 / 255.0
    text = io.to_text(net)
    assert "lr_mult: 1\n" in text and "decay_mult: 0\n" in text
    assert "scale: 0.00392156886\n" in text
    solver = caffe_pb2.SolverParameter(base_lr=0.01, delta=1e-8)
    assert io.to_text(solver) == "base_lr: 0.01\ndelta: 1e-08\n"


def test_golden_text_files_survive_write_and_read(tmp_path):
    for path in sorted(golden("netspec").glob("*.prototxt")):
        if "solver" in path.name:
            continue
        net = io.read_text(path, caffe_pb2.NetParameter)
        io.write_text(net, tmp_path / path.name)
        assert io.read_text(tmp_path / path.name, caffe_pb2.NetParameter) == net, path.name


def test_read_net_detects_text_binary_and_inline_text(tmp_path):
    net = io.parse_text(SMALL_NET, caffe_pb2.NetParameter)
    io.write_binary(net, tmp_path / "weights.bin")
    io.write_text(net, tmp_path / "net.cfg")
    assert io.read_net(tmp_path / "weights.bin") == net
    assert io.read_net(str(tmp_path / "net.cfg")) == net
    assert io.read_net(SMALL_NET) == net
    assert io.is_binary_file(tmp_path / "weights.bin")
    assert not io.is_binary_file(tmp_path / "net.cfg")
    # the content wins over a misleading suffix
    io.write_binary(net, tmp_path / "really_binary.prototxt")
    io.write_text(net, tmp_path / "really_text.caffemodel")
    assert io.read_net_file(tmp_path / "really_binary.prototxt") == (net, "binary")
    assert io.read_net_file(tmp_path / "really_text.caffemodel") == (net, "text")
    # a short binary net that happens to be printable bytes
    printable = caffe_pb2.NetParameter(name="n" * 40)
    io.write_binary(printable, tmp_path / "short.caffemodel")
    assert io.read_net_file(tmp_path / "short.caffemodel") == (printable, "binary")


# ---------------------------------------------------------------- Caffe's own binaries

def test_read_golden_caffemodel_as_netparameter():
    net = io.read_net(golden("lenet", "lenet_init.caffemodel"))
    same = io.read_binary(LENET / "lenet_init.caffemodel", caffe_pb2.NetParameter)
    assert net == same
    shapes = {l.name: [tuple(io.blobproto_to_array(b).shape) for b in l.blobs]
              for l in net.layer if l.blobs}
    assert shapes["conv1"] == [(20, 1, 5, 5), (20,)]
    assert shapes["conv2"] == [(50, 20, 5, 5), (50,)]
    assert all(io.blobproto_to_array(b).dtype == np.float32 for l in net.layer for b in l.blobs)
    # bias filler is constant 0 in the seed's LeNet
    assert not io.blobproto_to_array(net.layer[1].blobs[1]).any()


def test_read_golden_solverstate():
    state = io.read_binary(golden("lenet", "lenet_iter_250.solverstate"), caffe_pb2.SolverState)
    assert state.iter == 250
    assert state.learned_net.endswith("lenet_iter_250.caffemodel")
    net = io.read_net(LENET / "lenet_iter_250.caffemodel")
    params = [b for l in net.layer for b in l.blobs]
    assert len(state.history) == len(params)
    for hist, param in zip(state.history, params):
        assert io.blobproto_to_array(hist).shape == io.blobproto_to_array(param).shape


def test_read_golden_mean_binaryproto_with_legacy_dims():
    blob = io.read_blob_proto(golden("lenet", "mean.binaryproto"))
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 28, 28)
    assert len(blob.shape.dim) == 0
    mean = io.blobproto_to_array(blob)
    assert mean.shape == (1, 1, 28, 28) and mean.dtype == np.float32
    assert 0 <= mean.min() and mean.max() <= 255 and mean.mean() > 1


# ---------------------------------------------------------------- blob conversion

def test_array_blobproto_round_trip_with_diff():
    data = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    diff = -data
    blob = io.array_to_blobproto(data, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    assert np.array_equal(io.blobproto_to_array(blob), data)
    assert np.array_equal(io.blobproto_to_array(blob, return_diff=True), diff)
    with pytest.raises(ProtoError, match="diff shape"):
        io.array_to_blobproto(data, diff[:1])
    # the fast path encodes exactly what protobuf itself would
    slow = caffe_pb2.BlobProto(data=data.ravel().tolist(), diff=diff.ravel().tolist())
    slow.shape.dim.extend([2, 3, 4])
    assert blob.SerializeToString() == slow.SerializeToString()
    empty = io.array_to_blobproto(np.zeros((0, 3), np.float32))
    assert list(empty.shape.dim) == [0, 3] and len(empty.data) == 0
    assert io.blobproto_to_array(empty).shape == (0, 3)
    scalar = io.array_to_blobproto(np.float32(2.5))
    assert len(scalar.shape.dim) == 0 and io.blobproto_to_array(scalar) == np.float32(2.5)


def test_blobproto_legacy_double_and_inconsistent_forms():
    legacy = caffe_pb2.BlobProto(num=2, channels=1, height=1, width=3, data=range(6))
    assert io.blobproto_to_array(legacy).shape == (2, 1, 1, 3)
    double = caffe_pb2.BlobProto(double_data=[0.5, 1.5])
    double.shape.dim.append(2)
    out = io.blobproto_to_array(double)
    assert out.dtype == np.float32 and out.tolist() == [0.5, 1.5]
    bad = caffe_pb2.BlobProto(data=[1, 2, 3])
    bad.shape.dim.extend([2, 2])
    with pytest.raises(ProtoError, match="3 values"):
        io.blobproto_to_array(bad)


def test_every_golden_caffe_binary_reads_as_its_type():
    root = GOLDEN
    if not root.exists():
        pytest.skip(f"golden data not found at {root}")
    kinds = {".caffemodel": caffe_pb2.NetParameter, ".solverstate": caffe_pb2.SolverState,
             ".binaryproto": caffe_pb2.BlobProto}
    seen = 0
    for path in sorted(root.rglob("*")):
        cls = kinds.get(path.suffix)
        if cls is None:
            continue
        message = io.read_binary(path, cls)
        # nothing dropped or unknown: written back, it is Caffe's file byte for byte
        assert message.SerializeToString() == path.read_bytes(), path
        seen += 1
    assert seen >= 3


def test_new_file_gets_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        io.write_binary(caffe_pb2.BlobProto(), tmp_path / "m.binaryproto")
    finally:
        os.umask(old)
    assert ((tmp_path / "m.binaryproto").stat().st_mode & 0o777) == 0o640
