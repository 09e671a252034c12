"""``caffe.Classifier``: a TEST-phase Net that takes images and returns class scores.

As pycaffe's: images (H x W x K, values as ``load_image`` gives) are resized
to ``image_dims``, cropped to the input blob's size (the centre, or the ten
crops of ``caffe.io.oversample`` averaged), preprocessed by a
``caffe.io.Transformer`` and run through the net in batches.
"""
import numpy as np

from netspec import caffe_pb2
from netspec.errors import NetError
from solvers.caffe import io as caffe_io
from solvers.caffe.pycaffe import Net


def set_up_transformer(net, kind, what, mean, input_scale, raw_scale, channel_swap):
    """Give ``net`` pycaffe's ``transformer`` for its first input (HxWxK images in, KxHxW out)
    with the preprocessing options Classifier and Detector share; returns that input's name."""
    if not net.inputs:
        raise NetError("%s: net %r has no input blobs (an Input layer feeds the %s)"
                       % (kind, net.name, what))
    in_ = net.inputs[0]
    net.transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    net.transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        net.transformer.set_mean(in_, mean)
    if input_scale is not None:
        net.transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        net.transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        net.transformer.set_channel_swap(in_, channel_swap)
    return in_


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``; ``predict(inputs, oversample=True)``."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        in_ = set_up_transformer(self, "Classifier", "images", mean, input_scale, raw_scale,
                                 channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample=True):
        """Class scores (N x classes) of the first output for N images."""
        if len(inputs) == 0:
            raise NetError("Classifier.predict: no images given")
        dims = tuple(int(d) for d in self.image_dims)
        batch = np.stack([caffe_io.resize_image(im, dims) for im in inputs])
        if oversample:
            batch = caffe_io.oversample(batch, self.crop_dims)
        else:
            top = (np.array(dims) / 2.0 - self.crop_dims / 2.0).astype(int)
            batch = batch[:, top[0]:top[0] + self.crop_dims[0], top[1]:top[1] + self.crop_dims[1], :]
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, im) for im in batch])
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(axis=1)
        return predictions
