"""Keeping the recorder's threads on time: a real-time drain, as ``perf record -r``
can, a writer that yields to nothing else, and no long garbage collections.

The drain shares its CPU with the writer thread, which compresses batches for
tens of milliseconds at a time. Under the normal scheduler a drain that wakes
waits for the writer's slice to end: 4-10 ms measured at the start of a
recording, longer than an 8 MiB perf ring of 256-byte events lasts at 2 M
events/s, and the kernel counts the rest as lost. Under SCHED_FIFO the drain
runs as soon as it wakes. It cannot starve the writer: it sleeps between
drains (see :mod:`ebcap.capture.pacing`) and blocks while the writer's queue
is full, and the kernel keeps 5 % of every CPU for normal tasks.

The writer, on a CPU it shares with a busy producer, got half of it and fell
behind. It runs at nice -20 instead, not at a real-time priority: a real-time
thread that computes without pause is set aside by the kernel for ~50 ms of
every second so that normal tasks run, and the rings fill meanwhile.

Python's cyclic garbage collector stops every thread while it runs; a full
collection over the objects of the libraries a recording imports took 50 ms
in the middle of one. They are collected once before the recording and then
frozen out of later collections (:func:`frozen_heap`).

Only the calling thread changes (Linux schedules threads, not processes),
and it gets its old policy back when the recording ends: an in-process
recording leaves its caller as it found it. Threads it starts meanwhile
would inherit the policy; the recorder starts none in its loop.
"""

from __future__ import annotations

import gc
import os
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from ebcap.bpf.caps import missing_capabilities, require_capabilities
from ebcap.errors import MissingCapabilityError, UsageError

DEFAULT_PRIORITY: Final = 1
"""Above every normal task and below any real-time task of the system's own."""

MAX_PRIORITY: Final = 99
"""sched_get_priority_max(SCHED_FIFO) on Linux."""

WRITER_NICE: Final = -20
"""The writer's nice value while the drain is real-time: the most a normal task gets."""

NORMAL: Final = "normal"
"""How a thread at the normal priority is described."""


def check_priority(priority: int) -> int:
    """``priority`` if it is one SCHED_FIFO takes (0 turns real time off)."""
    if not 0 <= priority <= MAX_PRIORITY:
        raise UsageError(
            f"--realtime must be 0 (off) or a SCHED_FIFO priority 1..{MAX_PRIORITY}, not {priority}"
        )
    return priority


def may_use(priority: int) -> bool:
    """Whether this process may make a thread SCHED_FIFO at ``priority``: with
    CAP_SYS_NICE, or up to its RLIMIT_RTPRIO without it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    within_limit = soft == resource.RLIM_INFINITY or priority <= soft
    return within_limit or not missing_capabilities(["CAP_SYS_NICE"])


def resolve(priority: int | None, what: str = "recording") -> int:
    """The priority to drain at: ``None`` means the default where allowed, else 0.

    An explicit priority this process may not use is refused in one line
    naming CAP_SYS_NICE, before anything is made; so is one the kernel refuses
    although the process may use it (root in a cgroup without real-time budget),
    found by trying it on a thread of its own that then ends.
    """
    if priority is None:
        return DEFAULT_PRIORITY if may_use(DEFAULT_PRIORITY) else 0
    check_priority(priority)
    if priority and not may_use(priority):
        require_capabilities(what, {"CAP_SYS_NICE": _why(priority)})
    if priority and not _kernel_grants(priority):
        raise _refused(priority)
    return priority


def _kernel_grants(priority: int) -> bool:
    """Whether the kernel lets a thread of this process run SCHED_FIFO at ``priority``."""
    granted: list[bool] = []

    def attempt() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except PermissionError:
            granted.append(False)
        else:
            granted.append(True)

    probe = threading.Thread(target=attempt, name="ebcap-sched-probe")
    probe.start()
    probe.join()
    return granted == [True]


def _refused(priority: int) -> MissingCapabilityError:
    return MissingCapabilityError(
        f"--realtime {priority}: the kernel refused SCHED_FIFO (it needs CAP_SYS_NICE "
        "or RLIMIT_RTPRIO, and real-time budget in this cgroup); --realtime 0 needs none",
        capability="CAP_SYS_NICE",
    )


def _why(priority: int) -> str:
    limit = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
    return (
        f"--realtime {priority}, a SCHED_FIFO drain thread, above the RLIMIT_RTPRIO of {limit}; "
        "--realtime 0 needs none"
    )


def describe(priority: int) -> str:
    """How the summary names a drain at ``priority``."""
    return f"SCHED_FIFO {priority}" if priority else NORMAL


@contextmanager
def drain_priority(priority: int, required: bool = False) -> Iterator[str]:
    """Run the calling thread at SCHED_FIFO ``priority`` (0: as it is) until the
    block ends; yields what was used (:func:`describe`).

    The kernel may still refuse (a cgroup without real-time budget answers
    EPERM even to root): a ``required`` priority (one the user asked for) is
    then an error, the default one falls back to the normal priority.
    """
    if not priority:
        yield NORMAL
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        if required:
            raise _refused(priority) from None
        yield NORMAL
        return
    try:
        yield describe(priority)
    finally:
        os.sched_setscheduler(0, policy, param)


def boost_writer(priority: int) -> str:
    """Run the calling thread (the writer's) at :data:`WRITER_NICE` when the drain runs
    at ``priority`` (0: leave it); says what it got.

    A process allowed SCHED_FIFO only by RLIMIT_RTPRIO may lack the right to a
    lower nice value: the writer then stays as it is. The writer's thread ends
    with the recording, so nothing is restored.
    """
    if not priority:
        return NORMAL
    try:
        os.setpriority(os.PRIO_PROCESS, 0, WRITER_NICE)  # on Linux, this thread only
    except PermissionError:
        return NORMAL
    return f"nice {WRITER_NICE}"


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect once, then keep every object that exists now out of the collector's
    passes until the block ends: later collections walk only what the recording made.

    A caller that froze objects of its own (``gc.freeze`` does not nest) keeps its
    heap as it is: thawing at the end would thaw its objects too.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
