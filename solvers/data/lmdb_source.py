"""LMDB databases of Datum records: reading them in Caffe's order, writing them safely.

Reading: Caffe's Data layer walks the records in key order from the first and
starts again at the end. A database is checked before it is opened
(``lmdb_verify``: a damaged one is a DataError, never a crash of liblmdb).
``LMDBReader`` opens the database read-only without the lock file (so a
read-only copy, e.g. CI's ``../shared``, works) and hands out ``LMDBCursor``
objects whose position (index + key) can be saved and restored, so a resumed
run reads the very records it would have read.

Writing: ``LMDBWriter`` builds the database in a temporary directory next to
the target and renames it into place at the end, so an interrupted conversion
never leaves a half-written database that looks complete. The map size starts
small and doubles when LMDB says it is full (32-bit boards cannot map 1 TB as
Caffe's converters ask); records are committed in batched transactions.
"""
import contextlib
import os
import shutil
import tempfile
import threading

from netspec.atomic import (current_umask, exchange_paths, fsync_directory,
                            remove_stale_temporaries, temp_prefix, write_step)
from netspec.errors import DataError, os_error_text, resolved_path
from solvers.data import lmdb_verify


def _lmdb():
    import lmdb
    return lmdb


def is_lmdb_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "data.mdb"))


class LMDBReader:
    """A read-only LMDB environment (``path`` as resolved by the caller).

    LMDB allows one open environment per database and process, so readers are
    shared: ``LMDBReader.open`` returns the reader already open for the same
    file (a train and a test net over one source, say) and ``release`` closes
    it when its last user is done (Caffe shares one reader per source too).
    """

    _open = {}
    _lock = threading.Lock()

    @classmethod
    def open(cls, path, what=None):
        key = os.path.realpath(os.fspath(path))
        with cls._lock:
            reader = cls._open.get(key)
            if reader is None:
                reader = cls(path, what)
                cls._open[key] = reader
            reader.users += 1
            return reader

    def release(self):
        with self._lock:
            self.users -= 1
            if self.users <= 0:
                self._open.pop(os.path.realpath(self.path), None)
                self.env.close()

    def __init__(self, path, what=None):
        self.users = 0
        self.path = os.fspath(path)
        given = what
        what = what or "LMDB %r" % self.path
        if not os.path.exists(self.path):
            raise DataError("%s does not exist %s" % (what, resolved_path(self.path)))
        subdir = os.path.isdir(self.path)
        if subdir and not os.path.isfile(os.path.join(self.path, "data.mdb")):
            raise DataError("%s is a directory without data.mdb, so it is not an LMDB database "
                            "(resolved: %s)" % (what, os.path.abspath(self.path)))
        try:
            lmdb_verify.verify(self.path)
        except DataError as e:
            if given is None:
                raise
            raise DataError("%s: %s" % (what, e)) from None
        try:
            self.env = _lmdb().open(self.path, subdir=subdir, readonly=True, lock=False,
                                    readahead=False, max_readers=126)
            self.entries = self.env.stat()["entries"]
        except _lmdb().Error as e:
            raise DataError("%s cannot be opened as an LMDB database: %s" % (what, e)) from None
        self.what = what
        self.damage = None

    def failure(self, error):
        """The DataError to raise for an lmdb.Error met while reading.

        After liblmdb finds a damaged page (MDB_CORRUPTED) the transaction is
        dead and every later call says MDB_BAD_TXN; both are reported as the
        corruption they are, naming the file.
        """
        lmdb = _lmdb()
        if isinstance(error, lmdb.CorruptedError) or (self.damage and isinstance(error, lmdb.BadTxnError)):
            self.damage = self.damage or str(error)
            return DataError("%s is corrupted (liblmdb: %s, in %s); copy or convert the database "
                             "again" % (self.what, self.damage, lmdb_verify.data_file(self.path)))
        return DataError("%s: reading failed: %s (in %s)" % (self.what, error, lmdb_verify.data_file(self.path)))

    def __len__(self):
        return self.entries

    def cursor(self):
        return LMDBCursor(self)

    def items(self):
        """All (key, value) pairs in key order (a generator over one read transaction)."""
        try:
            with self.env.begin(buffers=False) as txn:
                for kv in txn.cursor():
                    yield kv
        except _lmdb().Error as e:
            raise self.failure(e) from None

    def close(self):
        self.env.close()


