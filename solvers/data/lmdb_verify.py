"""Checking an LMDB before reading it, so a damaged database is an error, not a dead process.

liblmdb trusts its file: it maps ``data.mdb`` into memory and follows the
page numbers it finds there. A truncated copy makes it touch memory past the
end of the file (SIGBUS); a zeroed or garbled page trips an ``assert`` inside
the library (SIGABRT). Neither can be caught in Python, so both are found
before the database is opened:

1. The two meta pages are read with ordinary file reads and checked (magic,
   version, page size, page numbers), and the file must be as long as the
   newest meta page says (the cheap check that finds truncated copies).
2. Every record is then read once in a child process (a cursor walk over the
   whole tree, each key also looked up): if liblmdb crashes, only the child
   dies, and the parent reports the database as corrupted, naming the file.
   The verdict is cached, in memory and in ``$XDG_CACHE_HOME/caffe-toolkit``
   (keyed by path, size, modification time and inode), so a database is
   walked once, not at every run. Databases this toolkit writes are recorded
   as sound when they are written. ``CAFFE_LMDB_VERIFY=0`` skips the walk
   (the meta-page checks still run) for a huge database you trust.
"""
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

from netspec.errors import DataError

log = logging.getLogger("caffe")

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
P_META = 0x08
P_INVALID = (1 << 64) - 1
_META = struct.Struct("<QHH4xII8xQ" "IHHQQQQQ" "IHHQQQQQ" "QQ")  # page header + MDB_meta (64-bit)

_verified = {}
_lock = threading.Lock()


def data_file(path):
    """The file liblmdb maps: ``path/data.mdb`` for a database directory, else ``path`` itself."""
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def _meta(f, offset, file_name, index):
    f.seek(offset)
    raw = f.read(_META.size)
    if len(raw) < _META.size:
        raise DataError("LMDB file %s is truncated: it ends inside meta page %d (%d bytes in all); "
                        "it is a partial copy, copy or convert it again" % (file_name, index, offset + len(raw)))
    v = _META.unpack(raw)
    meta = {"pgno": v[0], "flags": v[2], "magic": v[3], "version": v[4], "mapsize": v[5],
            "psize": v[6], "free_root": v[13], "main_entries": v[20], "main_root": v[21],
            "last_pg": v[22], "txnid": v[23]}
    if meta["magic"] != MAGIC:
        raise DataError("LMDB file %s: meta page %d has no LMDB magic number (0x%08x); the file is "
                        "not an LMDB database for this machine, or its start is damaged"
                        % (file_name, index, meta["magic"]))
    if meta["version"] != DATA_VERSION or not meta["flags"] & P_META:
        raise DataError("LMDB file %s: meta page %d is damaged (format version %d, page flags 0x%x)"
                        % (file_name, index, meta["version"], meta["flags"]))
    return meta


def check_meta(path):
    """Check both meta pages and the file length of the LMDB at ``path``; DataError if wrong.

    Returns the newest meta page (the one liblmdb reads) as a dict.
    """
    name = data_file(path)
    try:
        size = os.path.getsize(name)
        with open(name, "rb") as f:
            first = _meta(f, 0, name, 0)
            psize = first["psize"]
            if psize < 256 or psize > 65536 or psize & (psize - 1):
                raise DataError("LMDB file %s: meta page 0 gives an impossible page size %d; the file "
                                "is damaged" % (name, psize))
            second = _meta(f, psize, name, 1)
    except OSError as e:
        raise DataError("LMDB file %s cannot be read: %s" % (name, e.strerror or e)) from None
    meta = max(first, second, key=lambda m: m["txnid"])
    last = meta["last_pg"]
    if last < 1 or last >= P_INVALID // psize:
        raise DataError("LMDB file %s: its meta page gives an impossible last page %d; the file is "
                        "damaged" % (name, last))
    need = (last + 1) * psize
    if size < need:
        raise DataError("LMDB file %s is truncated: its meta page says %d pages of %d bytes (%d bytes) "
                        "but the file holds %d bytes; it is a partial copy, copy or convert it again"
                        % (name, last + 1, psize, need, size))
    for what in ("main_root", "free_root"):
        root = meta[what]
        if root != P_INVALID and not 2 <= root <= last:
            raise DataError("LMDB file %s is corrupted: its meta page points to page %d, outside the "
                            "file's pages 2..%d" % (name, root, last))
    if meta["main_root"] == P_INVALID and meta["main_entries"]:
        raise DataError("LMDB file %s is corrupted: its meta page counts %d records but no tree"
                        % (name, meta["main_entries"]))
    return meta


# -- the walk in a child process -----------------------------------------------------

