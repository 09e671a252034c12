"""Atomic files: write beside the target under a temporary name, then rename over it.

Every file the toolkit writes (nets, weights, snapshots, side files, means,
logs' CSVs) goes through here, so that a reader only ever sees the old file or
the new one, never half of it, and every new file gets the same permissions
(0666 less the umask, as ``open`` would give; an existing file keeps its own).

Temporaries carry their owner in their name, ``.<target>.tmp-<host>-<pid>-<random>``,
so that the next run can tell its own leftovers from a killed run
(``remove_stale_temporaries``) without touching anything else.

For the kill tests, ``CAFFE_KILL_AT_WRITE_STEP=N`` makes the process SIGKILL
itself at the N-th write step (temporary created, data written, renamed), and
``CAFFE_TRACE_WRITE_STEPS=1`` prints each step to stderr, so that a test can
stop a run at every interesting instant, deterministically.
"""
import ctypes
import errno
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile

log = logging.getLogger("caffe")

KILL_ENV = "CAFFE_KILL_AT_WRITE_STEP"
TRACE_ENV = "CAFFE_TRACE_WRITE_STEPS"
_steps = [0]

# .<target>.<kind>-<host>-<pid>-<random>: kind "tmp" is a file or database being written,
# "old" a database moved aside while a new one replaces it.
_OWNED = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-"
                    r"[A-Za-z0-9_]+$")


def write_step(what):
    """Mark one step of a write; the kill-test hook acts here (a no-op otherwise)."""
    kill_at = os.environ.get(KILL_ENV)
    trace = os.environ.get(TRACE_ENV)
    if not kill_at and not trace:
        return
    _steps[0] += 1
    if trace:
        sys.stderr.write("write step %d: %s\n" % (_steps[0], what))
        sys.stderr.flush()
    if kill_at and _steps[0] == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)


def _host():
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def temp_prefix(target_basename, kind="tmp"):
    """The start of a temporary's name for ``target_basename``; mkstemp/mkdtemp add the random part."""
    return ".%s.%s-%s-%d-" % (target_basename, kind, _host(), os.getpid())


def final_mode(path):
    """Keep an existing file's permissions; a new file gets the usual 0666 & ~umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def current_umask():
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def fsync_directory(directory):
    """Make a rename durable; not every platform allows it, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` when ``commit()`` is called.

    Fill ``self.tmp`` (a path: h5py and friends want a name), then commit;
    leaving the ``with`` block without committing removes the temporary.
    Splitting the two lets a caller finish several files before the first
    rename (a snapshot's state and its side file). Errors are OSError.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.directory = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp = tempfile.mkstemp(dir=self.directory, prefix=temp_prefix(os.path.basename(self.path)))
        os.close(fd)
        write_step("created %s" % self.tmp)

    def write(self, payload):
        with open(self.tmp, "wb") as f:
            f.write(payload)

    def commit(self):
        """fsync the temporary, give it the final mode and rename it over ``path``."""
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        write_step("written %s" % self.tmp)
        os.chmod(self.tmp, final_mode(self.path))
        os.replace(self.tmp, self.path)
        self.tmp = None
        write_step("renamed to %s" % self.path)
        fsync_directory(self.directory)

    def discard(self):
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()
        return False


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a, b):
    """Swap what ``a`` and ``b`` name in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    Unlike rename, this replaces a directory by another, so a reader sees the
    old database or the new one at every instant. Returns False where the
    system or file system cannot (the caller falls back); other failures are OSError.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:        # e.g. EPERM: it exists, run by someone else
        return True
    return True


def remove_stale_temporaries(directory, target=None):
    """Delete temporaries a killed run of this toolkit left in ``directory``; return what was done.

    Only names of our own pattern whose owner ran on this host and is no
    longer running; ``target`` (a predicate on the target's base name) narrows
    it further. A database moved aside (``old``) while its replacement was
    being renamed in is put back when nothing took its place, else removed.
    Each action is logged.
    """
    directory = os.fspath(directory) or "."
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    done = []
    host = _host()
    for name in sorted(names):
        m = _OWNED.match(name)
        if m is None or m.group("host") != host or (target is not None and not target(m.group("target"))):
            continue
        pid = int(m.group("pid"))
        if _pid_alive(pid):
            continue
        path = os.path.join(directory, name)
        final = os.path.join(directory, m.group("target"))
        try:
            if m.group("kind") == "old" and not os.path.lexists(final):
                moved = os.path.join(path, "db") if os.path.isdir(os.path.join(path, "db")) else path
                os.rename(moved, final)
                if moved != path:
                    shutil.rmtree(path, ignore_errors=True)
                log.warning("Restored %s from %s, which an interrupted --overwrite run (process %d) "
                            "had moved aside", final, name, pid)
                done.append(("restored", final))
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as e:
            log.warning("Cannot remove stale temporary %s: %s", path, e.strerror or e)
            continue
        log.warning("Removed stale temporary %s (left by process %d, which is no longer running)", path, pid)
        done.append(("removed", path))
    return done