class LMDBCursor:
    """A position in key order that wraps around at the end (Caffe's DataLayer::Next)."""

    def __init__(self, reader):
        self.reader = reader
        try:
            self.txn = reader.env.begin(buffers=False)
            self._cur = self.txn.cursor()
            found = self._cur.first()
        except _lmdb().Error as e:
            raise reader.failure(e) from None
        self.index = 0
        self.wrapped = 0  # how many times the end was reached
        if not found:
            raise DataError("%s is empty: it holds no records" % reader.what)

    @property
    def key(self):
        try:
            return self._cur.key()
        except _lmdb().Error as e:
            raise self.reader.failure(e) from None

    @property
    def value(self):
        try:
            return self._cur.value()
        except _lmdb().Error as e:
            raise self.reader.failure(e) from None

    def next(self):
        """Advance one record; at the end, start again from the first."""
        try:
            if self._cur.next():
                self.index += 1
            else:
                self._cur.first()
                self.index = 0
                self.wrapped += 1
        except _lmdb().Error as e:
            raise self.reader.failure(e) from None

    def read(self, n):
        """The next ``n`` values (wrapping), advancing past them."""
        out = []
        for _ in range(n):
            out.append(self.value)
            self.next()
        return out

    def skip(self, n):
        for _ in range(int(n) % max(self.reader.entries, 1)):
            self.next()

    def seek_first(self):
        try:
            self._cur.first()
        except _lmdb().Error as e:
            raise self.reader.failure(e) from None
        self.index = 0

    def get_state(self):
        """JSON-able position: the index of the next record and its key (latin-1 text)."""
        return {"index": self.index, "key": self.key.decode("latin-1")}

    def set_state(self, state):
        """Go to a saved position: by key when it is still there, else by index."""
        key = state.get("key")
        try:
            found = key is not None and self._cur.set_key(key.encode("latin-1"))
        except _lmdb().Error as e:
            raise self.reader.failure(e) from None
        if found:
            self.index = int(state.get("index", 0))
            return
        self.seek_first()
        self.skip(int(state.get("index", 0)))

    def close(self):
        try:
            self.txn.abort()
        except Exception:  # the environment may already be closed
            pass


class LMDBWriter:
    """Write (key, value) records into a new LMDB at ``path``, atomically.

    Use as a context manager; leaving the block normally commits and puts the
    temporary build directory at ``path``, an exception throws it away. With
    ``overwrite``, the new database takes the old one's place in one step
    (netspec.atomic.exchange_paths), so ``path`` holds the old or the new
    database at every instant; where the system cannot swap, the old one is
    moved aside under a name the next run recognises and puts back if the
    swap was cut short. Temporaries of killed runs are removed first.
    """

    def __init__(self, path, overwrite=False, batch_size=1000, map_size=1 << 20):
        self.path = os.path.abspath(os.fspath(path))
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise DataError("cannot create %s: directory %s does not exist" % (path, parent))
        name = os.path.basename(self.path)
        remove_stale_temporaries(parent, lambda target: target == name)
        if os.path.lexists(self.path) and not overwrite:
            raise DataError("%s already exists; refusing to overwrite it (--overwrite replaces it, "
                            "or choose another output path)" % path)
        self.overwrite = overwrite
        self.batch_size = int(batch_size)
        self.tmp = tempfile.mkdtemp(prefix=temp_prefix(name), dir=parent)
        os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; a database is meant to be shared
        write_step("created %s" % self.tmp)
        self.map_size = int(map_size)
        self.env = _lmdb().open(self.tmp, map_size=self.map_size, subdir=True)
        self.pending = []
        self.count = 0

    def put(self, key, value):
        if isinstance(key, str):
            key = key.encode("ascii")
        self.pending.append((key, value))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self):
        """Commit the pending records in one transaction, growing the map when it is full."""
        if not self.pending:
            return
        lmdb = _lmdb()
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:  # the transaction was aborted: grow and redo it
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
            except lmdb.Error as e:  # said here, while the partial database still fills the disk
                raise DataError("cannot write LMDB %s (built in %s): %s"
                                % (self.path, self.tmp, os_error_text(e, self.tmp, False))) from None
        self.count += len(self.pending)
        self.pending = []
        write_step("committed %d records to %s" % (self.count, self.tmp))

    def commit(self):
        """Flush, close and move the finished database to its final path."""
        self.flush()
        self.env.sync(True)
        self.env.close()
        write_step("database complete in %s" % self.tmp)
        if not os.path.lexists(self.path):
            os.rename(self.tmp, self.path)
        elif exchange_paths(self.tmp, self.path):   # self.tmp now holds the old database
            write_step("exchanged %s and %s" % (self.tmp, self.path))
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:   # no atomic swap here: move the old one aside under a name the next run restores
            old = tempfile.mkdtemp(prefix=temp_prefix(os.path.basename(self.path), "old"),
                                   dir=os.path.dirname(self.path))
            os.rename(self.path, os.path.join(old, "db"))
            write_step("moved the old database to %s" % old)
            os.rename(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        write_step("renamed to %s" % self.path)
        fsync_directory(os.path.dirname(self.path))

    def abort(self):
        try:
            self.env.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
            lmdb_verify.remember_sound(self.path)   # no need to check what was just written
        else:
            self.abort()
        return False


@contextlib.contextmanager
def write_errors(path):
    """Writing the LMDB ``path``: an OSError or liblmdb error becomes a DataError naming it.

    A full disk says "no space left on device" and where (liblmdb reports it
    as an I/O error).
    """
    try:
        yield
    except (OSError, _lmdb().Error) as e:
        raise DataError("cannot write LMDB %s: %s"
                        % (os.path.abspath(os.fspath(path)), os_error_text(e))) from None
