"""LevelDB databases (Caffe's default backend), read through plyvel when it is installed.

Importing this module raises ImportError without plyvel; the Data layer turns
that into a DataError that says to convert to LMDB or install plyvel. The
reader mirrors ``LMDBReader``: key order from the first record, wrapping.
"""
import os

import plyvel  # noqa: F401  (ImportError here means: no LevelDB support)

from netspec.errors import DataError


class LevelDBReader:
    def __init__(self, path, what=None):
        self.path = os.fspath(path)
        self.what = what or "LevelDB %r" % self.path
        try:
            self.db = plyvel.DB(self.path, create_if_missing=False)
        except Exception as e:
            raise DataError("%s cannot be opened as a LevelDB database: %s" % (self.what, e)) from None
        self.entries = sum(1 for _ in self.db.iterator(include_value=False))

    def __len__(self):
        return self.entries

    def cursor(self):
        return LevelDBCursor(self)

    def items(self):
        return iter(self.db.iterator())

    def close(self):
        self.db.close()


class LevelDBCursor:
    def __init__(self, reader):
        self.reader = reader
        self.wrapped = 0
        if reader.entries == 0:
            raise DataError("%s is empty: it holds no records" % reader.what)
        self.seek_first()

    def _load(self):
        self.key, self.value = next(self._it)

    def seek_first(self):
        self._it = self.reader.db.iterator()
        self.index = 0
        self._load()

    def next(self):
        try:
            self._load()
            self.index += 1
        except StopIteration:
            self.seek_first()
            self.wrapped += 1

    def read(self, n):
        out = []
        for _ in range(n):
            out.append(self.value)
            self.next()
        return out

    def skip(self, n):
        for _ in range(int(n) % self.reader.entries):
            self.next()

    def get_state(self):
        return {"index": self.index, "key": self.key.decode("latin-1")}

    def set_state(self, state):
        self.seek_first()
        self.skip(int(state.get("index", 0)))

    def close(self):
        pass
