"""Data layers: where a net's batches come from (Caffe's data_layer, image_data_layer, ...).

``Data`` reads Datum records from an LMDB in key order (wrapping at the end)
and applies ``transform_param``; ``ImageData`` reads image files named in a
list; ``MemoryData`` serves arrays handed over from Python; ``HDF5Data`` reads
datasets named after its tops from the HDF5 files in a list; ``WindowData``
samples object/background windows listed in a window file; ``HDF5Output``
writes its two bottoms to an HDF5 file.

Everything that can be checked is checked in ``setup`` (before iteration 0):
the source exists, is not empty, the first record fits the transform. The
read position is part of ``get_state()``, so a snapshot can resume exactly.
Batches are made on the host (NumPy) and copied into the top blobs, whatever
their array module.
"""
import logging
import os
import weakref

import numpy as np

from netspec.errors import DataError, resolved_path
from solvers import hdf5
from solvers.layer import Layer, register_layer

log = logging.getLogger("caffe")


def _copy_into(blob, array):
    """Write a host array into a blob of any array module."""
    xp = Layer.xp_of(blob)
    blob.data[...] = array if xp is np else xp.asarray(array)


class _BaseData(Layer):
    """No bottoms; tops data and (optionally) label, as Caffe's BaseDataLayer."""
    exact_num_bottom = 0
    min_top = 1
    max_top = 2

    def where(self):
        return "layer %r (type %s)" % (self.name, self.type)

    def check_source(self, source, what="source"):
        """The source path, resolved against the working directory; DataError if missing."""
        if not source:
            raise DataError("%s: %s is empty; set it to the database/list to read" % (self.where(), what))
        resolved = os.path.abspath(source)
        if not os.path.exists(resolved):
            raise DataError("%s: %s %r not found %s; paths in a net are relative to the directory "
                            "the program runs in" % (self.where(), what, source, resolved_path(source)))
        return resolved


class _PrefetchingData(_BaseData):
    """A data layer whose batches come from a BatchSource through a Prefetcher.

    ``layer_setup`` opens the source and hands it to ``use_source``, which
    checks that a batch is a possible size; the prefetch thread starts only
    once the tops are shaped, so an impossible batch never starts reading.
    """

    prefetcher = None
    source = None

    def use_source(self, source, depth):
        """Take ``source`` (closing it if its batches cannot fit) to prefetch ``depth`` batches ahead."""
        from netspec.shapes import check_fits_in_memory, shape_count
        try:
            count = shape_count(source.top_shape, "%s: a batch (batch_size x the shape of one record)"
                                % self.where(), DataError)
            check_fits_in_memory(4 * count * (max(int(depth), 0) + 2),
                                 "%s: a batch of shape %s, read %d batches ahead (prefetch),"
                                 % (self.where(), list(source.top_shape), depth), DataError)
        except DataError:
            source.close()
            raise
        self.source = source
        self.top_shape = source.top_shape
        self.depth = depth

    def setup(self, bottom, top):
        from solvers.data.prefetch import Prefetcher
        if self.prefetcher is not None:  # set up again: let the old thread go first
            self.close()
            self.prefetcher = None
        self.source = None
        try:
            super().setup(bottom, top)
        except BaseException:
            if self.source is not None:
                self.source.close()
                self.source = None
            raise
        self.prefetcher = Prefetcher(self.source, self.depth, name="prefetch-" + self.name)
        self._finalizer = weakref.finalize(self, self.prefetcher.close)

    def reshape(self, bottom, top):
        top[0].reshape(self.top_shape)
        if len(top) > 1:
            top[1].reshape(self.top_shape[0])

    def forward(self, bottom, top):
        batch = self.prefetcher.next()
        for blob, array in zip(top, batch):
            if blob.shape != array.shape:
                blob.reshape(array.shape)
            _copy_into(blob, array)

    def get_state(self):
        return self.prefetcher.get_state() if self.prefetcher is not None else None

    def set_state(self, state):
        if state is not None:
            self.prefetcher.set_state(state)

    def close(self):
        """Stop the prefetch thread and close the database (also done at garbage collection)."""
        if self.prefetcher is not None:
            self._finalizer()


