"""Property-based fuzzing of the readers: whatever the input, only the toolkit's errors escape.

Targets: the text prototxt reader (nets and solvers, mutated from real files), the binary
readers (a caffemodel and a mean binaryproto, mutated byte by byte), Datum, IDX and BlobProto
shapes (built from arbitrary fields), layer ``blobs`` given in a net, and Net construction from
mutated real prototxts (the golden LeNet nets and zoo nets under ../shared/golden, skipped when
absent). Each target takes a few seconds; CAFFE_FUZZ_LONG=600 runs each for ten minutes with
fresh random examples (tests/fuzzing.py).
"""
import re
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")
from hypothesis import strategies as st  # noqa: E402

from netspec import caffe_pb2  # noqa: E402
from netspec.errors import CaffeError  # noqa: E402
from netspec.io import blobproto_to_array, parse_binary, parse_text, read_solver  # noqa: E402
from netspec.upgrade import upgrade_net  # noqa: E402

from fuzzing import fuzz_run  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
LENET = GOLDEN / "lenet"
ZOO = GOLDEN / "zoo" / "prototxt"


def golden(path):
    if not path.exists():
        pytest.skip("golden data from BVLC Caffe not found at %s" % path)
    return path


def only_toolkit_errors(function, *args):
    """Call ``function``; a CaffeError is an answer, anything else escapes and fails the test."""
    try:
        function(*args)
    except CaffeError:
        pass


# -- mutations ---------------------------------------------------------------------------

INTERESTING = ["-9223372036854775808", "-2147483648", "-1", "0", "1", "2", "3", "7", "255", "1000",
               "2147483648", "4294967296", "9223372036854775807", "18446744073709551616", "1e30",
               "-0.5", "nan", "inf", "0x10", "1.5"]
TOKENS = ["{", "}", ":", '"', "\n", " ", "#", "'", "\\", "layer", "name", "type", "bottom", "top",
          "dim", "shape", "-", ".", "e", "0", "9", "inf", "\x00", "\u00e9", "\\x", "\\0"]
NUMBER = re.compile(r"-?\d+(\.\d*)?(e-?\d+)?")


@st.composite
def mutated_text(draw, texts, char_level=True):
    """One of ``texts`` with one to four edits: numbers replaced, lines dropped, doubled or swapped,
    and (``char_level``) characters deleted, inserted or copied."""
    text = draw(st.sampled_from(texts))
    kinds = ["number", "drop_line", "dup_line", "swap_lines", "word"]
    if char_level:
        kinds += ["delete", "insert", "copy"]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        lines = text.split("\n")
        if kind == "number":
            spots = [m.span() for m in NUMBER.finditer(text)]
            if spots:
                a, b = draw(st.sampled_from(spots))
                text = text[:a] + draw(st.sampled_from(INTERESTING)) + text[b:]
        elif kind in ("drop_line", "dup_line"):
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i + 1] = [] if kind == "drop_line" else [lines[i], lines[i]]
            text = "\n".join(lines)
        elif kind == "swap_lines":
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif kind == "word":   # a name or keyword put where another one was
            words = [m.span() for m in re.finditer(r"[A-Za-z_][A-Za-z_0-9]*", text)]
            if words:
                a, b = draw(st.sampled_from(words))
                c, d = draw(st.sampled_from(words))
                text = text[:a] + text[c:d] + text[b:]
        else:
            pos = draw(st.integers(0, len(text)))
            if kind == "delete":
                text = text[:pos] + text[pos + draw(st.integers(1, 40)):]
            elif kind == "insert":
                junk = draw(st.lists(st.sampled_from(TOKENS) | st.text(max_size=2), max_size=6))
                text = text[:pos] + "".join(junk) + text[pos:]
            else:
                text = text[:pos] + text[pos:pos + draw(st.integers(1, 80))] + text[pos:]
    return text


@st.composite
def mutated_bytes(draw, blobs):
    """One of ``blobs`` with one to four byte edits, mostly near the start (where the structure is)."""
    data = bytearray(draw(st.sampled_from(blobs)))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        pos = draw(st.integers(0, min(n, 4096)) | st.integers(0, n))
        kind = draw(st.sampled_from(["set", "delete", "insert", "truncate", "copy"]))
        if kind == "set" and pos < n:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


# -- the text reader ---------------------------------------------------------------------

