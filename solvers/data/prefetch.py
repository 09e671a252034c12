"""Background prefetching of batches (Caffe's BasePrefetchingDataLayer).

A ``BatchSource`` produces one batch at a time and can report and restore its
position (``get_state``/``set_state``). ``Prefetcher`` runs it in a daemon
thread, ``depth`` batches ahead, and remembers the position *after the last
batch handed out*, which is what a snapshot must save: the batches already
read ahead are simply read again after a resume.

Errors raised while reading (a corrupt record, say) are passed through the
queue and raised in the thread that asked for the batch.

Closing is bounded: the thread checks a stop flag between batches, and
``close`` waits for it at most ``CLOSE_TIMEOUT`` seconds; a thread still busy
with a batch then closes the source itself when it ends (never under its feet).
"""
import logging
import queue
import threading

log = logging.getLogger("caffe")
CLOSE_TIMEOUT = 10.0


class BatchSource:
    """Interface: ``next_batch()`` -> tuple of numpy arrays; state is JSON-able."""

    def next_batch(self):
        raise NotImplementedError

    def get_state(self):
        raise NotImplementedError

    def set_state(self, state):
        raise NotImplementedError

    def close(self):
        pass


class _Failure:
    def __init__(self, exc):
        self.exc = exc


class Prefetcher:
    """Hands out a source's batches, reading ``depth`` ahead in a thread (0: no thread)."""

    def __init__(self, source, depth, name="prefetch"):
        self.source = source
        self.depth = int(depth)
        self.name = name
        self.state = source.get_state()
        self._thread = None
        self._queue = None
        self._stop = None
        self._lock = threading.Lock()
        self._running = False       # a thread is using the source
        self._close_at_exit = False  # close timed out: the thread closes the source when it ends
        self.start()

    def start(self):
        if self.depth <= 0 or self._thread is not None:
            return
        self._queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._queue, self._stop),
                                        name=self.name, daemon=True)
        self._running = True
        self._thread.start()

    def _run(self, q, stop):
        try:
            while not stop.is_set():
                try:
                    item = (self.source.next_batch(), self.source.get_state())
                except BaseException as e:  # handed to the consumer, which raises it
                    item = _Failure(e)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if isinstance(item, _Failure):
                    return
        finally:
            with self._lock:
                self._running = False
                close = self._close_at_exit
            if close:
                self.source.close()

    def stop(self, timeout=None):
        """Stop the thread; batches read ahead are dropped (the state does not count them).

        Returns False if the thread was still busy after ``timeout`` seconds.
        """
        if self._thread is None:
            return True
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._thread = None
        self._queue = None
        return True

    def next(self):
        if self.depth <= 0:
            batch = self.source.next_batch()
            self.state = self.source.get_state()
            return batch
        if self._thread is None:
            self.start()
        item = self._queue.get()
        if isinstance(item, _Failure):
            self._thread.join()
            self._thread = None
            # put the source back where the consumer is, so a retry re-reads the same records
            self.source.set_state(self.state)
            raise item.exc
        batch, self.state = item
        return batch

    def get_state(self):
        return self.state

    def set_state(self, state):
        self.stop()
        self.source.set_state(state)
        self.state = self.source.get_state()
        self.start()

    def close(self):
        if not self.stop(CLOSE_TIMEOUT):
            with self._lock:
                if self._running:
                    self._close_at_exit = True
                    log.warning("%s: the prefetch thread is still reading a batch after %g s; it "
                                "stops (and closes its database) when that batch is done",
                                self.name, CLOSE_TIMEOUT)
                    return
        self.source.close()
