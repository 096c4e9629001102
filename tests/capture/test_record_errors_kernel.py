"""Recording that fails or is interrupted gives back every fd and every program, and
says where the rows it had flushed are.

Each path runs in this process with both transports; /proc/self/fd and the
kernel's list of ebcap programs must be as they were before. The syscalls
source records this process's own syscalls (the recording loop makes plenty).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left, open_fds

from ebcap.capture.recorder import Progress, Recorder, RecordOptions
from ebcap.capture.sources import KernelSide, SyscallsSource
from ebcap.errors import CaptureError, KernelError
from ebcap.format.reader import CaptureReader
from ebcap.format.recovery import recover
from ebcap.format.writer import partial_path

pytestmark = pytest.mark.privileged

TRANSPORTS = ["perf", "ringbuf"]


class FailingStart(SyscallsSource):
    """Creates its maps and loads its program, then fails as an attach would."""

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        super().start(transport, buffer_bytes, stack)
        raise KernelError("attaching failed (test)")


def recorder(path: Path, transport: str, source: SyscallsSource | None = None) -> Recorder:
    options = RecordOptions(
        output=path, transport=transport, buffer_bytes=1 << 20, flush_interval_s=0.05
    )
    return Recorder(source or SyscallsSource(pid=os.getpid(), exclude_pid=0), options)


def after(seconds: float, then: Callable[[], None]) -> Callable[[], bool]:
    """A should_stop that calls ``then`` once ``seconds`` have passed (else keeps going)."""
    deadline = time.monotonic() + seconds

    def should_stop() -> bool:
        if time.monotonic() >= deadline:
            then()
        return False

    return should_stop


def raise_interrupt() -> None:
    raise KeyboardInterrupt


def run_failing(path: Path, transport: str, failure: str) -> BaseException:
    """Record into ``path`` until ``failure`` happens; returns what was raised."""
    if failure == "source start":
        rec = recorder(path, transport, FailingStart(pid=os.getpid(), exclude_pid=0))
        run: Callable[[], object] = rec.run
    elif failure == "on_started":
        rec = recorder(path, transport)

        def started() -> None:
            raise RuntimeError("the producer did not start (test)")

        run = lambda: rec.run(on_started=started)  # noqa: E731
    elif failure == "interrupted mid-loop":
        rec = recorder(path, transport)
        run = lambda: rec.run(should_stop=after(0.6, raise_interrupt))  # noqa: E731
    else:  # an error in the middle of the loop, after rows were flushed
        rec = recorder(path, transport)
        seen: list[Progress] = []

        def progress(p: Progress) -> None:
            seen.append(p)
            if len(seen) == 2:
                raise CaptureError("ring positions out of step (test)")

        run = lambda: rec.run(on_progress=progress)  # noqa: E731
    with pytest.raises(BaseException) as caught:
        run()
    return caught.value


FAILURES = ["source start", "on_started", "interrupted mid-loop", "error mid-loop"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_failure_gives_back_every_fd_and_program(tmp_path: Path, transport: str) -> None:
    run_failing(tmp_path / "warm.arrow", transport, "error mid-loop")  # lazy imports, pools
    fds, programs = open_fds(), ebcap_programs()
    for failure in FAILURES:
        raised = run_failing(tmp_path / f"{failure}.arrow", transport, failure)
        assert not isinstance(raised, AssertionError), raised
        assert open_fds() == fds, f"{failure}: fds left open"
        assert ebcap_programs_left(programs) == set(), f"{failure}: program left loaded"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("failure", FAILURES)
def test_what_each_failure_leaves_and_says(tmp_path: Path, transport: str, failure: str) -> None:
    out = tmp_path / "run.arrow"
    raised = run_failing(out, transport, failure)
    partial = partial_path(out)
    assert not out.exists()
    if failure == "source start":
        assert isinstance(raised, KernelError) and str(raised) == "attaching failed (test)"
        assert not partial.exists(), "nothing was recorded: no file may stay"
        return
    if failure == "on_started":
        assert isinstance(raised, RuntimeError) and not partial.exists()
        return
    assert partial.exists(), "the flushed rows must stay recoverable"
    if failure == "interrupted mid-loop":
        assert isinstance(raised, KeyboardInterrupt)  # the command says where the data is
    else:
        assert isinstance(raised, CaptureError)
        message = str(raised)
        assert message.startswith("ring positions out of step (test); the ")
        assert f"are in {partial} (`ebcap recover {partial} -o FIXED`" in message
        assert "\n" not in message
    fixed = tmp_path / "fixed.arrow"
    report = recover(partial, fixed)
    assert report.rows_saved > 0
    with CaptureReader(fixed) as reader:
        assert reader.num_rows == report.rows_saved
    if failure == "error mid-loop":
        assert f"the {report.rows_saved:,} rows flushed before" in str(raised)
