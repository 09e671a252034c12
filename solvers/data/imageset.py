"""An image list -> LMDB of Datum records, as Caffe's convert_imageset writes it.

The list holds ``path label`` lines (split at the last space, so paths may
contain spaces); paths are relative to ``root_folder``. Each image becomes a
Datum under the key ``%08d_<path>`` (its line index, then the path), raw
C x H x W BGR pixels, or (``encoded``) the PNG/JPEG file itself: the
original bytes when no resize or colour change is needed and the file already
has the wanted type, else a fresh ``cv2.imencode``. Unreadable images are
skipped with a warning naming the file and line, as Caffe skips them.
"""
import os
import sys

from netspec.errors import DataError
from netspec.shapes import shape_count
from solvers.data.datum import encode_image
from solvers.data.lmdb_source import LMDBWriter, write_errors
from solvers.data.progress import Progress
from solvers.data.sources import read_image, read_image_list


def image_datum(path, label, resize_height=0, resize_width=0, is_color=True, encode_type=None,
                where="image"):
    """The Datum convert_imageset stores for one image file (DataError if unreadable)."""
    from netspec import caffe_pb2
    chw = read_image(path, resize_height, resize_width, is_color, where)
    datum = caffe_pb2.Datum()
    datum.label = int(label)
    if encode_type:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        same_type = ext == encode_type.lower() or (ext, encode_type.lower()) in (("jpeg", "jpg"), ("jpg", "jpeg"))
        if (chw.shape[0] == 3) == is_color and not resize_height and not resize_width and same_type:
            with open(path, "rb") as f:
                datum.data = f.read()
        else:
            datum.data = encode_image(chw, encode_type)
        datum.encoded = True
        return datum
    datum.channels, datum.height, datum.width = (int(s) for s in chw.shape)
    datum.data = chw.tobytes()
    return datum


def convert_imageset(root_folder, list_file, db_path, resize_height=0, resize_width=0,
                     gray=False, shuffle=False, encoded=False, encode_type="", check_size=False,
                     overwrite=False, rng=None, progress=None, warn=None):
    """Write the LMDB ``db_path`` from an image list; returns (written, skipped)."""
    warn = warn or (lambda msg: print("warning: " + msg, file=sys.stderr))
    if encode_type:   # a type OpenCV cannot write fails here, not once per image
        import numpy as np
        encode_image(np.zeros((1, 1, 1), np.uint8), encode_type)
    if resize_height > 0 and resize_width > 0:
        shape_count((3, resize_height, resize_width), "--resize_height %d "
                    "--resize_width %d" % (resize_height, resize_width), DataError)
    lines = read_image_list(list_file, "image list")
    if shuffle:
        if rng is None:
            from solvers.rng import get_rng
            rng = get_rng()
        order = rng.permutation(len(lines))
        lines = [lines[i] for i in order]
    bar = progress or Progress(len(lines), "images")
    written, skipped, size = 0, 0, None
    with write_errors(db_path), LMDBWriter(db_path, overwrite=overwrite) as db:
        for index, (path, label, lineno) in enumerate(lines):
            enc = encode_type
            if encoded and not enc:  # guess from the file name, as Caffe does
                enc = os.path.splitext(path)[1].lstrip(".").lower() or "png"
            where = "%s line %d" % (list_file, lineno)
            try:
                datum = image_datum(os.path.join(root_folder, path) if root_folder else path,
                                    label, resize_height, resize_width, not gray,
                                    enc if encoded or encode_type else None, where)
            except DataError as e:
                warn(str(e))
                skipped += 1
                continue
            if check_size and not datum.encoded:
                if size is None:
                    size = len(datum.data)
                elif len(datum.data) != size:
                    raise DataError("%s: image %r has %d bytes of pixels, the first had %d "
                                    "(--check_size)" % (where, path, len(datum.data), size))
            db.put(b"%08d_" % index + path.encode("utf-8"), datum.SerializeToString())
            written += 1
            if index % 100 == 0:
                bar.update(index)
        if written == 0:
            raise DataError("none of the %d images in %s could be read"
                            % (len(lines), list_file))
    bar.update(len(lines))
    bar.done("%s: %d images written%s" % (db_path, written,
                                          ", %d skipped" % skipped if skipped else ""))
    return written, skipped
