"""Caffe's WindowData source (R-CNN style): random object/background windows, warped.

The window file lists, per image::

    # image_index
    path
    channels height width
    num_windows
    class_index overlap x1 y1 x2 y2     (num_windows lines)

Windows with overlap >= fg_threshold are foreground (label > 0 required), those
below bg_threshold are background (label forced to 0). Each batch takes
``int(batch_size * fg_fraction)`` foreground windows and the rest background,
drawn at random with replacement. A window is widened for ``context_pad``
(and made square for ``crop_mode: "square"``), clipped to the image, warped to
crop_size (OpenCV bilinear), maybe mirrored, placed where its clipped part
falls in the crop_size x crop_size output (the rest stays 0), and transformed:
(pixel - mean) * scale, with the mean image's centre crop_size window.
"""
import os

import numpy as np

from netspec.errors import DataError, resolved_path
from solvers.data.prefetch import BatchSource
from solvers.data.sources import child_rng, rng_state, set_rng_state


def _round(x):
    """C's round(): halves away from zero."""
    x = np.float32(x)
    return int(np.sign(x) * np.floor(np.abs(x) + np.float32(0.5)))


def read_window_file(path, fg_threshold, bg_threshold, where):
    """(images [(path, (c, h, w))], fg windows, bg windows); a window = (image, label, x1, y1, x2, y2)."""
    try:
        with open(path) as f:
            tokens = f.read().split()
    except FileNotFoundError:
        raise DataError("%s: window file %r not found %s" % (where, path, resolved_path(path))) from None
    if not tokens:
        raise DataError("%s: window file %r is empty" % (where, path))
    images, fg, bg = {}, [], []
    pos = 0

    def take(n, what):
        nonlocal pos
        if pos + n > len(tokens):
            raise DataError("%s: window file %r ends inside %s" % (where, path, what))
        pos += n
        return tokens[pos - n:pos]

    while pos < len(tokens):
        hashtag, index = take(2, "an image header")
        if hashtag != "#":
            raise DataError("%s: window file %r: expected '# image_index', got %r %r"
                            % (where, path, hashtag, index))
        try:
            index = int(index)
            image_path = take(1, "image %d" % index)[0]
            size = tuple(int(t) for t in take(3, "image %d's size" % index))
            count = int(take(1, "image %d's window count" % index)[0])
            for _ in range(count):
                label, overlap, x1, y1, x2, y2 = take(6, "image %d's windows" % index)
                label, overlap = int(label), float(overlap)
                box = (index, label, int(x1), int(y1), int(x2), int(y2))
                if overlap >= fg_threshold:
                    if label <= 0:
                        raise DataError("%s: window file %r: image %d has a foreground window "
                                        "with label %d; foreground labels must be > 0"
                                        % (where, path, index, label))
                    fg.append(box)
                elif overlap < bg_threshold:
                    bg.append((index, 0) + box[2:])
        except ValueError as e:
            raise DataError("%s: window file %r, image record %r: %s" % (where, path, index, e)) from None
        images[index] = (image_path, size)
    return images, fg, bg


