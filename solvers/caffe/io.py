"""``caffe.io``: arrays to and from Caffe's messages, image loading and input preprocessing.

The names and semantics are pycaffe's. Images load through OpenCV instead of
scikit-image (same result: H x W x K float32 in [0, 1], RGB order), and
resizing uses OpenCV's interpolation of the same order.
"""
import numpy as np

from netspec import caffe_pb2
from netspec.errors import DataError
from netspec.io import array_to_blobproto, blobproto_to_array
from solvers.data import datum as _datum

__all__ = ["blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array", "load_image",
           "resize_image", "oversample", "Transformer"]


# -- messages <-> arrays ------------------------------------------------------------

def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector holding each array (what Caffe's mean/feature files use)."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(serialized):
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(serialized)
    except Exception as e:
        raise DataError("blobprotovector_str_to_arraylist: not a serialized BlobProtoVector (%s)" % e) from None
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum from a C x H x W array: uint8 as raw bytes, anything else as float_data."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DataError("array_to_datum needs a 3-d C x H x W array, got shape %s" % (arr.shape,))
    return _datum.array_to_datum(arr, label)


def datum_to_array(datum):
    """The C x H x W array of a Datum (the label is ``datum.label``)."""
    return _datum.datum_to_array(datum)


# -- images ---------------------------------------------------------------------------

_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float32)   # luminance of R, G, B


def load_image(filename, color=True):
    """An image file as H x W x 3 (RGB) float32 in [0, 1], or H x W x 1 with ``color=False``."""
    import cv2
    img = cv2.imread(str(filename), cv2.IMREAD_UNCHANGED)
    if img is None:
        import os
        raise DataError("load_image: cannot read %r as an image (resolved to %s, working directory %s)"
                        % (str(filename), os.path.abspath(str(filename)), os.getcwd()))
    scale = float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 1.0
    img = img.astype(np.float32) / np.float32(scale)
    if img.ndim == 3:
        img = img[:, :, :3]
        img = img[:, :, ::-1] if img.shape[2] == 3 else img   # OpenCV's BGR -> RGB
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        return np.ascontiguousarray(np.tile(img, (1, 1, 3)) if color else img)
    if not color:
        if img.shape[2] == 3:
            img = (img @ _GRAY_WEIGHTS)[:, :, np.newaxis]
        else:
            img = img[:, :, :1]
    return np.ascontiguousarray(img)


