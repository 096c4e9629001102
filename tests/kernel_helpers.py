"""Helpers for kernel tests: leftovers in the kernel, fds, pinned workloads, the bench
producer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ebcap.bpf import _sys
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.bpf.programs.bench import BENCH_STATS, build_bench_program

TEST_PROGRAM_PREFIX = "ebcap_t_"
"""Unit tests name the programs they load themselves so: never a recorder's."""


def ebcap_programs() -> set[tuple[int, str]]:
    """(id, name) of loaded BPF programs whose name says ebcap made them (not a unit test:
    those running at the same time must not count as a recorder's leftovers)."""
    from ebcap.bpf.prog import loaded_program_ids, program_name_by_id
    from ebcap.errors import BpfObjectNotFoundError

    found = set()
    for prog_id in loaded_program_ids():
        try:
            name = program_name_by_id(prog_id)
        except BpfObjectNotFoundError:  # unloaded while we looked
            continue
        if name.startswith("ebcap") and not name.startswith(TEST_PROGRAM_PREFIX):
            found.add((prog_id, name))
    return found


def ebcap_programs_left(before: set[tuple[int, str]], timeout: float = 5.0) -> set[tuple[int, str]]:
    """ebcap programs loaded now that were not loaded ``before`` (empty when all went).

    The kernel frees a program after an RCU grace period once its last fd is
    closed, so its id can stay visible for a few milliseconds: poll a little.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = ebcap_programs() - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def run_in_thread(work: Callable[[], None]) -> None:
    """Run ``work`` in a thread of its own and wait; its exception is raised here."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            work()
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def run_pinned(cpu: int, work: Callable[[], None]) -> int:
    """Run ``work`` in a thread pinned to ``cpu``; return that thread's tid."""
    tid: list[int] = []

    def pinned() -> None:
        os.sched_setaffinity(0, {cpu})
        tid.append(threading.get_native_id())
        work()

    run_in_thread(pinned)
    return tid[0]


@contextmanager
def bench_program(
    transport: str, size: int, events: Map, name: str
) -> Iterator[tuple[Program, Map]]:
    """ebcap's bench producer over ``events``, with its per-CPU stats map."""
    with (
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, BENCH_STATS.itemsize, 1) as stats,
        Program.load(
            _sys.BPF_PROG_TYPE_SOCKET_FILTER,
            build_bench_program(transport, size, events.fd, stats.fd),
            name=name,
        ) as program,
    ):
        yield program, stats
