"""Reading and writing Caffe's protobuf files, text and binary.

Caffe keeps nets and solvers as text (``.prototxt``) and weights, means and
solver snapshots as binary protobuf (``.caffemodel``, ``.binaryproto``,
``.solverstate``). This module is the one door to those files, so that every
failure becomes a ``ProtoError`` a person can act on (file, line, column,
what was expected, what the file seems to hold) and every write is atomic
(a crash never leaves half a snapshot nor destroys the previous one).
"""

import difflib
import hashlib
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf import text_format

from netspec import caffe_pb2
from netspec.atomic import AtomicFile
from netspec.descriptor_compat import is_repeated
from netspec.errors import BlobShapeError, ProtoError
from netspec.shapes import shape_count
from netspec.upgrade import upgrade_net, upgrade_solver

__all__ = [
    "read_text", "parse_text", "write_text", "read_binary", "write_binary",
    "read_net", "read_net_file", "read_solver", "read_blob_proto", "blobproto_to_array",
    "array_to_blobproto", "atomic_write_bytes", "guess_binary_type", "parse_binary",
    "to_text", "is_binary_file",
]

# Messages Caffe stores in binary files, tried in this order when guessing
# what a file holds.
BINARY_CANDIDATES = (
    caffe_pb2.NetParameter,
    caffe_pb2.SolverState,
    caffe_pb2.BlobProto,
    caffe_pb2.BlobProtoVector,
    caffe_pb2.Datum,
    caffe_pb2.SolverParameter,
)


# ---------------------------------------------------------------- files

def _describe_path(path):
    """'as written' / 'as resolved' / cwd: what a user needs to find a file."""
    written = os.fspath(path)
    resolved = Path(written).resolve()
    return (f"path as written: {written!r}; resolved: {str(resolved)!r}; "
            f"working directory: {os.getcwd()!r}")


_NOT_REGULAR = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device")]


def _read_bytes(path, what):
    """The bytes of a regular file; anything else (a FIFO would block for ever) is a ProtoError.

    The file is opened without blocking and checked through its descriptor,
    so what is checked is what is read.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
                raise ProtoError(f"cannot read {what}: it is {kind}, not a regular file "
                                 f"({_describe_path(path)})")
            return f.read()
    except FileNotFoundError:
        raise ProtoError(f"cannot read {what}: no such file ({_describe_path(path)})") from None
    except IsADirectoryError:
        raise ProtoError(f"cannot read {what}: it is a directory, not a file "
                         f"({_describe_path(path)})") from None
    except PermissionError:
        raise ProtoError(f"cannot read {what}: permission denied "
                         f"({_describe_path(path)})") from None
    except OSError as e:
        raise ProtoError(f"cannot read {what}: {e.strerror or e} "
                         f"({_describe_path(path)})") from None


def _type_name(message_class):
    return message_class.DESCRIPTOR.full_name


def file_digest(path, algorithm):
    """Hex digest (``algorithm`` as hashlib names it: "md5", "sha256") of a file, read in 1 MB
    chunks so that big snapshots and downloads are never held whole."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    ``data`` is bytes or a callable returning bytes; the callable runs before
    the target is touched, so a failing serialisation leaves the old file as
    it was. The bytes go to a temporary file in the same directory, are
    fsync'ed, and replace the target with ``os.replace`` (netspec.atomic).
    """
    path = os.fspath(path)
    try:
        payload = data() if callable(data) else data
    except ProtoError:
        raise
    except Exception as e:
        raise ProtoError(f"cannot write {path!r}: serialising the message failed "
                         f"({type(e).__name__}: {e}); the existing file was left untouched") from e
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ProtoError(f"cannot write {path!r}: directory {directory!r} does not exist "
                         f"({_describe_path(path)})")
    try:
        with AtomicFile(path) as f:
            f.write(payload)
            f.commit()
    except OSError as e:
        raise ProtoError(f"cannot write {path!r}: {e.strerror or e}; the existing file was left "
                         f"untouched ({_describe_path(path)})") from None


# ---------------------------------------------------------------- text

_PARSE_ERROR_PREFIX = re.compile(r"^\d+:\d+ : ")
_QUOTED_LINE_PREFIX = re.compile(r"^'.*?': ", re.S)
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_NO_ENUM_VALUE = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')


def _descriptor_by_name(full_name):
    try:
        return caffe_pb2.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def _enum_by_name(full_name):
    try:
        return caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(full_name)
    except KeyError:
        return None


def _layer_type_at(text, offset):
    """The ``type: "..."`` of the ``layer { }`` block around ``offset`` in prototxt ``text``, or None."""
    starts = [m.start() for m in re.finditer(r"\blayer\s*\{", text)]
    before = [i for i in starts if i <= offset]
    if not before:
        return None
    after = [i for i in starts if i > offset]
    block = text[before[-1]:after[0] if after else len(text)]
    m = re.search(r'\btype:\s*"(\w+)"', block)
    return m.group(1) if m else None


def _layer_field_hint(key, layer_type):
    """NetSpec's suggestion for a misspelt field directly in a layer, in prototxt words."""
    from netspec.net_spec import closest_fields, params_holding, param_name_dict
    near = closest_fields(key, layer_type)
    if not near:
        return None
    hint = "did you mean " + " or ".join(repr(c) for c in near) + "?"
    if near[0] not in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
        holders = params_holding(near[0])
        own = param_name_dict().get(layer_type)
        block = own if own in holders else (holders[0] if holders else None)
        if block:
            hint += " In a %s layer, %s goes inside %s { ... }." % (layer_type, near[0], block)
    return hint


