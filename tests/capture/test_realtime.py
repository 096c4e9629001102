"""The recorder's scheduling: the drain's real-time priority chosen, refused and
restored as documented, the writer's nice value and the frozen heap.

Policies are read with ``sched_getscheduler(0)``, which on Linux is the calling
thread's: each check runs on the thread that changed (or must not have
changed) its policy.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kernel_helpers import run_in_thread
from reliability.harness import is_one_line_error, run_cli

from ebcap.capture import realtime
from ebcap.capture.recorder import Progress, Recorder, RecordOptions
from ebcap.capture.sources import SyscallsSource
from ebcap.errors import MissingCapabilityError, UsageError


def on_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a new thread: its policy changes stay off the test runner's thread."""
    result: list[Any] = []
    run_in_thread(lambda: result.append(fn()))
    return result[0]


@pytest.mark.parametrize("bad", [-1, 100, 1000])
def test_priorities_outside_sched_fifo_are_usage_errors(bad: int) -> None:
    with pytest.raises(UsageError, match=r"--realtime must be 0 \(off\) or .* 1\.\.99"):
        realtime.check_priority(bad)
    with pytest.raises(UsageError):
        realtime.resolve(bad)


def test_off_needs_nothing_and_changes_nothing() -> None:
    assert realtime.resolve(0) == 0

    def inside() -> tuple[int, str]:
        with realtime.drain_priority(0) as used:
            return os.sched_getscheduler(0), used

    assert on_thread(inside) == (os.SCHED_OTHER, "normal")


@pytest.fixture
def without_cap_sys_nice(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a process without CAP_SYS_NICE whose RLIMIT_RTPRIO is 2."""
    monkeypatch.setattr(realtime, "missing_capabilities", lambda needed: list(needed))
    monkeypatch.setattr("ebcap.bpf.caps.effective_capabilities", lambda: 0)
    real = resource.getrlimit
    fake = {resource.RLIMIT_RTPRIO: (2, 2)}
    monkeypatch.setattr(realtime.resource, "getrlimit", lambda which: fake.get(which, real(which)))


def test_without_cap_sys_nice_the_default_falls_back_and_rlimit_rtprio_counts(
    without_cap_sys_nice: None,
) -> None:
    assert realtime.may_use(2) and not realtime.may_use(3)
    assert realtime.resolve(None) == realtime.DEFAULT_PRIORITY  # 1 <= RLIMIT_RTPRIO
    assert realtime.resolve(2) == 2
    with pytest.raises(MissingCapabilityError) as refused:
        realtime.resolve(3)
    assert refused.value.capability == "CAP_SYS_NICE"
    message = str(refused.value)
    assert message.startswith("recording needs CAP_SYS_NICE (CAP_SYS_NICE: --realtime 3, ")
    assert "RLIMIT_RTPRIO of 2" in message and "\n" not in message


def test_without_any_allowance_the_default_is_normal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realtime, "missing_capabilities", lambda needed: list(needed))
    monkeypatch.setattr("ebcap.bpf.caps.effective_capabilities", lambda: 0)
    monkeypatch.setattr(realtime.resource, "getrlimit", lambda which: (0, 0))
    assert realtime.resolve(None) == 0


@pytest.fixture
def no_realtime_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root in a cgroup without real-time budget: the kernel answers EPERM."""

    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(realtime.os, "sched_setscheduler", refuse)


def test_a_kernel_refusal_falls_back_unless_the_priority_was_asked_for(
    no_realtime_budget: None,
) -> None:
    with realtime.drain_priority(1) as used:
        assert used == "normal"
    refused = pytest.raises(MissingCapabilityError, match=r"^--realtime 4: the kernel refused")
    with refused, realtime.drain_priority(4, required=True):
        pass


def test_a_kernel_refusal_of_an_asked_priority_is_found_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_realtime_budget: None
) -> None:
    monkeypatch.setattr(realtime, "may_use", lambda _: True)  # allowed, as root is
    with pytest.raises(MissingCapabilityError, match=r"^--realtime 4: the kernel refused"):
        realtime.resolve(4)
    assert realtime.resolve(None) == realtime.DEFAULT_PRIORITY  # falls back in the drain

    def attached(*_: object) -> None:
        raise AssertionError("the source was started before the refusal")

    monkeypatch.setattr(SyscallsSource, "start", attached)
    options = RecordOptions(output=tmp_path / "run.arrow", duration_s=0.1, realtime=4)
    with pytest.raises(MissingCapabilityError, match=r"^--realtime 4: the kernel refused"):
        Recorder(SyscallsSource(pid=os.getpid()), options).run()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.privileged
