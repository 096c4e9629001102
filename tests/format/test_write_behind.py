"""Writing on a worker thread: order kept, errors reach the caller, aborting is prompt."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from synthetic import WRITER_SCHEMA as SCHEMA
from synthetic import batches_on_disk
from synthetic import writer_rows as rows

from ebcap.errors import CaptureError
from ebcap.format import CaptureReader, CaptureWriter, recover
from ebcap.format.write_behind import WriteBehind
from ebcap.format.writer import partial_path


def test_jobs_run_in_submission_order() -> None:
    done: list[int] = []
    behind = WriteBehind("test")
    for i in range(200):
        behind.submit(lambda i=i: done.append(i))
    behind.wait()
    behind.stop()
    assert done == list(range(200))


def test_an_error_reaches_the_caller_and_later_jobs_are_skipped() -> None:
    done: list[int] = []
    behind = WriteBehind("test")

    def fail() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    behind.submit(lambda: done.append(1))
    behind.submit(fail)
    behind.submit(lambda: done.append(3))
    with pytest.raises(OSError, match="No space"):
        behind.wait()
    with pytest.raises(OSError, match="No space"):
        behind.submit(lambda: done.append(4))
    behind.stop()
    assert done == [1] and behind.failed


def held_back(submit: Callable[[], None], release: threading.Event) -> None:
    """``submit()`` waits (the queue is full) until ``release`` lets the running job end."""
    caller = threading.Thread(target=submit)
    caller.start()
    caller.join(timeout=0.3)
    assert caller.is_alive(), "submit returned although the queue was full"
    release.set()
    caller.join(timeout=10)
    assert not caller.is_alive()


def test_a_full_queue_holds_the_caller_back() -> None:
    """Bounded: a caller faster than the disk waits instead of buffering without limit."""
    release = threading.Event()
    behind = WriteBehind("test", depth=1)
    behind.submit(release.wait)  # being run
    behind.submit(lambda: None)  # fills the queue
    held_back(lambda: behind.submit(lambda: None), release)
    behind.wait()
    behind.stop()


def test_beyond_its_depth_the_queue_takes_jobs_while_their_bytes_fit() -> None:
    """Two jobs always wait; more as long as the bytes waiting stay within the budget."""
    release = threading.Event()
    done: list[int] = []
    behind = WriteBehind("test", depth=2, max_bytes=100)
    behind.submit(release.wait, nbytes=1000)  # being run: it holds no room
    wait_for(lambda: behind._jobs.qsize() == 0)
    behind.submit(lambda: done.append(1), nbytes=500)  # over the budget, within the depth
    behind.submit(lambda: done.append(2), nbytes=30)  # within the depth
    held_back(lambda: behind.submit(lambda: done.append(3), 30), release)
    behind.wait()
    small = WriteBehind("small", depth=1, max_bytes=100)
    held = threading.Event()
    small.submit(held.wait)
    wait_for(lambda: small._jobs.qsize() == 0)
    for i in (4, 5):  # the first by depth, then 40 + 40 bytes fit in 100
        small.submit(lambda i=i: done.append(i), nbytes=40)
    held_back(lambda: small.submit(lambda: done.append(6), 40), held)  # 120 > 100 bytes
    small.wait()
    behind.stop()
    small.stop()
    assert done == [1, 2, 3, 4, 5, 6]


def test_stop_finishes_queued_jobs_then_refuses_more() -> None:
    release = threading.Event()
    done: list[int] = []
    behind = WriteBehind("test")
    behind.submit(release.wait)
    behind.submit(lambda: done.append(1))
    threading.Timer(0.1, release.set).start()
    behind.stop()
    assert done == [1]
    with pytest.raises(RuntimeError, match="stopped"):
        behind.submit(lambda: None)
    behind.stop()  # again: nothing


class HeldWrites:
    """Wraps the IPC writer so each batch write waits until the test lets it go."""

    def __init__(self, ipc: Any, error: OSError | None = None) -> None:
        self._ipc = ipc
        self.error = error
        self.go = threading.Event()
        self.started = threading.Event()
        self.writes = 0

    def write_batch(self, batch: pa.RecordBatch, custom_metadata: Any = None) -> None:
        self.writes += 1
        self.started.set()
        self.go.wait()
        if self.error is not None:
            raise self.error
        self._ipc.write_batch(batch, custom_metadata=custom_metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ipc, name)


def test_flush_returns_while_the_worker_writes(tmp_path: Path) -> None:
    out = tmp_path / "run.arrow"
    writer = CaptureWriter(out, SCHEMA, flush_rows=100, background=True)
    held = HeldWrites(writer._ipc)
    writer._ipc = held
    writer.write(rows(0, 100))  # reaches flush_rows: handed over
    assert held.started.wait(10)
    assert writer.batches_written == 0, "the caller waited for the write"
    writer.write(rows(100, 50))  # the caller goes on meanwhile
    held.go.set()
    writer.close()
    with CaptureReader(out) as reader:
        table = reader.to_table()
    assert table["seq"].to_pylist() == list(range(150))
    assert table.to_pydict()["data"] == rows(0, 150)["data"]


@pytest.mark.parametrize("background", [True, False])
def test_on_worker_runs_a_job_on_the_writing_thread_and_returns_its_result(
    tmp_path: Path, background: bool
) -> None:
    with CaptureWriter(tmp_path / "run.arrow", SCHEMA, background=background) as writer:
        name = writer.on_worker(lambda: threading.current_thread().name)
    here = threading.current_thread().name
    assert (name != here) is background and name.startswith("ebcap writer") is background


def test_many_batches_arrive_whole_and_in_order(tmp_path: Path) -> None:
    out = tmp_path / "run.arrow"
    with CaptureWriter(out, SCHEMA, flush_rows=64, background=True) as writer:
        for start in range(0, 10_000, 37):
            writer.write(rows(start, min(37, 10_000 - start)))
    with CaptureReader(out) as reader:
        assert reader.num_batches >= 10_000 // 64
        table = reader.to_table()
    assert table["seq"].to_pylist() == list(range(10_000))
    assert table["pid"].to_pylist() == [s + 1000 for s in range(10_000)]


def test_a_failed_background_write_is_one_capture_error(tmp_path: Path) -> None:
    """Disk full on the worker: the caller's next call fails with the usual message, and
    the batches written before stay recoverable in .partial."""
    out = tmp_path / "run.arrow"
    writer = CaptureWriter(out, SCHEMA, flush_rows=100, background=True)
    writer.write(rows(0, 100))
    writer._behind.wait()  # type: ignore[union-attr]
    held = HeldWrites(writer._ipc, OSError(errno.ENOSPC, "No space left on device"))
    held.go.set()
    writer._ipc = held
    writer.write(rows(100, 100))
    with pytest.raises(CaptureError, match=r"disk full .* the 100 rows flushed before"):
        writer.close()
    assert not out.exists()
    assert batches_on_disk(partial_path(out)) == [100]


def wait_for(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds (a state another thread reaches), at most 10 s."""
    for _ in range(1000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("the condition never held")


def test_cancel_runs_no_queued_job_and_waits_for_the_running_one() -> None:
    release, running = threading.Event(), threading.Event()
    done: list[int] = []

    def slow() -> None:
        running.set()
        release.wait()
        done.append(0)

    behind = WriteBehind("test", depth=3)
    behind.submit(slow)
    for i in (1, 2, 3):
        behind.submit(lambda i=i: done.append(i))
    assert running.wait(10)
    cancelling = threading.Thread(target=behind.cancel)
    cancelling.start()
    wait_for(lambda: behind.cancelled)
    assert cancelling.is_alive(), "cancel returned before the running job ended"
    release.set()
    cancelling.join(timeout=10)
    assert not cancelling.is_alive()
    assert done == [0], "a queued job ran after cancel"
    with pytest.raises(RuntimeError, match="stopped"):
        behind.submit(lambda: None)
    behind.cancel()  # again: nothing


def test_a_failing_clean_up_after_cancel_still_ends_the_thread() -> None:
    """``then`` runs on the worker as it stops; if it raises, the thread ends anyway and
    the error is kept (it had left the worker waiting for jobs forever)."""
    behind = WriteBehind("test")
    behind.submit(lambda: None)
    ran_on: list[str] = []

    def clean_up() -> None:
        ran_on.append(threading.current_thread().name)
        raise OSError(13, "Permission denied")

    assert behind.cancel(wait_s=5, then=clean_up) is True
    assert ran_on == ["test"]
    assert behind.failed


def test_abort_drops_queued_batches_and_finishes_the_one_being_written(tmp_path: Path) -> None:
    """A second Ctrl-C during a slow finish: abort writes none of the queued batches
    (it used to compress and write them all first); the batch being written is
    finished, so .partial ends with whole batches that `recover` saves."""
    out = tmp_path / "run.arrow"
    writer = CaptureWriter(out, SCHEMA, flush_rows=100, background=True)
    held = HeldWrites(writer._ipc)
    writer._ipc = held
    writer.write(rows(0, 100))  # handed over: being written, held
    assert held.started.wait(10)
    writer.write(rows(100, 100))  # queued
    writer.write(rows(200, 100))  # queued: the queue is full now
    behind = writer._behind
    assert behind is not None
    aborting = threading.Thread(target=writer.abort)
    aborting.start()
    wait_for(lambda: behind.cancelled)
    held.go.set()
    aborting.join(timeout=10)
    assert not aborting.is_alive()
    assert held.writes == 1, "abort wrote queued batches"
    assert batches_on_disk(partial_path(out)) == [100]
    report = recover(partial_path(out), tmp_path / "fixed.arrow")
    assert report.rows_saved == 100
    with CaptureReader(tmp_path / "fixed.arrow") as reader:
        assert reader.to_table()["seq"].to_pylist() == list(range(100))