_INTERPOLATION = {0: "INTER_NEAREST", 1: "INTER_LINEAR", 2: "INTER_CUBIC", 3: "INTER_CUBIC"}


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to ``new_dims`` (height, width); float32 out, channels kept."""
    import cv2
    im = np.asarray(im, dtype=np.float32)
    if im.ndim != 3:
        raise DataError("resize_image needs an H x W x K array, got shape %s" % (im.shape,))
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.shape[:2] == (h, w):
        return im.copy()
    flag = getattr(cv2, _INTERPOLATION.get(int(interp_order), "INTER_LINEAR"))
    # OpenCV handles at most 4 channels per call in every mode: resize in groups of 4.
    parts = [cv2.resize(np.ascontiguousarray(im[:, :, c:c + 4]), (w, h), interpolation=flag)
             for c in range(0, im.shape[2], 4)]
    parts = [p[:, :, np.newaxis] if p.ndim == 2 else p for p in parts]
    return np.concatenate(parts, axis=2).astype(np.float32, copy=False)


def oversample(images, crop_dims):
    """The ten crops Caffe's classifier averages: four corners and the centre, and their mirrors.

    ``images``: N images (H x W x K, one size) -> (10 N) x h x w x K, image by
    image: corners (top-left, top-right, bottom-left, bottom-right), centre,
    then the same five flipped left to right.
    """
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim != 4:
        raise DataError("oversample needs N images of H x W x K, got shape %s" % (batch.shape,))
    height, width = batch.shape[1:3]
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    if ch > height or cw > width:
        raise DataError("oversample: crop %dx%d is larger than the images (%dx%d)" % (ch, cw, height, width))
    cy, cx = int(height / 2.0 - ch / 2.0), int(width / 2.0 - cw / 2.0)
    corners = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw), (cy, cx)]
    crops = np.stack([batch[:, y:y + ch, x:x + cw] for y, x in corners], axis=1)   # N x 5 x h x w x K
    crops = np.concatenate([crops, crops[:, :, :, ::-1]], axis=1)                  # N x 10 x ...
    return np.ascontiguousarray(crops.reshape((-1, ch, cw) + batch.shape[3:]))


# -- preprocessing ------------------------------------------------------------------------

class Transformer:
    """Turn H x W x K images into a net's K x H x W input, and back (pycaffe's caffe.io.Transformer).

    ``inputs`` maps input blob names to their shapes (e.g.
    ``{'data': net.blobs['data'].data.shape}``). ``preprocess`` applies, in
    order: resize to the blob's height and width, transpose, channel swap,
    raw scale, mean subtraction, input scale; ``deprocess`` undoes them.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(int(s) for s in shape) for name, shape in dict(inputs).items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise DataError("Transformer: %r is not one of the net inputs: %s" % (in_, sorted(self.inputs)))

    def preprocess(self, in_, data):
        """H' x W' x K image -> K x H x W float32 array ready for blob ``in_``."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)   # a copy: the caller's image stays as it was
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if in_ in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            caffe_in = caffe_in[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            caffe_in = caffe_in * np.float32(self.raw_scale[in_])
        if in_ in self.mean:
            caffe_in = caffe_in - self.mean[in_]
        if in_ in self.input_scale:
            caffe_in = caffe_in * np.float32(self.input_scale[in_])
        return np.ascontiguousarray(caffe_in, dtype=np.float32)

    def deprocess(self, in_, data):
        """Undo ``preprocess`` (except the resize): K x H x W -> H x W x K."""
        self._check_input(in_)
        out = np.array(data, dtype=np.float32).squeeze()
        if in_ in self.input_scale:
            out /= np.float32(self.input_scale[in_])
        if in_ in self.mean:
            out += self.mean[in_]
        if in_ in self.raw_scale:
            out /= np.float32(self.raw_scale[in_])
        if in_ in self.channel_swap:
            out = out[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            out = out.transpose(np.argsort(self.transpose[in_]))
        return out

    def set_transpose(self, in_, order):
        """Axis order from the image's to the blob's, e.g. (2, 0, 1) for H x W x K -> K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise DataError("Transformer.set_transpose(%r): the order needs %d axes (the input's "
                            "dimensions without the batch), got %s" % (in_, len(self.inputs[in_]) - 1, order))
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Channel order after transposing, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise DataError("Transformer.set_channel_swap(%r): the order needs one entry per input "
                            "channel (%d), got %s" % (in_, self.inputs[in_][1], order))
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Scale applied before the mean, e.g. 255 for models trained on [0, 255] pixels."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Mean to subtract: one value per channel (K,) or a whole K x H x W (or H x W) image."""
        self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise DataError("Transformer.set_mean(%r): %d channel means for %d input channels"
                                % (in_, mean.shape[0], self.inputs[in_][1]))
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            shape = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(shape) != 3:
                raise DataError("Transformer.set_mean(%r): a mean must be K, H x W or K x H x W, got shape %s"
                                % (in_, mean.shape))
            if shape != self.inputs[in_][1:]:
                raise DataError("Transformer.set_mean(%r): mean shape %s does not match the input %s"
                                % (in_, mean.shape, self.inputs[in_][1:]))
            mean = mean.reshape(shape)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Scale applied last, after the mean (e.g. 0.017 for some ImageNet models)."""
        self._check_input(in_)
        self.input_scale[in_] = scale
