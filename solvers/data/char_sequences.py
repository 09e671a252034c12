"""UTF-8 text -> character-id sequences in HDF5, the layout a char-RNN reads with HDF5Data.

A text of L characters is cut into N parallel streams of S consecutive
characters each (stream n holds characters n*S .. n*S + S - 1). Three
datasets of shape (S, N) are written, one row per time step:

* ``data``:  the character id at that step,
* ``label``: the id of the character that follows it (the prediction target),
* ``cont``:  0 on row 0 (a stream starts), 1 elsewhere (the state carries on).

An HDF5Data layer with ``batch_size: T`` then serves (T, N) blocks whose
rows continue the previous block's, so an LSTM carrying its state across
forwards (``cont`` = 1) sees each stream as one long sequence; when the
layer wraps to row 0, ``cont`` = 0 resets it. S is a multiple of T, so a pass
over the file is a whole number of batches. The values are float32 because
that is what Caffe's HDF5Data loads; Embed reads them as integer ids.

The vocabulary (the sorted characters of the text) and the facts the net
generator needs (T, N, rows, the unigram baseline) go into a JSON file
beside the data.
"""
import json
import os

import numpy as np

from netspec.errors import DataError
from netspec.io import atomic_write_bytes

VOCAB_FORMAT = "char-rnn vocabulary 1"


def read_text(path):
    """The text of a UTF-8 file; DataError for a missing, empty, binary or non-UTF-8 file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError("cannot read text file %r: %s (resolved: %s)"
                        % (os.fspath(path), e.strerror or e, os.path.abspath(path))) from None
    if not raw.strip():
        raise DataError("text file %r is empty; a char-RNN needs a text to learn from" % os.fspath(path))
    if b"\0" in raw[:1 << 20]:
        raise DataError("text file %r looks binary (it holds NUL bytes, first at byte %d); "
                        "give a UTF-8 text file" % (os.fspath(path), raw.index(b"\0")))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError("text file %r is not UTF-8 text: byte %d (0x%02x) cannot be decoded; "
                        "convert it to UTF-8 (e.g. iconv -t utf-8) or give another file"
                        % (os.fspath(path), e.start, raw[e.start])) from None


class Vocabulary:
    """The characters a model knows, each with its id (its index in sorted order)."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def of_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def encode(self, text, what="text"):
        """Ids of ``text``; DataError naming the first character the vocabulary lacks."""
        try:
            return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            c = e.args[0]
            pos = text.index(c)
            raise DataError("%s has the character %r (U+%04X) at position %d, which is not in the "
                            "model's vocabulary of %d characters; leave it out or retrain on a text "
                            "that has it" % (what, c, ord(c), pos, len(self.chars))) from None

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


def unigram_cross_entropy(train_ids, val_ids, vocab_size):
    """Nats per character of ``val_ids`` under the training text's character frequencies.

    This is the baseline a model must beat: it knows how often each character
    occurs but nothing of context. Add-one smoothing keeps it finite.
    """
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_ids].mean())


def stream_layout(ids, streams, steps):
    """(data, label, cont) arrays of shape (S, N), S the largest multiple of T that fits."""
    rows = (len(ids) - 1) // streams // steps * steps
    if rows == 0:
        raise DataError("the text is too short: %d characters cannot fill %d streams of %d steps "
                        "(needs at least %d); use fewer --streams or --steps, or a longer text"
                        % (len(ids), streams, steps, streams * steps + 1))
    starts = np.arange(streams) * rows
    pos = np.arange(rows)[:, None] + starts[None, :]
    data = ids[pos].astype(np.float32)
    label = ids[pos + 1].astype(np.float32)
    cont = np.ones((rows, streams), np.float32)
    cont[0] = 0
    return data, label, cont


def write_sequences_hdf5(path, data, label, cont):
    """Write the three datasets to ``path`` (atomically: a temporary file, then a rename)."""
    try:
        import h5py
    except ImportError:
        raise DataError("writing %r needs the h5py package (pip install h5py, or pip install -e '.[hdf5]')"
                        % os.fspath(path)) from None
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=label)
            f.create_dataset("cont", data=cont)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise DataError("cannot write %r: %s" % (path, e)) from None


def _write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def convert_text(text, out_dir, streams=32, steps=50, val_fraction=0.05, val_streams=None,
                 source="text"):
    """Split ``text`` into training and validation sequences under ``out_dir``; return the metadata.

    The last ``val_fraction`` of the text is the validation part. Writes
    train.h5 / val.h5 and the list files train.txt / val.txt that
    ``hdf5_data_param.source`` names (paths as given by ``out_dir``), and
    vocab.json.
    """
    if not text:
        raise DataError("the text is empty; a char-RNN needs a text to learn from")
    if not 0 < val_fraction < 1:
        raise DataError("val_fraction must lie between 0 and 1, got %r" % val_fraction)
    vocab = Vocabulary.of_text(text)
    split = int(len(text) * (1 - val_fraction))
    ids = vocab.encode(text)
    train_ids, val_ids = ids[:split], ids[split:]
    val_streams = val_streams or max(1, min(streams, len(val_ids) // (4 * steps)))
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    meta = {"format": VOCAB_FORMAT, "chars": vocab.chars, "source": source,
            "steps": steps, "characters": len(text)}
    for part, part_ids, n in (("train", train_ids, streams), ("val", val_ids, val_streams)):
        try:
            data, label, cont = stream_layout(part_ids, n, steps)
        except DataError as e:
            raise DataError("%s part (%d characters): %s" % (part, len(part_ids), e)) from None
        h5 = os.path.join(out_dir, part + ".h5")
        write_sequences_hdf5(h5, data, label, cont)
        _write_text(os.path.join(out_dir, part + ".txt"), h5 + "\n")
        meta[part] = {"hdf5": h5, "list": os.path.join(out_dir, part + ".txt"),
                      "streams": n, "rows": int(data.shape[0])}
    meta["unigram_nats"] = unigram_cross_entropy(train_ids, val_ids, len(vocab))
    write_vocabulary(os.path.join(out_dir, "vocab.json"), meta)
    return meta


def write_vocabulary(path, meta):
    _write_text(path, json.dumps(meta, ensure_ascii=True, indent=1) + "\n")


def read_vocabulary(path):
    """The metadata dict that ``convert_text`` wrote, with a Vocabulary under ``"vocab"``."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise DataError("vocabulary file %r not found (resolved: %s); make it with "
                        "examples/char_rnn/create_char_data.py" % (os.fspath(path), os.path.abspath(path))) from None
    except (OSError, ValueError) as e:
        raise DataError("vocabulary file %r cannot be read: %s" % (os.fspath(path), e)) from None
    if not isinstance(meta, dict) or meta.get("format") != VOCAB_FORMAT or not meta.get("chars"):
        raise DataError("%r is not a char-RNN vocabulary file (no %r format tag or no characters)"
                        % (os.fspath(path), VOCAB_FORMAT))
    meta["vocab"] = Vocabulary(meta["chars"])
    return meta