def _suggestion(message, layer_type=None):
    """A hint for the usual slips: misspelt field or enum value, V1 enum layer type.

    ``layer_type`` (the type of the layer block the error is in) lets a
    misspelt field directly in a layer get NetSpec's suggestion, which also
    looks at the fields of the type's own *_param.
    """
    m = _NO_FIELD.search(message)
    if m and m.group(1) == "caffe.LayerParameter" and layer_type:
        hint = _layer_field_hint(m.group(2), layer_type)
        if hint:
            return hint
    if m:
        desc = _descriptor_by_name(m.group(1))
        if desc is not None:
            names = [f.name for f in desc.fields]
            close = difflib.get_close_matches(m.group(2), names, n=3, cutoff=0.6)
            if close:
                return "did you mean " + " or ".join(repr(c) for c in close) + "?"
            for other in (caffe_pb2.NetParameter, caffe_pb2.SolverParameter,
                          caffe_pb2.LayerParameter):
                if other.DESCRIPTOR is not desc and m.group(2) in other.DESCRIPTOR.fields_by_name:
                    return (f"{m.group(2)!r} is a field of {other.DESCRIPTOR.name}, not of "
                            f"{desc.name}: is this the wrong kind of file, or a misplaced brace?")
            return "valid fields of " + desc.name + ": " + ", ".join(sorted(names))
    m = _NO_ENUM_VALUE.search(message)
    if m:
        enum = _enum_by_name(m.group(1))
        if enum is not None:
            names = [v.name for v in enum.values]
            close = difflib.get_close_matches(m.group(2), names, n=3, cutoff=0.5)
            if close:
                return "did you mean " + " or ".join(close) + "?"
            return "valid values: " + ", ".join(names)
    if "Expected string" in message:
        return ("string values need double quotes, e.g. type: \"Convolution\" "
                "(an unquoted enum like CONVOLUTION belongs to the legacy 'layers {}' form)")
    return None


def _unclosed_brace_hint(text):
    """When the file ends inside a block, say where the unclosed block opened."""
    stack = []
    for number, line in enumerate(text.splitlines(), 1):
        in_string = None
        for col, ch in enumerate(line, 1):
            if in_string:
                if ch == in_string:
                    in_string = None
                continue
            if ch in "\"'":
                in_string = ch
            elif ch == "#":
                break
            elif ch in "{<":
                stack.append((number, col))
            elif ch in "}>" and stack:
                stack.pop()
    if stack:
        number, col = stack[-1]
        return (f"the file ends inside the block opened at line {number}, column {col}: "
                f"a '}}' is missing")
    return None


