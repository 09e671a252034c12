"""Caffe's log format, so tools written for Caffe logs read ours.

Caffe logs through glog: every line starts ``I1126 19:03:00.123456 12345
solver.cpp:218] `` (severity letter, month and day, time with microseconds,
thread id, source file and line). Caffe's ``parse_log.py`` and
``plot_training_log.py`` find the date in that prefix and the numbers in the
message ("Iteration 100 (...), loss = 0.3", "Test net output #0: ..."). The
library logs to the ``logging`` logger named "caffe"; whoever runs the show
(the CLI, a notebook) installs a handler with :class:`GlogFormatter`, e.g.
through :func:`install_handler`.
"""
import logging
import sys
import threading
import time

logger = logging.getLogger("caffe")

_SEVERITY = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
             logging.ERROR: "E", logging.CRITICAL: "F"}


def severity_letter(levelno):
    """glog's one-letter severity for a ``logging`` level."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _SEVERITY[level]
    return "I"


class GlogFormatter(logging.Formatter):
    """Formats records as glog does: ``I1126 19:03:00.123456 12345 file.py:218] message``."""

    def format(self, record):
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        thread_id = getattr(record, "thread_native_id", None) or threading.get_native_id()
        return "%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] %s" % (
            severity_letter(record.levelno), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
            micros, thread_id, record.filename, record.lineno, message)


class _NativeThreadId(logging.Filter):
    """Remember the OS thread id of the thread that logged (glog prints that, not Python's)."""

    def filter(self, record):
        record.thread_native_id = threading.get_native_id()
        return True


def install_handler(stream=None, level=logging.INFO, names=("caffe", "solvers")):
    """Send the named loggers to ``stream`` (stderr, as glog) in glog format; return the handler.

    Calling it again replaces the handler installed before, so lines are not doubled.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(GlogFormatter())
    handler.addFilter(_NativeThreadId())
    handler._caffe_glog = True
    for name in names:
        target = logging.getLogger(name)
        for old in [h for h in target.handlers if getattr(h, "_caffe_glog", False)]:
            target.removeHandler(old)
        target.addHandler(handler)
        target.setLevel(level)
        target.propagate = False
    return handler


class LogFileHandler(logging.FileHandler):
    """The ``--log`` file, in glog format, that cannot flood stderr with tracebacks.

    ``logging`` prints a traceback for every record a handler fails to write
    (hundreds on a full disk). Here the first failed write prints one warning
    naming the file and the reason, and the file is dropped; the log carries
    on to stderr through the other handler.
    """

    def __init__(self, filename):
        super().__init__(filename, mode="w", encoding="utf-8")
        self.failed = False

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):
        self._give_up(sys.exc_info()[1])

    def flush(self):
        if not self.failed:
            try:
                super().flush()
            except OSError as e:
                self._give_up(e)

    def close(self):
        try:
            super().close()
        except OSError as e:
            self._give_up(e)

    def _give_up(self, error):
        if self.failed:
            return
        self.failed = True
        reason = getattr(error, "strerror", None) or error
        record = logging.LogRecord("caffe", logging.WARNING, __file__, 0, "log file %s cannot be written "
                                   "(%s); the log carries on to stderr only", (self.baseFilename, reason), None)
        print(GlogFormatter().format(record), file=sys.stderr)
        stream, self.stream = self.stream, None
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
