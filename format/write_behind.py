"""Encoding and writing record batches on a thread of their own.

Compressing and checksumming a batch of 65,536 events takes tens of
milliseconds. Done on the thread that drains the kernel's rings, that is tens
of milliseconds in which nobody frees ring space, and a fast producer fills a
16 MiB ring of 256-byte events in a few. On a worker thread the drain goes on
meanwhile: Arrow's compression and IPC write, its concatenation and the
CRC-32 all release the GIL. It is one thread, compressing column after column
itself: with Arrow's pool, one more thread per core would compete with the
drain for its CPU (measured: drains held up for 8-14 ms, and the perf ring of
a 2 M events/s producer overflowing).

The queue is bounded: when the worker falls behind for good, the caller
blocks (and the kernel counts the events it cannot take as lost) rather than
buffering without bound, and a crash loses at most what is queued. Two jobs
are always let in; more while the bytes waiting stay within ``max_bytes``:
the first few hundred milliseconds of a recording, while the worker's
memory is first faulted in, compress slower than the rings fill, and a
queue two batches deep then held the drain back long enough for a perf ring
of 256-byte events at 2 M events/s to overflow (1 run in 4).

Cancelling (the writer's abort) drops the queued jobs and waits a moment at
most for the one being run: at a high zstd level one batch compresses for
seconds, and a second Ctrl-C must not wait for it. A job that outlives the
wait finishes on its own and then runs the caller's clean-up (closing the
file) itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Final

Job = Callable[[], None]

DEFAULT_DEPTH: Final = 2
"""Jobs always let wait besides the one being written, whatever their size."""

_STOP: Final = None


class WriteBehind:
    """Runs jobs in submission order on one worker thread.

    The first exception a job raises is kept and raised to the caller by the
    next :meth:`submit` or :meth:`wait`; the jobs after it are skipped (the
    file they would write to is in an unknown state).
    """

    def __init__(self, name: str, depth: int = DEFAULT_DEPTH, max_bytes: int = 0) -> None:
        self._jobs: queue.Queue[tuple[Job, int] | None] = queue.Queue()
        self._depth = depth
        self._max_bytes = max_bytes
        self._room = threading.Condition()
        self._waiting_jobs = 0
        self._waiting_bytes = 0
        self._error: BaseException | None = None
        self._cancelled = False
        self._then: Job | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._work, name=name, daemon=True
        )
        self._thread.start()

    def submit(self, job: Job, nbytes: int = 0) -> None:
        """Queue ``job`` (holding ``nbytes`` of data); blocks while the queue is full.
        Raises an earlier job's error."""
        self._raise_error()
        if self._thread is None:
            raise RuntimeError("write-behind thread is stopped")
        with self._room:
            self._room.wait_for(lambda: self._fits(nbytes))
            self._waiting_jobs += 1
            self._waiting_bytes += nbytes
        self._jobs.put((job, nbytes))

    def _fits(self, nbytes: int) -> bool:
        if self._waiting_jobs < self._depth:
            return True
        return bool(self._max_bytes) and self._waiting_bytes + nbytes <= self._max_bytes

    def _taken(self, nbytes: int) -> None:
        """A job left the queue: room for the next one."""
        with self._room:
            self._waiting_jobs -= 1
            self._waiting_bytes -= nbytes
            self._room.notify_all()

    def wait(self) -> None:
        """Return once every submitted job has run; raises the first error one raised."""
        if self._thread is not None:
            self._jobs.join()
        self._raise_error()

    def stop(self) -> None:
        """Let the queued jobs finish, then end the thread. Errors are kept, not raised."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join()

    def cancel(self, wait_s: float | None = None, then: Job | None = None) -> bool:
        """Drop the queued jobs unrun and end the thread; a job already running finishes.

        Waits ``wait_s`` seconds at most (None: until the thread ends) for that
        job. ``then`` runs once, on the worker as it takes the stop after that
        job (here when there is no worker), so it never runs beside the job.
        True if the thread ended in time. Errors are kept, not raised.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            if then is not None:
                then()
            return True
        with self._lock:
            self._cancelled = True  # a job taken from the queue from now on is skipped
            self._then = then
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._taken(item[1])
            self._jobs.task_done()
        self._jobs.put(_STOP)
        thread.join(wait_s)
        if thread.is_alive():
            return False
        self._run_then()
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run_then(self) -> None:
        """Run the clean-up a cancel asked for, once, on whichever thread gets here first."""
        with self._lock:
            then, self._then = self._then, None
        if then is not None:
            then()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            try:
                if item is _STOP:
                    try:
                        self._run_then()
                    except BaseException as exc:  # kept; the thread ends all the same
                        self._error = self._error or exc
                    return
                job, nbytes = item
                self._taken(nbytes)
                if self._error is None and not self._cancelled:
                    job()
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._jobs.task_done()