def _net_texts():
    files = sorted(ZOO.glob("*.prototxt")) + sorted(LENET.glob("lenet_auto_*.prototxt"))
    files = [f for f in files if "solver" not in f.name]
    if not files:
        pytest.skip("golden prototxts from BVLC Caffe not found under %s" % GOLDEN)
    return [f.read_text() for f in files]


def test_text_net_reader():
    def check(text):
        def read():
            upgrade_net(parse_text(text, caffe_pb2.NetParameter, "fuzz.prototxt"))
        only_toolkit_errors(read)
    fuzz_run(mutated_text(_net_texts()), check, 100, "text net reader")


def test_text_solver_reader():
    texts = [golden(LENET / "lenet_auto_solver.prototxt").read_text()]

    def check(text):
        if "{" not in text and "\n" not in text:
            text += "\n"   # read_solver takes it as text, not as a path
        only_toolkit_errors(read_solver, text)
    fuzz_run(mutated_text(texts), check, 80, "text solver reader")


# -- the binary readers ------------------------------------------------------------------

def test_binary_caffemodel_reader():
    model = golden(LENET / "lenet_init.caffemodel").read_bytes()

    def check(data):
        def read():
            net = parse_binary(data, caffe_pb2.NetParameter, "fuzz.caffemodel")
            upgrade_net(net)
            for layer in net.layer:
                for blob in layer.blobs:
                    blobproto_to_array(blob)
        only_toolkit_errors(read)
    fuzz_run(mutated_bytes([model]), check, 40, "binary caffemodel reader")


def test_binaryproto_reader():
    mean = golden(LENET / "mean.binaryproto").read_bytes()
    small = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=2, data=[1, 2, 3, 4]).SerializeToString()

    def check(data):
        def read():
            from solvers.blob import Blob
            proto = parse_binary(data, caffe_pb2.BlobProto, "fuzz.binaryproto")
            blobproto_to_array(proto)
            Blob().from_proto(proto)
        only_toolkit_errors(read)
    fuzz_run(mutated_bytes([mean, small]), check, 100, "binaryproto reader")


# -- shapes: BlobProto, Datum, IDX -------------------------------------------------------

DIM = st.integers(-3, 8) | st.integers(-2 ** 63, 2 ** 63 - 1) | st.sampled_from([2 ** 31, 2 ** 32, 2 ** 62])
INT32 = st.integers(-3, 8) | st.integers(-2 ** 31, 2 ** 31 - 1)
VALUES = st.lists(st.floats(width=32, allow_nan=True), max_size=40)


@st.composite
def blob_protos(draw):
    proto = caffe_pb2.BlobProto()
    if draw(st.booleans()):
        proto.shape.dim.extend(draw(st.lists(DIM, max_size=6)))
    else:
        for field in ("num", "channels", "height", "width"):
            if draw(st.booleans()):
                setattr(proto, field, draw(INT32))
    getattr(proto, draw(st.sampled_from(["data", "double_data"]))).extend(draw(VALUES))
    if draw(st.booleans()):
        getattr(proto, draw(st.sampled_from(["diff", "double_diff"]))).extend(draw(VALUES))
    return proto


def test_blobproto_shapes():
    from solvers.blob import Blob

    def check(proto):
        only_toolkit_errors(blobproto_to_array, proto)
        only_toolkit_errors(blobproto_to_array, proto, True)
        only_toolkit_errors(Blob().from_proto, proto)
    fuzz_run(blob_protos(), check, 150, "BlobProto shapes")


def _png():
    import cv2
    ok, buf = cv2.imencode(".png", np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    return buf.tobytes()


@st.composite
def datum_bytes(draw):
    """A serialized Datum with arbitrary sizes and payloads (or a mutated one)."""
    d = caffe_pb2.Datum()
    for field in ("channels", "height", "width"):
        if draw(st.booleans()):
            setattr(d, field, draw(INT32))
    d.encoded = draw(st.booleans())
    kind = draw(st.sampled_from(["bytes", "floats", "png", "none"]))
    if kind == "bytes":
        d.data = draw(st.binary(max_size=64))
    elif kind == "floats":
        d.float_data.extend(draw(VALUES))
    elif kind == "png":
        d.data = draw(mutated_bytes([_png()]))
    d.label = draw(INT32)
    raw = d.SerializeToString()
    return draw(st.just(raw) | mutated_bytes([raw]))


def test_datum_shapes():
    from solvers.data.datum import datum_shape, datum_to_array, datums_to_batch, parse_datum

    def check(pair):
        def read():
            a, b = parse_datum(pair[0]), parse_datum(pair[1])
            datum_shape(a, None)
            datum_to_array(a, True)
            datums_to_batch([a, b])
            datums_to_batch([a, a])
        only_toolkit_errors(read)
    fuzz_run(st.tuples(datum_bytes(), datum_bytes()), check, 100, "Datum shapes")


@st.composite
def idx_bytes(draw):
    type_code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]) | st.integers(0, 255))
    dims = draw(st.lists(st.integers(0, 5) | st.integers(0, 2 ** 32 - 1), max_size=5))
    head = bytes([0, 0, type_code, draw(st.just(len(dims)) | st.integers(0, 255))])
    head += b"".join(d.to_bytes(4, "big") for d in dims)
    size = 1
    for d in dims:
        size *= d
    body = draw(st.binary(max_size=48) | st.just(bytes(size * 8) if size <= 64 else b""))
    return draw(st.just(head + body) | mutated_bytes([head + body]))