def _format_parse_error(error, text, filename):
    """Turn protobuf's ParseError into 'FILE:LINE:COL: message', the line and a caret."""
    line = error.GetLine() if hasattr(error, "GetLine") else None
    col = error.GetColumn() if hasattr(error, "GetColumn") else None
    detail = _PARSE_ERROR_PREFIX.sub("", str(error))
    detail = _QUOTED_LINE_PREFIX.sub("", detail)
    if line is None or line < 1:
        head = f"{filename}: {detail}"
        return head
    col = max(int(col or 1), 1)
    lines = text.splitlines()
    parts = [f"{filename}:{line}:{col}: {detail}"]
    if line <= len(lines):
        source = lines[line - 1].replace("\t", " ")
        parts.append("    " + source)
        parts.append("    " + " " * (col - 1) + "^")
    offset = sum(len(x) + 1 for x in lines[:line - 1]) + col - 1
    hint = _suggestion(detail, _layer_type_at(text, offset)) or _unclosed_brace_hint(text)
    if hint:
        parts.append(hint)
    return "\n".join(parts)


def parse_text(text, message_class, filename="<string>"):
    """Parse protobuf text format into a new ``message_class`` instance.

    Errors name ``filename``, line and column, show the line with a caret, and
    suggest the closest valid names for a misspelt field or enum value.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtoError(f"{filename}: not a text {_type_name(message_class)} file: byte "
                             f"{e.start} is not UTF-8 text (is it a binary file? use "
                             f"read_binary)") from None
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ProtoError(_format_parse_error(e, text, filename)) from None
    except (pb_message.Error, ValueError, TypeError) as e:
        raise ProtoError(f"{filename}: cannot parse as {_type_name(message_class)}: {e}") from None
    return message


def read_text(path, message_class):
    """Read a ``.prototxt``-style file into a new ``message_class`` instance."""
    data = _read_bytes(path, f"text {_type_name(message_class)} file")
    return parse_text(data, message_class, filename=os.fspath(path))


def _format_real(value, single):
    """Shortest of %.6g/%.9g (float) or %.15g/%.17g (double) that reads back exactly.

    This is how Caffe's C++ protobuf prints numbers ("lr_mult: 1",
    "scale: 0.00392156886"); Python's default would print "1.0".
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    short, full = ("%.6g", "%.9g") if single else ("%.15g", "%.17g")
    text = short % value
    if single:
        exact = float(np.float32(float(text))) == float(np.float32(value))
    else:
        exact = float(text) == value
    return text if exact else full % value


try:
    _BasePrinter = text_format._Printer  # pylint: disable=protected-access

    class _CaffePrinter(_BasePrinter):
        """protobuf's text printer with C++-style numbers (private base class, checked below)."""

        def PrintFieldValue(self, field, value):
            if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
                self.out.write(_format_real(value, single=True))
            elif field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
                self.out.write(_format_real(value, single=False))
            else:
                super().PrintFieldValue(field, value)
except AttributeError:  # a protobuf without the private printer: fall back to its own format
    _CaffePrinter = None


def to_text(message):
    """The text form of a message, as Caffe's WriteProtoToTextFile prints it."""
    if _CaffePrinter is not None:
        try:
            out = text_format.TextWriter(False)
            _CaffePrinter(out).PrintMessage(message)
            return out.getvalue()
        except TypeError:  # private API changed its signature
            pass
    return text_format.MessageToString(message)


def write_text(message, path):
    """Write ``message`` in text format, atomically."""
    atomic_write_bytes(path, lambda: to_text(message).encode("utf-8"))


# ---------------------------------------------------------------- binary

def _has_unknown_fields(message):
    try:
        from google.protobuf import unknown_fields
        return len(unknown_fields.UnknownFieldSet(message)) > 0
    except Exception:  # older runtimes
        try:
            return len(message.UnknownFields()) > 0
        except Exception:
            return False


def _try_parse(data, message_class):
    """(message, clean): clean means parsed with no unknown top-level fields."""
    message = message_class()
    try:
        message.ParseFromString(data)
    except (pb_message.Error, ValueError, TypeError, RuntimeError):
        return None, False
    return message, not _has_unknown_fields(message)


def _looks_like_text(data):
    head = data[:4096]
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut by the 4096-byte window is still text
        if len(data) <= len(head) or e.start < len(head) - 3:
            return False
        decoded = head[:e.start].decode("utf-8")
    return bool(decoded) and all(c.isprintable() or c in "\t\n\r\f\v" for c in decoded)


def guess_binary_type(data):
    """Names of the Caffe messages that parse ``data`` cleanly (a best guess, in order)."""
    names = []
    for cls in BINARY_CANDIDATES:
        message, clean = _try_parse(data, cls)
        if message is not None and clean:
            names.append(_type_name(cls))
    return names