def open_database(layer, source, backend):
    """A reader for ``data_param.source`` in the given backend, checked to exist."""
    from netspec import caffe_pb2
    from solvers.data.lmdb_source import LMDBReader, is_lmdb_dir
    resolved = layer.check_source(source)
    what = "%s: source %r (resolved: %s)" % (layer.where(), source, resolved)
    if backend == caffe_pb2.DataParameter.LEVELDB:
        try:
            from solvers.data.leveldb_source import LevelDBReader
            return LevelDBReader(resolved, what)
        except ImportError:
            hint = (" This directory holds an LMDB (data.mdb): add 'backend: LMDB' to data_param."
                    if is_lmdb_dir(resolved) else
                    " Convert the data to LMDB (tools/convert_imageset.py, tools/convert_mnist.py) "
                    "and set 'backend: LMDB', or install plyvel.")
            raise DataError("%s: data_param.backend is LEVELDB (Caffe's default when backend is "
                            "not set), which needs the plyvel package.%s" % (what, hint)) from None
    return LMDBReader.open(resolved, what)


@register_layer("Data")
class DataLayer(_PrefetchingData):
    """Datum records from an LMDB, in key order from the first, wrapping at the end."""

    def layer_setup(self, bottom, top):
        from netspec import caffe_pb2
        from solvers.data.sources import DatumBatchSource, child_rng
        from solvers.data.transformer import DataTransformer
        from solvers.data_parallel import record_share
        p = self.layer_param.data_param
        if p.batch_size <= 0:
            raise DataError("%s: data_param.batch_size must be positive, got %d"
                            % (self.where(), p.batch_size))
        transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.where())
        db = open_database(self, p.source, p.backend)
        try:
            cursor = db.cursor()
        except DataError:
            getattr(db, "release", db.close)()
            raise
        rng = child_rng()
        if p.rand_skip:
            cursor.skip(int(rng.integers(p.rand_skip)))
        share = record_share() if self.phase == caffe_pb2.TRAIN else (0, 1)
        try:
            source = DatumBatchSource(cursor, transformer, p.batch_size, len(top) > 1,
                                      "%s: source %r" % (self.where(), p.source), rng, share)
        except Exception:
            cursor.close()
            getattr(db, "release", db.close)()
            raise
        log.info("Opened %s %s", "lmdb" if p.backend == p.LMDB else "leveldb", p.source)
        log.info("output data size: %s", ",".join(str(d) for d in source.top_shape))
        if share[1] > 1:
            log.info("Reading records %d, %d, ... of every %d (rank %d of %d processes)",
                     share[0], share[0] + share[1], share[1], share[0], share[1])
        self.use_source(source, p.prefetch)


@register_layer("ImageData")
class ImageDataLayer(_PrefetchingData):
    """Images listed as ``path label`` lines, read with OpenCV, resized and transformed."""

    def layer_setup(self, bottom, top):
        from solvers.data.sources import ImageListSource
        from solvers.data.transformer import DataTransformer
        p = self.layer_param.image_data_param
        self.check_source(p.source, "image_data_param.source")
        if p.batch_size <= 0:
            raise DataError("%s: image_data_param.batch_size must be positive" % self.where())
        if (p.new_height > 0) != (p.new_width > 0):
            raise DataError("%s: set both new_height and new_width, or neither" % self.where())
        transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.where())
        self.use_source(ImageListSource(p, transformer, len(top) > 1, self.where()),
                            self.layer_param.data_param.prefetch)


