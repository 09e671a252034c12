"""A one-line progress display for the converters, shown only on a terminal.

Logs and CI output stay clean: when stderr is not a tty nothing is printed
until the final summary line.
"""
import sys
import time


class Progress:
    def __init__(self, total, what="records", stream=None, enabled=None):
        self.total = int(total)
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.time()
        self._last = 0.0

    def update(self, done):
        if not self.enabled:
            return
        now = time.time()
        if now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        pct = 100.0 * done / self.total if self.total else 100.0
        self.stream.write("\r%d/%d %s (%.0f%%)" % (done, self.total, self.what, pct))
        self.stream.flush()

    def done(self, message=None):
        if self.enabled:
            self.stream.write("\r")
        if message:
            self.stream.write(message + "\n")
            self.stream.flush()