_WALK = r"""
import sys
sys.path.insert(0, sys.argv[3])
import lmdb
try:
    env = lmdb.open(sys.argv[1], subdir=sys.argv[2] == "1", readonly=True, lock=False,
                    readahead=False, max_dbs=0)
    entries = env.stat()["entries"]
    n = 0
    with env.begin(buffers=False) as txn:
        probe = txn.cursor()
        for key, value in txn.cursor():
            n += 1
            if n > entries:
                print("it holds more records than the %d its meta page counts" % entries)
                sys.exit(3)
            if not probe.set_key(key):
                print("record %r cannot be found again by its key" % key[:64])
                sys.exit(3)
    if n != entries:
        print("a walk finds %d records but its meta page counts %d" % (n, entries))
        sys.exit(3)
except lmdb.Error as e:
    print("liblmdb: %s" % e)
    sys.exit(3)
"""


def _cache_file():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "caffe-toolkit", "lmdb_verified.json")


def _identity(name):
    st = os.stat(name)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _load_cache():
    try:
        with open(_cache_file()) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(cache):
    """Best effort: an unwritable cache only means walking again next time."""
    name = _cache_file()
    try:
        os.makedirs(os.path.dirname(name), exist_ok=True)
        live = {k: v for k, v in cache.items() if os.path.exists(k)}
        keep = dict(sorted(live.items(), key=lambda kv: kv[1][1] if isinstance(kv[1], list) and
                           len(kv[1]) == 3 else 0)[-256:])
        fd, tmp = tempfile.mkstemp(prefix=".lmdb_verified.", dir=os.path.dirname(name))
        with os.fdopen(fd, "w") as f:
            json.dump(keep, f)
        os.replace(tmp, name)
    except OSError:
        pass


def remember_sound(path):
    """Record the LMDB at ``path`` (just written by this toolkit) as verified."""
    name = os.path.realpath(data_file(path))
    try:
        ident = _identity(name)
    except OSError:
        return
    with _lock:
        _verified[name] = ident
        cache = _load_cache()
        cache[name] = ident
        _save_cache(cache)


def _walk(path, name):
    import lmdb
    lmdb_dir = os.path.dirname(os.path.dirname(os.path.abspath(lmdb.__file__)))
    if not sys.executable:
        log.warning("cannot check LMDB %s in a child process (no Python executable known); "
                    "reading it unchecked", name)
        return
    size = os.path.getsize(name)
    start = time.time()
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _WALK, path, "1" if os.path.isdir(path) else "0",
                               lmdb_dir], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=120 + size / 10e6)
    except subprocess.TimeoutExpired:
        raise DataError("LMDB file %s: reading every record once took too long; the database is "
                        "probably corrupted (a loop in its tree). Set CAFFE_LMDB_VERIFY=0 to skip "
                        "the check if you trust it" % name) from None
    except OSError as e:
        log.warning("cannot check LMDB %s in a child process (%s); reading it unchecked", name, e)
        return
    if done.returncode == 0:
        if time.time() - start > 2:
            log.info("Checked LMDB %s in %.1f s (once; the verdict is cached)", name, time.time() - start)
        return
    detail = (done.stdout.strip() or done.stderr.strip()).splitlines()
    detail = detail[-1] if detail else ""
    if done.returncode < 0:
        try:
            sig = signal.Signals(-done.returncode).name
        except ValueError:
            sig = "signal %d" % -done.returncode
        raise DataError("LMDB file %s is corrupted: reading its records makes liblmdb crash (%s%s), "
                        "so it is not read; copy or convert the database again"
                        % (name, sig, ": " + detail if detail else ""))
    if done.returncode == 3:
        raise DataError("LMDB file %s is corrupted: %s; copy or convert the database again" % (name, detail))
    log.warning("could not check LMDB %s (the checking process exited with status %d: %s); "
                "reading it unchecked", name, done.returncode, detail)


def verify(path):
    """Raise DataError unless the LMDB at ``path`` is sound enough for liblmdb to read it.

    The meta-page checks run every time; the child-process walk once per
    version of the file.
    """
    check_meta(path)
    if os.environ.get("CAFFE_LMDB_VERIFY", "1") in ("0", "no", "off", "false"):
        return
    name = os.path.realpath(data_file(path))
    ident = _identity(name)
    with _lock:
        if _verified.get(name) == ident:
            return
        cache = _load_cache()
        if cache.get(name) == ident:
            _verified[name] = ident
            return
    _walk(path, name)
    with _lock:
        _verified[name] = ident
        cache = _load_cache()
        cache[name] = ident
        _save_cache(cache)
