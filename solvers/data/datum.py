"""Datum <-> numpy array: the record type of Caffe's LMDB databases.

A ``caffe_pb2.Datum`` holds one image as C x H x W: either raw uint8 pixels in
``data``, or floats in ``float_data``, or (``encoded: true``) a PNG/JPEG file
in ``data`` that OpenCV decodes to H x W x C in BGR order. Everything here
returns C x H x W arrays, as the Data layer and Caffe's ``caffe.io`` do.
"""
import numpy as np

from netspec.errors import DataError
from netspec.shapes import shape_count


def _pb2():
    from netspec import caffe_pb2
    return caffe_pb2


def parse_datum(value, where="record"):
    """A Datum from its serialized bytes; DataError if they are not one."""
    datum = _pb2().Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # protobuf's DecodeError and friends
        raise DataError("%s is not a serialized caffe Datum (%s)" % (where, e)) from None
    return datum


def array_to_datum(arr, label=None):
    """A Datum from a C x H x W array: uint8 -> ``data`` bytes, anything else -> ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError("array_to_datum needs a C x H x W (or H x W) array, got shape %s" % (arr.shape,))
    datum = _pb2().Datum()
    datum.channels, datum.height, datum.width = (int(s) for s in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def opencv_reason(error):
    """The useful part of a cv2.error ("could not find encoder ..."), on one line."""
    text = " ".join(str(error).split())
    return text.split("error: (", 1)[-1].split(") ", 1)[-1]


def decode_image_bytes(buf, color=None, where="encoded image"):
    """PNG/JPEG bytes -> C x H x W uint8 (BGR for colour, as OpenCV and Caffe use).

    ``color`` True forces 3 channels, False forces 1, None keeps the file's own
    channels (Caffe's DecodeDatumToCVMatNative).
    """
    import cv2
    flag = cv2.IMREAD_UNCHANGED if color is None else (cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    try:
        img = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), flag)
    except cv2.error as e:
        raise DataError("%s cannot be decoded by OpenCV: %s" % (where, opencv_reason(e))) from None
    if img is None:
        raise DataError("%s cannot be decoded by OpenCV (not a PNG/JPEG, or corrupt)" % where)
    return hwc_to_chw(img, where)


def hwc_to_chw(img, where="image"):
    """OpenCV's H x W (x C) uint8 image as C x H x W."""
    if img.dtype != np.uint8:
        raise DataError("%s has pixel type %s; only 8-bit images are supported (as in Caffe)"
                        % (where, img.dtype))
    if img.ndim == 2:
        return img[None]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def encode_image(chw, encode_type="png"):
    """C x H x W uint8 -> PNG/JPEG bytes (what convert_imageset --encoded stores)."""
    import cv2
    img = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    try:
        ok, buf = cv2.imencode("." + encode_type.lstrip("."), np.ascontiguousarray(img))
    except cv2.error as e:
        raise DataError("OpenCV cannot encode an image as %r: %s" % (encode_type, opencv_reason(e))) from None
    if not ok:
        raise DataError("OpenCV cannot encode an image as %r" % encode_type)
    return buf.tobytes()


def datum_to_array(datum, color=None, where="datum"):
    """C x H x W array of a Datum: uint8 for pixel data, float32 for float_data."""
    if datum.encoded:
        return decode_image_bytes(datum.data, color, where)
    c, h, w = datum.channels, datum.height, datum.width
    count = shape_count((c, h, w), where, DataError)
    if datum.data:
        if len(datum.data) != count:
            raise DataError("%s says %d x %d x %d but holds %d bytes of pixels"
                            % (where, c, h, w, len(datum.data)))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != count or count == 0:
        raise DataError("%s says %d x %d x %d but holds %d float values"
                        % (where, c, h, w, len(datum.float_data)))
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def datum_shape(datum, color=None, where="datum"):
    """(C, H, W) of a Datum (decoding it when it is encoded)."""
    if datum.encoded:
        return datum_to_array(datum, color, where).shape
    return (datum.channels, datum.height, datum.width)


def datums_to_batch(datums, color=None, where="batch"):
    """Stack Datums into one N x C x H x W array (one join for raw uint8 records).

    Every record must have the shape of the first; a record that disagrees is
    a DataError naming its position in the batch.
    """
    first = datums[0]
    if not first.encoded and first.data and all(
            not d.encoded and len(d.data) == len(first.data) for d in datums):
        shape = (first.channels, first.height, first.width)
        if all((d.channels, d.height, d.width) == shape for d in datums):
            if len(first.data) != shape_count(shape, where, DataError):
                datum_to_array(first, where=where)  # raises with the details
            buf = b"".join(d.data for d in datums)
            return np.frombuffer(buf, dtype=np.uint8).reshape((len(datums),) + shape)
    arrays = [datum_to_array(d, color, "%s item %d" % (where, i)) for i, d in enumerate(datums)]
    for i, a in enumerate(arrays):
        if a.shape != arrays[0].shape:
            raise DataError("%s: item %d has shape %s but item 0 has %s; every record must have "
                            "the same shape (resize them when converting)"
                            % (where, i, a.shape, arrays[0].shape))
    dtype = np.uint8 if all(a.dtype == np.uint8 for a in arrays) else np.float32
    return np.stack(arrays).astype(dtype, copy=False)
