"""``caffe.Detector``: classify windows of images in one batch (R-CNN style), as pycaffe's.

Each window ``(ymin, xmin, ymax, xmax)`` is cut out of its image, warped to
the net's input size, preprocessed like Classifier's inputs and run through
the TEST-phase net. With ``context_pad`` the window is first grown so that
``context_pad`` pixels of surrounding context land on each side of the
warped input (R-CNN's context padding); where that reaches past the image
border, the mean pixel fills in.
"""
import os

import numpy as np

from netspec import caffe_pb2
from netspec.errors import CaffeError, DataError
from solvers.caffe import io as caffe_io
from solvers.caffe.classifier import set_up_transformer
from solvers.caffe.pycaffe import Net


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``; ``detect_windows([(image_file, windows), ...])``."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        set_up_transformer(self, "Detector", "windows", mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """[{'window', 'prediction', 'filename'}, ...] for every window of every image, in order."""
        images_windows = [(name, [np.asarray(w) for w in windows]) for name, windows in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = caffe_io.load_image(filename).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            raise DataError("Detector.detect_windows: no windows given")
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections = []
        for filename, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[len(detections)],
                                   "filename": filename})
        return detections

    def detect_selective_search(self, image_fnames):
        """detect_windows over Selective Search proposals (needs selective_search_ijcv_with_python)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise CaffeError("Detector.detect_selective_search needs the selective_search_ijcv_with_"
                             "python module (github.com/sergeyk/selective_search_ijcv_with_python, "
                             "which runs MATLAB); or compute windows yourself and call "
                             "detect_windows") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        return self.detect_windows(zip(image_fnames, selective_search.get_windows(image_fnames)))

    def crop(self, im, window):
        """The window's pixels (H x W x K); with context padding, already at the input size."""
        ymin, xmin, ymax, xmax = (int(v) for v in window)
        if not self.context_pad:
            return im[ymin:ymax, xmin:xmax]
        size = self.crop_dims[0]                 # the input is taken to be square, as in R-CNN
        grow = size / (size - 2.0 * self.context_pad)
        half = np.array([(ymax - ymin + 1) / 2.0, (xmax - xmin + 1) / 2.0])
        centre = np.array([ymin, xmin]) + half
        box = np.round(np.concatenate([centre - grow * half, centre + grow * half]))
        scale = size / (box[2:] - box[:2] + 1)                 # input pixels per image pixel (y, x)
        pad = np.round(np.maximum(0, -box[:2]) * scale).astype(int)   # context outside the image
        height, width = im.shape[:2]
        box = np.clip(box, 0, [height, width, height, width]).astype(int)
        extent = np.round((box[2:] - box[:2] + 1) * scale).astype(int)
        extent = np.minimum(extent, size - pad)
        if np.any(extent <= 0) or box[2] <= box[0] or box[3] <= box[1]:
            raise DataError("Detector.crop: window %s lies outside the %dx%d image"
                            % (list(window), height, width))
        context = caffe_io.resize_image(im[box[0]:box[2], box[1]:box[3]], tuple(extent))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad[0]:pad[0] + extent[0], pad[1]:pad[1] + extent[1]] = context
        return out

    def configure_crop(self, context_pad):
        """Set the crop size (the input's H x W x K) and, for context padding, the fill pixel."""
        in_ = self.inputs[0]
        order = self.transformer.transpose[in_]
        back = np.argsort(order)                 # blob axes (K, H, W) -> image axes (H, W, K)
        self.crop_dims = tuple(int(d) for d in np.array(self.blobs[in_].data.shape[1:])[back])
        self.context_pad = context_pad
        self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
        mean = self.transformer.mean.get(in_)
        if context_pad and mean is not None:
            crop_mean = mean.transpose(back).copy()   # the mean in the image's space
            swap = self.transformer.channel_swap.get(in_)
            if swap is not None:
                crop_mean = crop_mean[:, :, np.argsort(swap)]
            raw_scale = self.transformer.raw_scale.get(in_)
            if raw_scale is not None:
                crop_mean = crop_mean / np.float32(raw_scale)
            self.crop_mean = crop_mean
