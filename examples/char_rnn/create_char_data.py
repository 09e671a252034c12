#!/usr/bin/env python
"""Turn a UTF-8 text into the char-RNN's HDF5 sequences, list files and vocabulary.

    python examples/char_rnn/create_char_data.py                 # default corpus, no download
    python examples/char_rnn/create_char_data.py --text FILE     # any other UTF-8 text

Writes examples/char_rnn/data/{train,val}.h5 (datasets data, label, cont of
shape (rows, streams)), the list files train.txt / val.txt that the nets'
HDF5Data layers name, and vocab.json (the characters, T, N, and the unigram
baseline of the validation text). The last --val-fraction of the text is the
validation part.

The default corpus is Python's own standard library source: a fixed list of
modules (about 1.1 MB of code, docstrings and comments) that every machine
running this toolkit has, so the workflow needs no download. Its content
varies a little between Python versions; the list does not.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from netspec.errors import CaffeError, DataError  # noqa: E402
from solvers.data.char_sequences import convert_text, read_text  # noqa: E402

# Well-documented pure-Python modules present in CPython 3.9 and later, in this order.
DEFAULT_MODULES = [
    "argparse.py", "datetime.py", "difflib.py", "logging/__init__.py", "enum.py",
    "dataclasses.py", "shutil.py", "configparser.py", "collections/__init__.py",
    "statistics.py", "functools.py", "random.py", "tempfile.py", "fractions.py",
    "contextlib.py", "calendar.py", "pprint.py", "heapq.py", "base64.py", "textwrap.py",
    "csv.py", "json/encoder.py", "json/__init__.py", "shlex.py", "json/decoder.py",
    "string.py", "queue.py", "glob.py", "copy.py", "abc.py", "sched.py", "fnmatch.py",
    "bisect.py",
]


def default_corpus():
    """The text of DEFAULT_MODULES from this interpreter's standard library, and a description."""
    stdlib = os.path.dirname(os.__file__)
    parts = []
    for name in DEFAULT_MODULES:
        path = os.path.join(stdlib, name)
        if os.path.isfile(path):
            parts.append(read_text(path))
    if not parts:
        raise DataError("the default corpus (Python's standard library source) is not on this "
                        "machine: no %s under %s; give a text with --text FILE"
                        % (DEFAULT_MODULES[0], stdlib))
    return "\n".join(parts), "%d modules of Python's standard library in %s" % (len(parts), stdlib)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", help="a UTF-8 text file (default: Python's standard library source)")
    ap.add_argument("--out", default=os.path.join("examples", "char_rnn", "data"),
                    help="folder for the files, as the nets will name it (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=50, help="T, time steps per batch (default: %(default)s)")
    ap.add_argument("--streams", type=int, default=32,
                    help="N, parallel streams per batch (default: %(default)s)")
    ap.add_argument("--val-fraction", type=float, default=0.05,
                    help="share of the text, from its end, kept for validation (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.steps <= 0 or args.streams <= 0:
            raise DataError("--steps and --streams must be positive")
        if args.text:
            text, source = read_text(args.text), args.text
        else:
            text, source = default_corpus()
        meta = convert_text(text, args.out, streams=args.streams, steps=args.steps,
                            val_fraction=args.val_fraction, source=source)
    except CaffeError as e:
        sys.exit("create_char_data.py: %s" % e)
    print("%s: %d characters, vocabulary of %d" % (source, meta["characters"], len(meta["chars"])))
    for part in ("train", "val"):
        m = meta[part]
        print("wrote %s: %d streams x %d steps" % (m["hdf5"], m["streams"], m["rows"]))
    print("unigram baseline on the validation text: %.4f nats/char" % meta["unigram_nats"])
    print("wrote %s" % os.path.join(args.out, "vocab.json"))


if __name__ == "__main__":
    main()
