"""Batch sources behind the data layers: records in, transformed float32 batches out.

Each source keeps its own random generator, seeded once from the toolkit's
generator (``solvers.rng.get_rng()``) when the layer is set up, as Caffe seeds
each transformer from its global RNG. Drawing from a private generator keeps
runs repeatable although the batches are made in a background thread, and its
state is part of the source's saved position.
"""
import logging
import os

import numpy as np

from netspec.errors import DataError, resolved_path
from solvers.data.datum import datums_to_batch, hwc_to_chw, opencv_reason, parse_datum
from solvers.data.prefetch import BatchSource

log = logging.getLogger("caffe")


def child_rng():
    """A generator seeded from the toolkit's one generator."""
    from solvers.rng import get_rng
    return np.random.default_rng(int(get_rng().integers(0, 2 ** 63 - 1)))


def rng_state(rng):
    return rng.bit_generator.state


def set_rng_state(rng, state):
    """Restore a source's generator from a side file, checked first (side_file.RNG_STATE)."""
    if state is not None:
        from solvers.side_file import check_rng_state
        check_rng_state(state, "random generator state")
        rng.bit_generator.state = state


class DatumBatchSource(BatchSource):
    """Batches of Datum records read in key order from a database cursor (wrapping)."""

    def __init__(self, cursor, transformer, batch_size, with_label, where, rng=None, share=(0, 1)):
        self.cursor = cursor
        # share (rank, count): read only records rank, rank+count, ... (Caffe's DataLayer::Skip)
        self.share_rank, self.share_count = int(share[0]), int(share[1])
        for _ in range(self.share_rank):
            cursor.next()
        self.transformer = transformer
        self.batch_size = int(batch_size)
        self.with_label = with_label
        self.where = where
        self.rng = rng if rng is not None else child_rng()
        first = self._parse(cursor.value, cursor.key)
        self.item_shape = datums_to_batch([first], transformer.decode_color, where).shape[1:]
        self.top_shape = (self.batch_size,) + transformer.output_shape(self.item_shape)

    def _parse(self, value, key):
        return parse_datum(value, "%s: record %r" % (self.where, key))

    def next_batch(self):
        start = self.cursor.index
        keys, datums = [], []
        wrapped = self.cursor.wrapped
        for _ in range(self.batch_size):
            keys.append(self.cursor.key)
            datums.append(self._parse(self.cursor.value, keys[-1]))
            for _ in range(self.share_count):
                self.cursor.next()
        if self.cursor.wrapped != wrapped:
            log.info("Restarting data prefetching from start.")
        x = datums_to_batch(datums, self.transformer.decode_color, "%s: batch from record %d"
                            % (self.where, start))
        if x.shape[1:] != self.item_shape:  # the whole batch agrees, but not with record 0
            raise DataError("%s: record %r has shape %s but the first record has %s; every record "
                            "must have the same shape (resize them when converting)"
                            % (self.where, keys[0], x.shape[1:], self.item_shape))
        data = self.transformer(x, self.rng)
        if not self.with_label:
            return (data,)
        return data, np.array([d.label for d in datums], dtype=np.float32)

    def get_state(self):
        return {"cursor": self.cursor.get_state(), "rng": rng_state(self.rng)}

    def set_state(self, state):
        self.cursor.set_state(state["cursor"])
        set_rng_state(self.rng, state.get("rng"))

    def close(self):
        self.cursor.close()
        release = getattr(self.cursor.reader, "release", None)
        if release is not None:
            release()


def read_image(path, new_height=0, new_width=0, is_color=True, where="image"):
    """An image file as C x H x W uint8, resized as Caffe's ReadImageToCVMat does."""
    import cv2
    try:
        img = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
        if img is not None and new_height > 0 and new_width > 0:
            img = cv2.resize(img, (new_width, new_height))
    except cv2.error as e:
        raise DataError("%s: OpenCV cannot read image %r (resolved: %s): %s"
                        % (where, path, os.path.abspath(path), opencv_reason(e))) from None
    if img is None:
        raise DataError("%s: could not read image %r (resolved: %s); the file is missing or "
                        "not an image OpenCV can decode" % (where, path, os.path.abspath(path)))
    return hwc_to_chw(img, where)


def read_image_list(source, where):
    """Caffe's image list: ``path label`` per line (split at the last space)."""
    try:
        with open(source) as f:
            raw = f.read().splitlines()
    except FileNotFoundError:
        raise DataError("%s: image list %r not found %s" % (where, source, resolved_path(source))) from None
    lines = []
    for lineno, line in enumerate(raw, 1):
        line = line.strip()
        if not line:
            continue
        path, _, label = line.rpartition(" ")
        try:
            lines.append((path, int(label), lineno))
        except ValueError:
            raise DataError("%s: %s line %d: expected 'path label', got %r"
                            % (where, source, lineno, line)) from None
        if not -2 ** 31 <= lines[-1][1] < 2 ** 31:
            raise DataError("%s: %s line %d: label %s does not fit Caffe's 32-bit label"
                            % (where, source, lineno, label))
        if not path:
            raise DataError("%s: %s line %d: expected 'path label', got %r"
                            % (where, source, lineno, line))
    if not lines:
        raise DataError("%s: image list %r holds no images" % (where, source))
    return lines


class ImageListSource(BatchSource):
    """Caffe's ImageData: images named in a list file, optionally shuffled each epoch."""

    def __init__(self, param, transformer, with_label, where, rng=None):
        self.param = param
        self.transformer = transformer
        self.with_label = with_label
        self.where = where
        self.rng = rng if rng is not None else child_rng()
        self.lines = read_image_list(param.source, where)
        self.order = np.arange(len(self.lines))
        if param.shuffle:
            self.rng.shuffle(self.order)
        self.pos = int(self.rng.integers(param.rand_skip)) if param.rand_skip else 0
        self.pos %= len(self.lines)
        self.batch_size = int(param.batch_size)
        self.item_shape = self._read(self.order[self.pos]).shape
        self.top_shape = (self.batch_size,) + transformer.output_shape(self.item_shape)

    def _read(self, i):
        path, _, lineno = self.lines[i]
        return read_image(self.param.root_folder + path, self.param.new_height, self.param.new_width,
                          self.param.is_color, "%s: %s line %d" % (self.where, self.param.source, lineno))

    def next_batch(self):
        images, labels = [], []
        for _ in range(self.batch_size):
            i = self.order[self.pos]
            img = self._read(i)
            if img.shape != self.item_shape:
                path, _, lineno = self.lines[i]
                raise DataError("%s: %s line %d: image %r is %s but the first image is %s; set "
                                "new_height/new_width to resize them all" % (
                                    self.where, self.param.source, lineno, path, img.shape,
                                    self.item_shape))
            images.append(img)
            labels.append(self.lines[i][1])
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0
                if self.param.shuffle:
                    self.rng.shuffle(self.order)
        data = self.transformer(np.stack(images), self.rng)
        if not self.with_label:
            return (data,)
        return data, np.asarray(labels, dtype=np.float32)

    def get_state(self):
        state = {"index": self.pos, "rng": rng_state(self.rng)}
        if self.param.shuffle:
            state["order"] = self.order.tolist()
        return state

    def set_state(self, state):
        if "order" in state:
            order = np.asarray(state["order"], dtype=np.int64)
            if order.ndim != 1 or sorted(order.tolist()) != list(range(len(self.lines))):
                raise DataError("%s: the saved image order is not a permutation of the %d listed images"
                                % (self.where, len(self.lines)))
            self.order = order
        self.pos = int(state["index"]) % len(self.lines)
        set_rng_state(self.rng, state.get("rng"))
