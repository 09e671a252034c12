"""The mean image of a database, as Caffe's compute_image_mean writes it.

Caffe adds the records one after another into a float32 sum, then divides by
the count in float32. We do the same sums in the same order, a batch of
records at a time (a float32 ``cumsum`` along the batch axis is exactly that
sequential sum), so the result equals Caffe's bit for bit. The output is a
BlobProto with the legacy num/channels/height/width fields, written to a
temporary file and renamed into place.
"""

import numpy as np

from netspec.errors import DataError
from solvers.data.datum import datums_to_batch, parse_datum
from solvers.data.lmdb_source import LMDBReader
from solvers.data.progress import Progress


def compute_image_mean(db_path, batch=1000, progress=None):
    """float32 C x H x W mean of every record of the LMDB ``db_path``."""
    reader = LMDBReader.open(db_path)
    if len(reader) == 0:
        reader.release()
        raise DataError("LMDB %r is empty: no mean to compute" % db_path)
    bar = progress or Progress(len(reader), "records")
    total, count, shape, pending = None, 0, None, []

    def add(datums):
        nonlocal total, shape
        x = datums_to_batch(datums, where="%s: records %d.." % (db_path, count - len(datums)))
        if shape is None:
            shape = x.shape[1:]
            total = np.zeros(shape, dtype=np.float32)
        elif x.shape[1:] != shape:
            raise DataError("%s: records after %d have shape %s but the first has %s"
                            % (db_path, count - len(datums), x.shape[1:], shape))
        stack = np.concatenate([total[None], x.astype(np.float32)])
        total = np.cumsum(stack, axis=0, dtype=np.float32)[-1]

    try:
        for key, value in reader.items():
            pending.append(parse_datum(value, "%s: record %r" % (db_path, key)))
            count += 1
            if len(pending) == batch:
                add(pending)
                pending = []
                bar.update(count)
        if pending:
            add(pending)
    finally:
        reader.release()
    bar.update(count)
    bar.done()
    return total / np.float32(count)


def mean_to_blobproto(mean):
    """A BlobProto with Caffe's legacy 1 x C x H x W fields."""
    from netspec import caffe_pb2
    proto = caffe_pb2.BlobProto()
    proto.num = 1
    proto.channels, proto.height, proto.width = (int(s) for s in mean.shape)
    proto.data.extend(np.asarray(mean, dtype=np.float32).ravel().tolist())
    return proto


def write_binaryproto_atomic(proto, path):
    """Write a message to ``path`` atomically (netspec.io's one helper; a ProtoError names the path)."""
    from netspec.io import atomic_write_bytes
    atomic_write_bytes(path, proto.SerializeToString)


def save_image_mean(db_path, out_path):
    mean = compute_image_mean(db_path)
    write_binaryproto_atomic(mean_to_blobproto(mean), out_path)
    return mean
