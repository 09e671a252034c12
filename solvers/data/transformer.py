"""Caffe's DataTransformer: what ``transform_param`` does to each image.

For every item (C x H x W, uint8 pixels or floats) Caffe computes, in float32,

    out = (pixel - mean) * scale

where ``mean`` is the ``mean_file`` image at the same source position, or the
per-channel ``mean_value``, or nothing. ``crop_size`` takes a crop_size x
crop_size window: at a random offset in TRAIN, the centre one in TEST.
``mirror`` flips a random half of the items left-right. The mean image is
indexed at the cropped (unmirrored) source position, as in Caffe.

Here the whole batch is transformed at once: one gather for the crops, one
subtraction, one multiplication, one flip of the mirrored items. Random
offsets and flips come from the generator the caller passes (the Data layer
seeds its own from ``solvers.rng.get_rng()``, so runs with a seed repeat).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from netspec.errors import DataError, resolved_path


def load_mean_file(path, where="mean_file"):
    """A mean.binaryproto (BlobProto) as a float32 C x H x W array."""
    from netspec import caffe_pb2
    proto = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except FileNotFoundError:
        raise DataError("%s %r not found %s" % (where, path, resolved_path(path))) from None
    except Exception as e:
        raise DataError("%s %r is not a BlobProto (binaryproto) file: %s" % (where, path, e)) from None
    if proto.HasField("shape"):
        dims = tuple(int(d) for d in proto.shape.dim)
    else:
        dims = (proto.num, proto.channels, proto.height, proto.width)
    values = np.asarray(proto.double_data if len(proto.double_data) else proto.data, dtype=np.float32)
    if len(dims) == 4 and dims[0] == 1:
        dims = dims[1:]
    elif len(dims) == 2:
        dims = (1,) + dims
    if len(dims) != 3 or values.size != int(np.prod(dims)):
        raise DataError("%s %r holds a blob of shape %s with %d values; a mean image must be "
                        "1 x C x H x W" % (where, path, dims, values.size))
    return values.reshape(dims)


class DataTransformer:
    """Applies a TransformationParameter to N x C x H x W batches."""

    def __init__(self, param, phase, where="data layer"):
        from netspec import caffe_pb2
        self.param = param
        self.where = where
        self.train = phase == caffe_pb2.TRAIN
        self.scale = np.float32(param.scale)
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        if param.force_color and param.force_gray:
            raise DataError("%s: transform_param sets both force_color and force_gray; "
                            "choose one" % where)
        if param.HasField("mean_file") and len(param.mean_value):
            raise DataError("%s: transform_param has both mean_file and mean_value; Caffe "
                            "accepts only one of them" % where)
        self.mean = load_mean_file(param.mean_file, "%s: mean_file" % where) \
            if param.HasField("mean_file") else None
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32) \
            if len(param.mean_value) else None

    @property
    def decode_color(self):
        """How encoded images are decoded: True colour, False gray, None as stored."""
        if self.param.force_color:
            return True
        if self.param.force_gray:
            return False
        return None

    @property
    def needs_rng(self):
        return self.mirror or (self.train and self.crop > 0)

    def output_shape(self, item_shape):
        """C x H x W of one transformed item (Caffe's InferBlobShape, less the batch axis)."""
        c, h, w = item_shape
        self.check(item_shape)
        if self.crop:
            return (c, self.crop, self.crop)
        return (c, h, w)

    def check(self, item_shape):
        """Everything Caffe CHECKs per datum, as one DataError naming what disagrees."""
        c, h, w = item_shape
        if c <= 0:
            raise DataError("%s: records have %d channels" % (self.where, c))
        if self.crop and (h < self.crop or w < self.crop):
            raise DataError("%s: crop_size %d is larger than the %dx%d records"
                            % (self.where, self.crop, h, w))
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise DataError("%s: mean_file %r has shape %s but the records are %s; compute the "
                            "mean on this database (tools/compute_image_mean.py)"
                            % (self.where, self.param.mean_file, self.mean.shape, (c, h, w)))
        if self.mean_values is not None and self.mean_values.size not in (1, c):
            raise DataError("%s: give either 1 mean_value or one per channel (%d), got %d"
                            % (self.where, c, self.mean_values.size))

    def draw(self, n, item_shape, rng):
        """Random choices for one batch: (mirror flags, h offsets, w offsets)."""
        _, h, w = item_shape
        flips = rng.integers(0, 2, size=n).astype(bool) if self.mirror else None
        if self.crop and self.train:
            h_off = rng.integers(0, h - self.crop + 1, size=n)
            w_off = rng.integers(0, w - self.crop + 1, size=n)
        elif self.crop:
            h_off = np.full(n, (h - self.crop) // 2)
            w_off = np.full(n, (w - self.crop) // 2)
        else:
            h_off = w_off = None
        return flips, h_off, w_off

    def __call__(self, batch, rng=None, out=None):
        """Transform N x C x H x W (uint8 or float) into float32 N x C x h x w."""
        batch = np.asarray(batch)
        n = batch.shape[0]
        item = batch.shape[1:]
        self.check(item)
        if self.needs_rng and rng is None:
            raise DataError("%s: crop/mirror need a random generator" % self.where)
        flips, h_off, w_off = self.draw(n, item, rng) if self.needs_rng or self.crop else (None, None, None)
        mean = self.mean
        if self.crop:
            k = self.crop
            if self.train:  # a different window per item: one gather over sliding windows
                x = sliding_window_view(batch, (k, k), axis=(2, 3))[np.arange(n), :, h_off, w_off]
                if mean is not None:
                    mean = sliding_window_view(mean, (k, k), axis=(1, 2))[:, h_off, w_off]
                    mean = mean.transpose(1, 0, 2, 3)
            else:
                h0, w0 = int(h_off[0]), int(w_off[0])
                x = batch[:, :, h0:h0 + k, w0:w0 + k]
                if mean is not None:
                    mean = mean[:, h0:h0 + k, w0:w0 + k]
        else:
            x = batch
        if out is None:
            out = np.empty(x.shape, dtype=np.float32)
        np.copyto(out, x, casting="unsafe")
        if mean is not None:
            out -= mean
        elif self.mean_values is not None:
            out -= self.mean_values.reshape(-1, 1, 1)
        out *= self.scale
        if flips is not None and flips.any():
            out[flips] = out[flips][..., ::-1]
        return out