@register_layer("WindowData")
class WindowDataLayer(_PrefetchingData):
    """Random foreground/background windows of the images in a window file (R-CNN fine-tuning)."""
    exact_num_top = 2
    min_top = max_top = None

    def layer_setup(self, bottom, top):
        from solvers.data.transformer import DataTransformer
        from solvers.data.window import WindowSource
        p = self.layer_param.window_data_param
        self.check_source(p.source, "window_data_param.source")
        if p.batch_size <= 0:
            raise DataError("%s: window_data_param.batch_size must be positive" % self.where())
        if p.crop_mode not in ("warp", "square"):
            raise DataError("%s: crop_mode %r is neither 'warp' nor 'square'" % (self.where(), p.crop_mode))
        transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.where())
        self.use_source(WindowSource(p, transformer, self.where()), self.layer_param.data_param.prefetch)


@register_layer("MemoryData")
class MemoryDataLayer(_BaseData):
    """Batches cut from arrays given by ``set_input_arrays`` (pycaffe's Net.set_input_arrays).

    As in Caffe, the arrays are served as they are (no transform_param), in
    order, batch_size rows at a time, wrapping around.
    """
    exact_num_top = 2
    min_top = max_top = None

    def layer_setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.item_shape = (int(p.channels), int(p.height), int(p.width))
        if self.batch_size <= 0 or min(self.item_shape) <= 0:
            raise DataError("%s: memory_data_param needs positive batch_size, channels, height "
                            "and width, got %d, %s" % (self.where(), self.batch_size, self.item_shape))
        self.data = None
        self.labels = None
        self.pos = 0

    def set_input_arrays(self, data, labels):
        """Hand over N x C x H x W data and N labels; N must be a multiple of batch_size."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32).reshape(len(labels), -1)
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise DataError("%s: data must be N x %d x %d x %d (channels, height, width from "
                            "memory_data_param), got %s" % ((self.where(),) + self.item_shape + (data.shape,)))
        if labels.shape != (data.shape[0], 1):
            raise DataError("%s: need one label per item: %d items but labels of shape %s"
                            % (self.where(), data.shape[0], labels.shape))
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise DataError("%s: the number of items (%d) must be a positive multiple of "
                            "batch_size (%d)" % (self.where(), data.shape[0], self.batch_size))
        self.data, self.labels, self.pos = data, labels[:, 0], 0

    reset = set_input_arrays

    def reshape(self, bottom, top):
        top[0].reshape((self.batch_size,) + self.item_shape)
        top[1].reshape(self.batch_size)

    def forward(self, bottom, top):
        if self.data is None:
            raise DataError("%s: no data; call set_input_arrays(data, labels) before forward"
                            % self.where())
        end = self.pos + self.batch_size
        _copy_into(top[0], self.data[self.pos:end])
        _copy_into(top[1], self.labels[self.pos:end])
        self.pos = end % self.data.shape[0]

    def get_state(self):
        return {"index": self.pos}

    def set_state(self, state):
        if state is not None:
            pos = int(state["index"])
            if pos < 0 or (self.data is not None and pos >= self.data.shape[0]):
                raise DataError("%s: the saved position %d is outside the %s items held"
                                % (self.where(), pos, "no" if self.data is None else self.data.shape[0]))
            self.pos = pos


def _h5py(layer):
    try:
        import h5py
    except ImportError:
        raise DataError("%s needs the h5py package (pip install h5py)" % layer.where()) from None
    return h5py


@register_layer("HDF5Data")
class HDF5DataLayer(_BaseData):
    """Rows of the datasets named after the tops, from the HDF5 files listed in ``source``.

    Each file is loaded whole; rows are served in order (or shuffled, with the
    file order, at each pass when ``shuffle``), moving to the next file at the
    end of one, as Caffe's HDF5DataLayer does.
    """
    min_top = 1
    max_top = None

    def layer_setup(self, bottom, top):
        from solvers.data.sources import child_rng
        _h5py(self)
        p = self.layer_param.hdf5_data_param
        self.check_source(p.source, "hdf5_data_param.source")
        with open(p.source) as f:
            self.files = [ln.strip() for ln in f if ln.strip()]
        if not self.files:
            raise DataError("%s: %r lists no HDF5 files" % (self.where(), p.source))
        if p.batch_size <= 0:
            raise DataError("%s: hdf5_data_param.batch_size must be positive" % self.where())
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.top_names = list(self.layer_param.top)
        self.rng = child_rng()
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.current_file = 0
        self._load(self.file_order[0])
        self.row = 0
        # several processes: rank r of N takes the rows whose overall position is r mod N
        # (Caffe's HDF5DataLayer::Skip); ``offset`` counts the rows passed, taken or not
        from netspec import caffe_pb2
        from solvers.data_parallel import record_share
        self.share = record_share() if self.phase == caffe_pb2.TRAIN else (0, 1)
        self.offset = 0

    def _load(self, index):
        _h5py(self)
        path = self.files[index]
        if not os.path.exists(path):
            raise DataError("%s: HDF5 file %r (listed in %r) not found (resolved: %s, working "
                            "directory: %s)" % (self.where(), path, self.layer_param.hdf5_data_param.source,
                                                os.path.abspath(path), os.getcwd()))
        def read(f):
            arrays = []
            for name in self.top_names:
                if name not in f:
                    raise DataError("%s: HDF5 file %r has no dataset %r (it has %s); datasets "
                                    "are read by top name" % (self.where(), path, name, sorted(f.keys())))
                ds = hdf5.dataset(f, name, "%s: HDF5 file %r" % (self.where(), path), DataError)
                arrays.append(np.asarray(ds, dtype=np.float32))
            return arrays
        arrays = hdf5.read_file(path, "HDF5 data file", read, DataError)
        rows = {a.shape[0] if a.ndim else 0 for a in arrays}
        if len(rows) != 1 or 0 in rows:
            raise DataError("%s: datasets %s in %r must be non-empty with the same number of rows, "
                            "got shapes %s" % (self.where(), self.top_names, path,
                                               [a.shape for a in arrays]))
        if hasattr(self, "arrays") and [a.shape[1:] for a in arrays] != [a.shape[1:] for a in self.arrays]:
            raise DataError("%s: HDF5 file %r has item shapes %s but the first file has %s"
                            % (self.where(), path, [a.shape[1:] for a in arrays],
                               [a.shape[1:] for a in self.arrays]))
        self.arrays = arrays
        self.loaded = int(index)
        self.perm = np.arange(arrays[0].shape[0])
        if self.shuffle:
            self.rng.shuffle(self.perm)

    def reshape(self, bottom, top):
        for blob, a in zip(top, self.arrays):
            blob.reshape((self.batch_size,) + a.shape[1:])

    def _advance(self):
        """End of the current file: next file (reshuffling at the end of a pass)."""
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.rng.shuffle(self.file_order)
            self._load(self.file_order[self.current_file])
        elif self.shuffle:
            self.rng.shuffle(self.perm)
        self.row = 0

    def forward(self, bottom, top):
        if self.share[1] > 1:
            return self._forward_share(top)
        chunks = [[] for _ in top]
        filled = 0
        while filled < self.batch_size:
            take = min(self.batch_size - filled, len(self.perm) - self.row)
            rows = self.perm[self.row:self.row + take]
            for chunk, a in zip(chunks, self.arrays):
                chunk.append(a[rows])
            filled += take
            self.row += take
            if self.row == len(self.perm):
                self._advance()
        for blob, chunk in zip(top, chunks):
            _copy_into(blob, np.concatenate(chunk))

    def _forward_share(self, top):
        """One batch of this rank's rows: those at overall positions rank, rank + N, ..."""
        rank, count = self.share
        chunks = [[] for _ in top]
        for _ in range(self.batch_size):
            while self.offset % count != rank:
                self._pass_row()
            for chunk, a in zip(chunks, self.arrays):
                chunk.append(a[self.perm[self.row]])
            self._pass_row()
        for blob, chunk in zip(top, chunks):
            _copy_into(blob, np.stack(chunk))

    def _pass_row(self):
        self.row += 1
        self.offset += 1
        if self.row == len(self.perm):
            self._advance()

    def get_state(self):
        from solvers.data.sources import rng_state
        state = {"file": self.current_file, "row": self.row, "file_order": self.file_order.tolist(),
                 "perm": self.perm.tolist() if self.shuffle else None, "rng": rng_state(self.rng)}
        if self.share[1] > 1:
            state["offset"] = self.offset
        return state

    def set_state(self, state):
        from solvers.data.sources import set_rng_state
        if state is None:
            return
        file_order = np.asarray(state["file_order"], dtype=np.int64)
        current = int(state["file"])
        if sorted(file_order.tolist()) != list(range(len(self.files))) or not 0 <= current < len(self.files):
            raise DataError("%s: the saved file order %s / file %d does not fit the %d files listed"
                            % (self.where(), file_order.tolist()[:8], current, len(self.files)))
        self.file_order, self.current_file = file_order, current
        if self.file_order[self.current_file] != self.loaded:
            self._load(self.file_order[self.current_file])
        rows = self.arrays[0].shape[0]
        if state.get("perm") is not None:
            perm = np.asarray(state["perm"], dtype=np.int64)
            if perm.ndim != 1 or sorted(perm.tolist()) != list(range(rows)):
                raise DataError("%s: the saved row order is not a permutation of the %d rows of file %d"
                                % (self.where(), rows, self.loaded))
            self.perm = perm
        row = int(state["row"])
        if not 0 <= row <= rows:
            raise DataError("%s: the saved row %d is outside the %d rows of file %d"
                            % (self.where(), row, rows, self.loaded))
        self.row = row
        offset = state.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise DataError("%s: the saved row offset %r is not a count of rows" % (self.where(), offset))
        self.offset = offset
        set_rng_state(self.rng, state.get("rng"))


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes bottom 0 to dataset ``data`` and bottom 1 to ``label`` of hdf5_output_param.file_name.

    The file is created (truncated) at set-up, as in Caffe; each forward
    appends its batch, so a whole test pass ends up in one file.
    """
    exact_num_bottom = 2
    exact_num_top = 0

    def layer_setup(self, bottom, top):
        h5py = _h5py(self)
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise DataError("layer %r (type HDF5Output): hdf5_output_param.file_name is empty" % self.name)
        try:
            with h5py.File(self.file_name, "w") as f:
                for name, blob in zip(("data", "label"), bottom):
                    f.create_dataset(name, shape=(0,) + tuple(blob.shape[1:]),
                                     maxshape=(None,) + tuple(blob.shape[1:]), dtype="f4")
        except OSError as e:
            raise DataError("layer %r (type HDF5Output): cannot create %r (resolved: %s): %s"
                            % (self.name, self.file_name, os.path.abspath(self.file_name), e)) from None

    where = _BaseData.where

    def reshape(self, bottom, top):
        if bottom[0].shape[0] != bottom[1].shape[0]:
            raise self.error("data and label bottoms need the same num, got %s and %s"
                             % (bottom[0].shape, bottom[1].shape))

    def forward(self, bottom, top):
        from solvers.backend import to_numpy
        h5py = _h5py(self)
        with h5py.File(self.file_name, "a") as f:
            for name, blob in zip(("data", "label"), bottom):
                ds = f[name]
                arr = to_numpy(blob.data)
                if arr.shape[1:] != ds.shape[1:]:
                    raise self.error("bottom %r changed shape to %s; the file holds items of %s"
                                     % (name, arr.shape, ds.shape[1:]))
                n = ds.shape[0]
                ds.resize(n + arr.shape[0], axis=0)
                ds[n:] = arr

    def backward(self, top, propagate_down, bottom):
        """Nothing flows back through an output layer."""