def test_the_kernel_probe_leaves_the_calling_thread_as_it_was() -> None:
    def probe() -> tuple[int, int]:
        return realtime.resolve(5), os.sched_getscheduler(0)

    assert on_thread(probe) == (5, os.SCHED_OTHER)


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("argv", "code", "scheduling"), [([], 0, "normal"), (["--realtime", "1"], 1, None)]
)
def test_the_cli_falls_back_from_a_refused_default_but_not_from_an_asked_priority(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_realtime_budget: None,
    argv: list[str],
    code: int,
    scheduling: str | None,
) -> None:
    out = tmp_path / "run.arrow"
    argv = ["record", "-o", str(out), "--duration", "0.5", "--json", *argv]
    outcome = run_cli(capsys, [*argv, "--pid", str(os.getpid())])
    assert outcome.code == code, outcome.describe()
    if scheduling is None:
        assert is_one_line_error(outcome, code) and "--realtime 1" in outcome.err
        assert list(tmp_path.iterdir()) == [], "refused before anything was written"
    else:
        summary = json.loads(outcome.out)
        # A writer at nice -20 beside a drain that fell back to normal would starve it.
        assert (summary["drain_scheduling"], summary["writer_scheduling"]) == (scheduling, "normal")


@pytest.mark.privileged
def test_the_thread_runs_sched_fifo_inside_and_gets_its_policy_back() -> None:
    main_before = os.sched_getscheduler(0)

    def inside() -> tuple[int, int, int, str, int]:
        with realtime.drain_priority(7) as used:
            during = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
            main_during = main_policy[0]
        return *during, main_during, used, os.sched_getscheduler(0)

    main_policy = [os.sched_getscheduler(0)]
    assert on_thread(inside) == (os.SCHED_FIFO, 7, main_before, "SCHED_FIFO 7", os.SCHED_OTHER)
    assert os.sched_getscheduler(0) == main_before


@pytest.mark.privileged
def test_the_policy_comes_back_when_the_drain_fails() -> None:
    def failing() -> int:
        try:
            with realtime.drain_priority(realtime.DEFAULT_PRIORITY):
                raise RuntimeError("drain failed")
        except RuntimeError:
            return os.sched_getscheduler(0)

    assert on_thread(failing) == os.SCHED_OTHER


def test_the_writer_boost_is_off_with_the_drain_or_without_the_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert on_thread(lambda: (realtime.boost_writer(0), os.getpriority(os.PRIO_PROCESS, 0))) == (
        "normal",
        os.getpriority(os.PRIO_PROCESS, 0),
    )

    def refuse(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(realtime.os, "setpriority", refuse)
    assert realtime.boost_writer(1) == "normal"


@pytest.mark.privileged
def test_the_writer_boost_changes_only_its_own_thread() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    got = on_thread(lambda: (realtime.boost_writer(3), os.getpriority(os.PRIO_PROCESS, 0)))
    assert got == (f"nice {realtime.WRITER_NICE}", realtime.WRITER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_the_heap_is_frozen_inside_and_thawed_after() -> None:
    assert gc.get_freeze_count() == 0
    kept = [object() for _ in range(10)]  # container objects the collector tracks
    with realtime.frozen_heap():
        assert gc.get_freeze_count() >= len(kept)
    assert gc.get_freeze_count() == 0


def test_a_heap_the_caller_froze_stays_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with realtime.frozen_heap():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def _nice_of(thread: threading.Thread) -> int:
    """The nice value of ``thread`` (field 19 of its /proc stat line)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def _record(tmp_path: Path, priority: int | None) -> dict[str, Any]:
    """Record this process's syscalls for a second on a thread of its own: what the
    drain loop ran under (seen from its progress callback: its policy, the writer
    thread's nice value, whether the heap was frozen), the summary's words for it and
    the thread's policy once the recording returned."""
    seen: dict[str, set[Any]] = {"drain": set(), "writer nice": set(), "frozen": set()}
    source = SyscallsSource(pid=os.getpid(), exclude_pid=0)
    options = RecordOptions(
        output=tmp_path / f"rt-{priority}.arrow",
        transport="ringbuf",
        buffer_bytes=1 << 20,
        duration_s=1.2,
        realtime=priority,
    )

    def progress(_: Progress) -> None:
        seen["drain"].add(os.sched_getscheduler(0))
        writers = [t for t in threading.enumerate() if t.name.startswith("ebcap writer")]
        seen["writer nice"].update(_nice_of(t) for t in writers)
        seen["frozen"].add(gc.get_freeze_count() > 0)

    def run() -> dict[str, Any]:
        summary = Recorder(source, options).run(on_progress=progress)
        return {
            **seen,
            "summary": (summary.drain_scheduling, summary.writer_scheduling),
            "after": (os.sched_getscheduler(0), gc.get_freeze_count()),
        }

    return on_thread(run)


@pytest.mark.privileged
def test_a_recording_drains_at_the_default_priority_as_root(tmp_path: Path) -> None:
    assert _record(tmp_path, None) == {
        "drain": {os.SCHED_FIFO},
        "writer nice": {realtime.WRITER_NICE},
        "frozen": {True},
        "summary": ("SCHED_FIFO 1", f"nice {realtime.WRITER_NICE}"),
        "after": (os.SCHED_OTHER, 0),
    }


@pytest.mark.privileged
def test_realtime_zero_records_at_normal_priority(tmp_path: Path) -> None:
    nice = os.getpriority(os.PRIO_PROCESS, 0)  # what the writer thread inherits
    assert _record(tmp_path, 0) == {
        "drain": {os.SCHED_OTHER},
        "writer nice": {nice},
        "frozen": {True},
        "summary": ("normal", "normal"),
        "after": (os.SCHED_OTHER, 0),
    }