def test_idx_headers():
    from solvers.data.idx import IMAGES_MAGIC, parse_idx

    def check(data):
        only_toolkit_errors(parse_idx, data, "fuzz-idx")
        only_toolkit_errors(parse_idx, data, "fuzz-idx", IMAGES_MAGIC)
    fuzz_run(idx_bytes(), check, 150, "IDX headers")


# -- nets ---------------------------------------------------------------------------------

TINY = """name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 } }
"""


def test_layer_blobs_in_a_net():
    """Trained blobs given inside the net (LayerParameter.blobs) with arbitrary shapes."""
    from solvers.net import Net
    from google.protobuf import text_format

    def check(blobs):
        param = text_format.Parse(TINY, caffe_pb2.NetParameter())
        for proto in blobs:
            param.layer[1].blobs.add().CopyFrom(proto)
        only_toolkit_errors(Net, param, "TEST")
    fuzz_run(st.lists(blob_protos(), min_size=1, max_size=3), check, 60, "layer blobs")


def _close(net):
    for layer in getattr(net, "layers", []):
        close = getattr(layer, "close", None)
        if close is not None:
            close()


def test_net_construction_from_mutated_real_prototxts(monkeypatch):
    """The golden LeNet train/test nets (their LMDBs beside them) and SqueezeNet (batch 1)."""
    from solvers.net import Net
    texts = [golden(LENET / "lenet_auto_train.prototxt").read_text(),
             golden(LENET / "lenet_auto_test.prototxt").read_text()]
    squeeze = ZOO / "squeezenet_v1.1.prototxt"
    if squeeze.exists():
        texts.append(squeeze.read_text().replace("dim: 10 dim: 3 dim: 227 dim: 227", "dim: 1 dim: 3 dim: 67 dim: 67"))
    monkeypatch.chdir(LENET)   # the LeNet nets name their LMDBs relative to this folder

    def check(text):
        net = None
        try:
            net = Net(text, phase="TRAIN" if "TRAIN" in text else "TEST")
        except CaffeError:
            pass
        finally:
            _close(net)
    fuzz_run(mutated_text(texts, char_level=False), check, 25, "Net construction")


@pytest.mark.parametrize("fields", [
    {"shape": [0, 2 ** 61]},                                                    # found by test_blobproto_shapes
    {"num": 1518500250, "channels": 0, "height": 0, "width": 1518500250},        # found in a long run
    {"shape": [-1, 2]}, {"shape": [2 ** 31, 1]}, {"num": -4}])
def test_shapes_the_fuzzer_found(fields):
    """NumPy refuses a shape whose non-zero dims multiply past its index range even when it holds
    nothing; every such shape is a BlobShapeError (a ProtoError and a ValueError), never NumPy's."""
    from netspec.errors import BlobShapeError
    proto = caffe_pb2.BlobProto()
    for name, value in fields.items():
        if name == "shape":
            proto.shape.dim.extend(value)
        else:
            setattr(proto, name, value)
    with pytest.raises(BlobShapeError, match="shape"):
        blobproto_to_array(proto)


def test_idx_shape_the_fuzzer_found():
    """Found in a long run: dims 0 x 3 x 4 x 2^28 x 2^30 declare no data, but NumPy cannot index them."""
    from netspec.errors import DataError
    from solvers.data.idx import parse_idx
    data = b"\x00\x00\x08\x05" + b"".join(d.to_bytes(4, "big") for d in (0, 3, 4, 0x344112cc, 0x3441e2f5))
    with pytest.raises(DataError, match="IDX file fuzz-idx: header"):
        parse_idx(data, "fuzz-idx")