def read_varint(data, pos):
    """The protobuf varint at ``data[pos]`` and the position after it; IndexError when it runs
    past the end, ValueError when it is longer than 10 bytes."""
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise IndexError("varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _scan_top_level(data):
    """Walk the top-level wire format: ([(field number, wire type)], problem or None)."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        try:
            tag, pos = read_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number == 0 or wire not in (0, 1, 2, 5):
                return fields, f"byte {start} holds no valid field tag"
            if wire == 0:
                _, pos = read_varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                length, pos = read_varint(data, pos)
                pos += length
        except (IndexError, ValueError):
            return fields, f"the field starting at byte {start} is cut off by the end of the file"
        if pos > len(data):
            return fields + [(number, wire)], (
                f"field #{number} starting at byte {start} needs {pos - start} bytes "
                f"but only {len(data) - start} remain: the file is cut short")
        fields.append((number, wire))
    return fields, None


def _wire_types(field):
    fd = field
    if fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES, fd.TYPE_MESSAGE):
        wires = {2}
    elif fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FIXED64, fd.TYPE_SFIXED64):
        wires = {1}
    elif fd.type in (fd.TYPE_FLOAT, fd.TYPE_FIXED32, fd.TYPE_SFIXED32):
        wires = {5}
    else:
        wires = {0}
    if is_repeated(fd):
        wires.add(2)  # packed
    return wires


def _fits(fields, message_class):
    by_number = message_class.DESCRIPTOR.fields_by_number
    return bool(fields) and all(n in by_number and w in _wire_types(by_number[n])
                                for n, w in fields)


def _what_it_holds(data, expected):
    """A sentence on what a file that is not ``expected`` seems to be."""
    if data.startswith(b"\x89HDF"):
        return "it is an HDF5 file, not a protobuf"
    if data.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed; decompress it first"
    if _looks_like_text(data):
        return "it looks like a text (prototxt) file; read it with read_text/read_net"
    others = [n for n in guess_binary_type(data) if n != _type_name(expected)]
    if others:
        return "it parses as " + " or ".join(others) + " instead"
    fields, problem = _scan_top_level(data)
    shapes = [_type_name(c) for c in BINARY_CANDIDATES if _fits(fields, c)]
    if problem and shapes:
        m = re.search(r"field #(\d+)", problem)
        field = BINARY_CANDIDATES[[_type_name(c) for c in BINARY_CANDIDATES].index(shapes[0])] \
            .DESCRIPTOR.fields_by_number.get(int(m.group(1))) if m else None
        if field is not None:
            problem = problem.replace(m.group(0), f"{m.group(0)} ({field.name})", 1)
        return f"it seems to hold a {' or '.join(shapes)}, but {problem}"
    if problem:
        return f"{problem}; it is corrupt or not a Caffe binary file"
    if shapes:
        return f"its fields look like a {' or '.join(shapes)}, but their contents are corrupt"
    return "no Caffe message parses it: it is corrupt or not a Caffe binary file"


def parse_binary(data, message_class, filename="<bytes>"):
    """Parse serialised protobuf bytes, with a named error on failure."""
    size = len(data)
    expected = _type_name(message_class)
    if size == 0:
        raise ProtoError(f"{filename}: file is empty (0 bytes); expected a binary {expected}")
    message, clean = _try_parse(data, message_class)
    if message is None:
        raise ProtoError(f"{filename}: cannot parse {size} bytes as binary {expected} "
                         f"(truncated or wrong type); {_what_it_holds(data, message_class)}")
    if not clean:
        others = [n for n in guess_binary_type(data) if n != expected]
        if others:
            raise ProtoError(f"{filename}: {size} bytes do not hold a binary {expected}: they "
                             f"parse as {' or '.join(others)}; pass the right file or type")
    return message


def read_binary(path, message_class):
    """Read a binary protobuf file (``.caffemodel``, ``.solverstate``, ``.binaryproto``)."""
    data = _read_bytes(path, f"binary {_type_name(message_class)} file")
    return parse_binary(data, message_class, filename=os.fspath(path))


def write_binary(message, path):
    """Write ``message`` in binary wire format, atomically."""
    atomic_write_bytes(path, message.SerializeToString)


def is_binary_file(path, data=None):
    """Whether a file's content is binary protobuf rather than printable UTF-8 text.

    Caffe knows by the tool used; here the content decides, whatever the suffix.
    """
    if data is None:
        data = _read_bytes(path, "file")
    return not _looks_like_text(data)


# ---------------------------------------------------------------- nets and solvers

def _looks_like_inline_text(value):
    return isinstance(value, str) and ("\n" in value or "{" in value) \
        and not os.path.exists(value)


def read_net_file(path, upgrade=True):
    """(NetParameter, "text" or "binary") from a prototxt or caffemodel file.

    The content decides the format. Printable content is tried as text first;
    if that fails but it parses cleanly as binary (a short caffemodel can be
    all printable bytes), it is binary.
    """
    path = os.fspath(path)
    data = _read_bytes(path, "net file")
    if is_binary_file(path, data):
        net, form = parse_binary(data, caffe_pb2.NetParameter, filename=path), "binary"
    else:
        try:
            net, form = parse_text(data, caffe_pb2.NetParameter, filename=path), "text"
        except ProtoError:
            net, clean = _try_parse(data, caffe_pb2.NetParameter)
            if net is None or not clean:
                raise
            form = "binary"
    if upgrade:
        upgrade_net(net)
    return net, form


def read_net(path_or_text, upgrade=True):
    """A NetParameter from a prototxt path, a binary caffemodel path or prototxt text.

    Legacy formats (V0/V1 layers, input fields, old data and BatchNorm params)
    are upgraded as Caffe's ReadNetParamsFrom*FileOrDie do; ``upgrade=False``
    gives the message exactly as stored (the upgrade tools need that).
    """
    if isinstance(path_or_text, caffe_pb2.NetParameter):
        net = caffe_pb2.NetParameter()
        net.CopyFrom(path_or_text)
    elif _looks_like_inline_text(path_or_text):
        net = parse_text(path_or_text, caffe_pb2.NetParameter, filename="<net text>")
    else:
        return read_net_file(path_or_text, upgrade)[0]
    if upgrade:
        upgrade_net(net)
    return net


def read_solver(path, upgrade=True):
    """A SolverParameter from a solver prototxt (or its text), old solver_type upgraded."""
    if _looks_like_inline_text(path):
        solver = parse_text(path, caffe_pb2.SolverParameter, filename="<solver text>")
    else:
        solver = read_text(path, caffe_pb2.SolverParameter)
    if upgrade:
        upgrade_solver(solver)
    return solver


# ---------------------------------------------------------------- blobs

def read_blob_proto(path):
    """A BlobProto from a ``.binaryproto`` file (e.g. a mean image)."""
    return read_binary(path, caffe_pb2.BlobProto)


def _blob_shape(blob):
    if (blob.HasField("num") or blob.HasField("channels") or blob.HasField("height")
            or blob.HasField("width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def blobproto_to_array(blob, return_diff=False):
    """A float32 array of the blob's data (or diff), shaped as the blob says.

    Old files give the shape as num/channels/height/width (e.g. Caffe's
    mean.binaryproto); newer ones as ``shape { dim }``. Double-precision
    payloads are read too and converted to float32.
    """
    shape = _blob_shape(blob)
    if return_diff:
        values = blob.diff if len(blob.diff) else blob.double_diff
        what = "diff"
    else:
        values = blob.data if len(blob.data) else blob.double_data
        what = "data"
    count = shape_count(shape, "BlobProto", BlobShapeError)
    if len(values) != count:
        raise BlobShapeError(f"BlobProto {what} holds {len(values)} values but its shape "
                             f"{list(shape)} needs {count}")
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _varint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _packed_floats(field_name, array):
    """Wire bytes of a packed float field, built from the array's memory in one go.

    Appending element by element costs ~0.1 s per million values; merging the
    encoded field is several times faster, which matters for every snapshot.
    """
    if array.size == 0:
        return b""
    number = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name[field_name].number
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return _varint((number << 3) | 2) + _varint(len(raw)) + raw


def array_to_blobproto(arr, diff=None):
    """A BlobProto with ``shape { dim }`` and float32 data (and diff when given)."""
    arr = np.asarray(arr, dtype=np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    payload = _packed_floats("data", arr)
    if diff is not None:
        diff = np.asarray(diff, dtype=np.float32)
        if diff.shape != arr.shape:
            raise ProtoError(f"array_to_blobproto: diff shape {diff.shape} differs from data "
                             f"shape {arr.shape}")
        payload += _packed_floats("diff", diff)
    blob.MergeFromString(payload)
    return blob
