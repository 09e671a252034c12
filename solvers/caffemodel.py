"""Read a binary .caffemodel one layer at a time, without holding the whole message.

Parsing a NetParameter at once holds the file's bytes and the parsed message
together: for VGG16 (550 MB of weights) that is two extra copies of the
weights beside the net's own. Here the file is read layer by layer (the
top-level ``layer`` entries, field 100), and each blob's packed float data is
viewed in place in that layer's bytes (NumPy on the buffer, no parse copy)
until it is copied into the net: the peak is the net plus its largest layer.

Anything this reader does not expect (V1 ``layers``, unpacked floats, a
truncated or foreign file) makes it give up with ``NotStreamable``; the caller
then parses the whole message as before, which also reports damage in the
project's words.
"""
import numpy as np

from netspec import caffe_pb2
from netspec.io import read_varint

LAYER = 100          # NetParameter.layer
V1_LAYERS = 2        # NetParameter.layers (needs the upgrade: whole-message path)
LP_NAME, LP_BLOBS = 1, 7
BP_NUM, BP_CHANNELS, BP_HEIGHT, BP_WIDTH = 1, 2, 3, 4
BP_DATA, BP_DIFF, BP_SHAPE, BP_DOUBLE_DATA, BP_DOUBLE_DIFF = 5, 6, 7, 8, 9


class NotStreamable(Exception):
    """The file holds something this reader leaves to the whole-message parse."""


def _varint(buf, pos):
    try:
        return read_varint(buf, pos)
    except (IndexError, ValueError) as e:
        raise NotStreamable(str(e)) from None


def _fields(buf):
    """(field number, wire type, value) of a message's bytes; length-delimited values as memoryviews."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise NotStreamable("truncated field %d" % field)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise NotStreamable("wire type %d" % wire)
        if pos > end:
            raise NotStreamable("truncated field %d" % field)
        yield field, wire, value


def _packed(value, wire, dtype):
    if wire != 2 or len(value) % np.dtype(dtype).itemsize:
        raise NotStreamable("values not packed")
    return np.frombuffer(value, dtype=dtype)


def _blob(buf):
    """(a BlobProto with the shape fields only, data array, diff array or None) of a BlobProto's bytes."""
    meta = caffe_pb2.BlobProto()
    data = diff = None
    for field, wire, value in _fields(buf):
        if field == BP_SHAPE and wire == 2:
            meta.shape.MergeFromString(bytes(value))
        elif field in (BP_NUM, BP_CHANNELS, BP_HEIGHT, BP_WIDTH) and wire == 0:
            setattr(meta, {1: "num", 2: "channels", 3: "height", 4: "width"}[field], value)
        elif field == BP_DATA:
            data = _packed(value, wire, "<f4")
        elif field == BP_DOUBLE_DATA:
            data = _packed(value, wire, "<f8").astype(np.float32)
        elif field == BP_DIFF:
            diff = _packed(value, wire, "<f4")
        elif field == BP_DOUBLE_DIFF:
            diff = _packed(value, wire, "<f8").astype(np.float32)
    return meta, (np.zeros(0, np.float32) if data is None else data), diff


def iter_layers(path):
    """Yield (layer name, [(shape-only BlobProto, data, diff or None)]) for each layer of the file."""
    with open(path, "rb") as f:
        while True:
            tag = _read_varint(f)
            if tag is None:
                return
            field, wire = tag >> 3, tag & 7
            if field == V1_LAYERS:
                raise NotStreamable("V1 layers")
            if wire == 0:
                _read_varint(f)
            elif wire == 1 or wire == 5:
                f.seek(8 if wire == 1 else 4, 1)
            elif wire == 2:
                n = _read_varint(f)
                if n is None:
                    raise NotStreamable("truncated")
                if field != LAYER:
                    f.seek(n, 1)
                    continue
                chunk = f.read(n)
                if len(chunk) != n:
                    raise NotStreamable("truncated layer")
                yield _layer(memoryview(chunk))
                del chunk
            else:
                raise NotStreamable("wire type %d" % wire)


def _layer(buf):
    name, blobs = None, []
    for field, wire, value in _fields(buf):
        if field == LP_NAME and wire == 2:
            name = bytes(value).decode("utf-8", errors="replace")
        elif field == LP_BLOBS and wire == 2:
            blobs.append(_blob(value))
    if name is None:
        raise NotStreamable("layer without a name")
    return name, blobs


def _read_varint(f):
    """A varint from the file, or None at a clean end of file."""
    result = shift = 0
    first = True
    while True:
        b = f.read(1)
        if not b:
            if first:
                return None
            raise NotStreamable("truncated varint")
        first = False
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise NotStreamable("varint too long")
