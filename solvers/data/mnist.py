"""MNIST IDX files -> LMDB of Datum records, as Caffe's convert_mnist_data writes it.

Each image becomes a Datum (channels 1, height/width from the IDX header,
uint8 pixels in ``data``, ``label``) stored under the key ``%08d`` of its
index. The records are byte-for-byte what Caffe stores.
"""
import numpy as np

from solvers.data.idx import read_mnist
from solvers.data.lmdb_source import LMDBWriter, write_errors
from solvers.data.progress import Progress


def mnist_datums(images, labels):
    """Yield (key, serialized Datum) for uint8 images (N, rows, cols) and labels (N,)."""
    from netspec import caffe_pb2
    datum = caffe_pb2.Datum()
    datum.channels = 1
    datum.height, datum.width = int(images.shape[1]), int(images.shape[2])
    images = np.ascontiguousarray(images, dtype=np.uint8)
    for i in range(images.shape[0]):
        datum.data = images[i].tobytes()
        datum.label = int(labels[i])
        yield b"%08d" % i, datum.SerializeToString()


def write_mnist_lmdb(images, labels, db_path, overwrite=False, progress=None, batch_size=1000):
    """Write uint8 images (N, rows, cols) and labels (N,) as an LMDB; returns the record count."""
    n = images.shape[0]
    bar = Progress(n, "images") if progress is None else progress
    with write_errors(db_path), LMDBWriter(db_path, overwrite=overwrite, batch_size=batch_size) as db:
        for i, (key, value) in enumerate(mnist_datums(images, labels)):
            db.put(key, value)
            if i % 1000 == 0:
                bar.update(i)
    bar.update(n)
    bar.done("%s: %d images of %dx%d written" % (db_path, n, images.shape[1], images.shape[2]))
    return n


def convert_mnist(images_path, labels_path, db_path, overwrite=False, progress=None,
                  batch_size=1000):
    """Write the LMDB ``db_path`` from an IDX image/label pair; returns the record count."""
    images, labels = read_mnist(images_path, labels_path)
    return write_mnist_lmdb(images, labels, db_path, overwrite, progress, batch_size)