class WindowSource(BatchSource):
    def __init__(self, param, transformer, where, rng=None):
        self.p = param
        self.where = where
        self.transformer = transformer
        tp = transformer.param
        self.crop = int(tp.crop_size)
        if self.crop <= 0:
            raise DataError("%s: WindowData needs transform_param.crop_size > 0" % where)
        self.scale = np.float32(tp.scale)
        self.images, self.fg, self.bg = read_window_file(param.source, param.fg_threshold,
                                                         param.bg_threshold, where)
        self.num_fg = int(np.float32(param.batch_size) * np.float32(param.fg_fraction))
        self.batch_size = int(param.batch_size)
        if self.num_fg and not self.fg:
            raise DataError("%s: %r holds no foreground windows (overlap >= %g)"
                            % (where, param.source, param.fg_threshold))
        if self.batch_size - self.num_fg and not self.bg:
            raise DataError("%s: %r holds no background windows (overlap < %g)"
                            % (where, param.source, param.bg_threshold))
        channels = list(self.images.values())[-1][1][0]
        mean = transformer.mean
        if mean is not None:
            if mean.shape[1] < self.crop or mean.shape[2] < self.crop:
                raise DataError("%s: mean_file is %s, smaller than crop_size %d"
                                % (where, mean.shape, self.crop))
            off = (mean.shape[2] - self.crop) // 2
            mean = mean[:, off:, off:]
        self.mean = mean
        mv = transformer.mean_values
        if mv is not None and mv.size not in (1, channels):
            raise DataError("%s: give either 1 mean_value or one per channel (%d), got %d"
                            % (where, channels, mv.size))
        self.rng = rng if rng is not None else child_rng()
        self.top_shape = (self.batch_size, channels, self.crop, self.crop)
        self.cache = {}
        if param.cache_images:
            for index, (image_path, _) in self.images.items():
                with open(param.root_folder + image_path, "rb") as f:
                    self.cache[index] = np.frombuffer(f.read(), np.uint8)

    def _image(self, index):
        import cv2
        image_path = self.p.root_folder + self.images[index][0]
        if index in self.cache:
            img = cv2.imdecode(self.cache[index], cv2.IMREAD_COLOR)
        else:
            img = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError("%s: could not read image %r of window file %r (resolved: %s)"
                            % (self.where, image_path, self.p.source, os.path.abspath(image_path)))
        return img

    def _warp(self, img, box, mirror):
        """The warped window (h x w x 3) and where it goes in the crop (pad_h, pad_w)."""
        import cv2
        _, _, x1, y1, x2, y2 = box
        crop, pad = self.crop, self.p.context_pad
        out_h = out_w = crop
        pad_h = pad_w = 0
        if pad > 0 or self.p.crop_mode == "square":
            context_scale = np.float32(crop) / np.float32(crop - 2 * pad)
            half_h = np.float32((y2 - y1 + 1) / 2.0)
            half_w = np.float32((x2 - x1 + 1) / 2.0)
            cx, cy = np.float32(x1) + half_w, np.float32(y1) + half_h
            if self.p.crop_mode == "square":
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _round(cx - half_w * context_scale), _round(cx + half_w * context_scale)
            y1, y2 = _round(cy - half_h * context_scale), _round(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            px1, py1 = max(0, -x1), max(0, -y1)
            px2, py2 = max(0, x2 - img.shape[1] + 1), max(0, y2 - img.shape[0] + 1)
            x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
            sx = np.float32(crop) / np.float32(unclipped_w)
            sy = np.float32(crop) / np.float32(unclipped_h)
            out_w, out_h = _round(np.float32(x2 - x1 + 1) * sx), _round(np.float32(y2 - y1 + 1) * sy)
            px1, px2 = _round(np.float32(px1) * sx), _round(np.float32(px2) * sx)
            py1 = _round(np.float32(py1) * sy)
            pad_h = py1
            pad_w = px2 if mirror else px1
            out_h = min(out_h, crop - pad_h)
            out_w = min(out_w, crop - pad_w)
        if x1 < 0 or y1 < 0 or x2 >= img.shape[1] or y2 >= img.shape[0] or x2 < x1 or y2 < y1:
            raise DataError("%s: window (%d, %d, %d, %d) lies outside its %dx%d image"
                            % (self.where, x1, y1, x2, y2, img.shape[1], img.shape[0]))
        warped = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if mirror:
            warped = warped[:, ::-1]
        return warped, pad_h, pad_w

    def next_batch(self):
        n_bg = self.batch_size - self.num_fg
        picks = [self.bg[i] for i in self.rng.integers(0, max(len(self.bg), 1), n_bg)] + \
                [self.fg[i] for i in self.rng.integers(0, max(len(self.fg), 1), self.num_fg)]
        flips = self.rng.integers(0, 2, self.batch_size).astype(bool) if self.transformer.mirror \
            else np.zeros(self.batch_size, bool)
        data = np.zeros(self.top_shape, np.float32)
        labels = np.zeros(self.batch_size, np.float32)
        tv = self.transformer.mean_values
        for item, (box, mirror) in enumerate(zip(picks, flips)):
            warped, ph, pw = self._warp(self._image(box[0]), box, mirror)
            h, w = warped.shape[:2]
            region = data[item, :, ph:ph + h, pw:pw + w]
            region[...] = warped.transpose(2, 0, 1)
            if self.mean is not None:
                region -= self.mean[:, ph:ph + h, pw:pw + w]
            elif tv is not None:
                region -= tv.reshape(-1, 1, 1)
            region *= self.scale
            labels[item] = box[1]
        return data, labels

    def get_state(self):
        return {"rng": rng_state(self.rng)}

    def set_state(self, state):
        set_rng_state(self.rng, state.get("rng"))
