"""The readers hand ring positions to the kernel whole, and tiny rings overflowing
for seconds stay in step.

The kernel reads a perf ring's ``data_tail`` (and a ring buffer's
``consumer_pos``) at every write, while the reader stores it. A store that
passes through 0 (``struct.pack_into`` zeroes its destination first) made a
full one-page perf ring look free to the kernel, which then wrote a second
lap over unread records: "ring positions out of step: 8080 bytes ... in a
4096-byte ring". Here a second process watches the word the kernel reads,
through its own mapping of the same ring, while the reader drains.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import time
from collections.abc import Callable

import numpy as np
import pytest
from kernel_helpers import bench_program, run_pinned

from ebcap.bpf import _sys
from ebcap.bpf.cpus import online_cpus, possible_cpus
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.bpf.programs.bench import BENCH_STATS, bench_event_dtype
from ebcap.capture.batch import EventBatch
from ebcap.capture.perf_reader import PerfBufferReader
from ebcap.capture.ringbuf_reader import RingBufReader
from ebcap.format.schema import KIND_SAMPLE_CODE

pytestmark = pytest.mark.privileged

PAGE = mmap.PAGESIZE
SIZE = 16  # the smallest bench event (ts, cpu, seq): the most records per page
CPUS = online_cpus()
TEST_RUN_INPUT = bytes(64)
WATCH_S = 2.0
_U64 = struct.Struct("<Q")


def perf_event_fds() -> set[int]:
    """This process's perf event fds."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[perf_event]":
                found.add(int(name))
        except OSError:  # the fd of the listing itself, closed by now
            continue
    return found


def watch_position(open_view: Callable[[], tuple[mmap.mmap, int]], seconds: float) -> int:
    """Fork a process that maps the ring itself and reads the position word for ``seconds``.

    Returns the pid; the child exits with 0 if every value it saw was non-zero and
    never went back, 1 otherwise, 2 if it saw fewer than 100,000 values.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.sched_setaffinity(0, {CPUS[-1]})  # the drain runs on CPUS[0]
        area, offset = open_view()
        cell = np.frombuffer(area, np.uint64, count=1, offset=offset)
        previous, seen, bad = 0, 0, 0
        while cell[0] == 0:  # the first store has not happened yet
            pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(10_000):
                value = int(cell[0])
                bad += value == 0 or value < previous
                previous = value
            seen += 10_000
        code = 0 if not bad else 1
        code = 2 if seen < 100_000 else code
    finally:
        os._exit(code)


def drain_while_producing(read: Callable[[], EventBatch], program: Program, seconds: float) -> int:
    """Produce a few events and drain them, again and again; returns the drains that moved."""
    moved = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        program.test_run(TEST_RUN_INPUT, repeat=4)
        moved += len(read()) > 0
    return moved


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_the_kernel_never_sees_a_half_stored_consumer_position(transport: str) -> None:
    cpu = CPUS[0]
    if transport == "perf":
        events = Map.create(_sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, len(possible_cpus()))
    else:
        events = Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, PAGE)
    with events, bench_program(transport, SIZE, events, "ebcap_t_pos") as (program, _):
        reader: PerfBufferReader | RingBufReader
        if transport == "perf":
            before = perf_event_fds()
            reader = PerfBufferReader(events, [cpu], pages_per_cpu=1, wakeup_events=1)
            fd = min(perf_event_fds() - before)  # the event (its mmap holds a dup too)

            def view() -> tuple[mmap.mmap, int]:
                area = mmap.mmap(fd, 2 * PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
                return area, _sys.DATA_TAIL_OFFSET
        else:
            reader = RingBufReader(events)

            def view() -> tuple[mmap.mmap, int]:
                return mmap.mmap(events.fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ), 0

        with reader:
            watcher = watch_position(view, WATCH_S)
            moved = 0

            def drain() -> None:
                nonlocal moved
                moved = drain_while_producing(reader.read, program, WATCH_S + 0.5)

            run_pinned(cpu, drain)
            _, status = os.waitpid(watcher, 0)
    assert moved > 2_000, "too few stores to show anything"
    assert os.waitstatus_to_exitcode(status) != 2, "the watcher saw too few values"
    assert os.waitstatus_to_exitcode(status) == 0, "the position was seen at 0 or going back"


def test_one_page_perf_rings_overflowing_for_seconds_stay_in_step() -> None:
    """A producer process at full speed on every CPU into one-page rings: the reader
    never meets head more than a ring ahead of its tail, and every event it
    takes is whole; what it misses the program counted as drops."""
    seconds = 3.0
    with (
        Map.create(_sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, len(possible_cpus())) as events,
        bench_program("perf", SIZE, events, "ebcap_t_pos") as (program, stats),
        PerfBufferReader(events, CPUS, pages_per_cpu=1, payload_size=SIZE) as reader,
    ):
        producers = []
        for cpu in CPUS:
            pid = os.fork()
            if pid == 0:
                try:
                    os.sched_setaffinity(0, {cpu})
                    while True:
                        program.test_run(TEST_RUN_INPUT, repeat=64)
                finally:
                    os._exit(0)
            producers.append(pid)
        batches = []
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                batches.append(reader.read())
        finally:
            for pid in producers:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        batches.append(reader.read())
        counters = [np.frombuffer(v, BENCH_STATS)[0] for v in stats.lookup_percpu(bytes(4))]
    batch = EventBatch.concat(batches)
    samples = batch.take(np.flatnonzero(batch.kind == KIND_SAMPLE_CODE))
    payloads = samples.fixed_payloads(SIZE)
    assert payloads is not None
    got = np.ascontiguousarray(payloads).view(bench_event_dtype(SIZE)).reshape(-1)
    np.testing.assert_array_equal(samples.cpu, got["cpu"])
    for cpu in CPUS:
        seq = got["seq"][got["cpu"] == cpu].astype(np.int64)
        invocations, drops = int(counters[cpu]["invocations"]), int(counters[cpu]["drops"])
        assert len(seq) > 1000, f"CPU {cpu}: the producer hardly ran"
        assert (np.diff(seq) > 0).all(), f"CPU {cpu}: events overwritten or out of order"
        assert len(seq) + drops == invocations, f"CPU {cpu}: events neither read nor dropped"
        reported = int(batch.lost[(batch.kind != KIND_SAMPLE_CODE) & (batch.cpu == cpu)].sum())
        assert 0 < reported <= drops
