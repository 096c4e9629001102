"""The built-in programs on the real kernel, read back through both transports.

The rings are read here in the plainest way (one pass from position 0, no
wrap-around, rings sized so none happens) to check the programs; the real
readers live in ebcap.capture and have their own tests.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from sources.rings import open_perf_ring

from ebcap.bpf import _sys
from ebcap.bpf.cpus import online_cpus, possible_cpus
from ebcap.bpf.links import attach_raw_tracepoint
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.bpf.programs.bench import (
    BENCH_STATS,
    PAD_MAGIC,
    STACK_EVENT_MAX,
    bench_event_dtype,
    build_bench_program,
    needs_scratch_map,
)
from ebcap.bpf.programs.common import DROPS_KEY_SIZE, DROPS_MAX_ENTRIES, DROPS_VALUE_SIZE
from ebcap.bpf.programs.syscalls import SYSCALL_EVENT, build_syscalls_program
from ebcap.errors import UsageError

pytestmark = pytest.mark.privileged

PAGE = mmap.PAGESIZE
NR_LSEEK, NR_GETPPID = 8, 110  # x86-64
CPU = online_cpus()[-1]


# --- minimal ring reading -----------------------------------------------------
def ringbuf_records(ring: Map) -> list[bytes]:
    """Committed records of a fresh BPF ring buffer (consumer position 0)."""
    size = ring.info.max_entries
    with mmap.mmap(ring.fd, PAGE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE) as area:
        producer = struct.unpack_from("<Q", area, 0)[0]
        assert producer <= size, "test ring wrapped"
        records, pos = [], 0
        while pos < producer:
            length, _ = struct.unpack_from("<II", area, PAGE + pos)
            assert not length & (_sys.BPF_RINGBUF_BUSY_BIT | _sys.BPF_RINGBUF_DISCARD_BIT)
            start = PAGE + pos + _sys.BPF_RINGBUF_HDR_SZ
            records.append(area[start : start + length])
            pos += (length + _sys.BPF_RINGBUF_HDR_SZ + 7) // 8 * 8
    return records


@contextmanager
def perf_rings(events: Map, pages: int = 32) -> Iterator[dict[int, mmap.mmap]]:
    """One BPF_OUTPUT perf ring per online CPU, plugged into ``events``."""
    with ExitStack() as stack:
        rings = {cpu: open_perf_ring(events, cpu, stack, pages) for cpu in online_cpus()}
        yield rings


def perf_samples(area: mmap.mmap) -> list[bytes]:
    """Raw payloads of the PERF_RECORD_SAMPLEs in a fresh perf ring (tail 0)."""
    head = struct.unpack_from("<Q", area, _sys.DATA_HEAD_OFFSET)[0]
    offset, size = struct.unpack_from("<QQ", area, _sys.DATA_OFFSET_OFFSET)
    assert head <= size, "test ring wrapped"
    samples, pos = [], 0
    while pos < head:
        kind, _misc, length = struct.unpack_from("<IHH", area, offset + pos)
        assert kind == _sys.PERF_RECORD_SAMPLE
        raw_size = struct.unpack_from("<I", area, offset + pos + _sys.PERF_EVENT_HEADER_SIZE)[0]
        start = offset + pos + _sys.PERF_EVENT_HEADER_SIZE + 4
        samples.append(area[start : start + raw_size])
        pos += length
    return samples


@contextmanager
def pinned_to(cpu: int) -> Iterator[None]:
    """Run this thread on ``cpu`` only: test runs and syscalls land in that CPU's ring."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def events_map(transport: str, ring_bytes: int = 1 << 20) -> Map:
    if transport == "ringbuf":
        return Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, ring_bytes, name="ebcap_t_rb")
    ncpus = len(possible_cpus())
    return Map.create(_sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, ncpus, name="ebcap_t_pb")


def percpu_u64(counters: Map, field: int = 0) -> list[int]:
    return [struct.unpack_from("<Q", v, 8 * field)[0] for v in counters.lookup_percpu(bytes(4))]


# --- syscalls --------------------------------------------------------------------
def run_syscalls(transport: str, n: int, **filters: int | bytes) -> tuple[np.ndarray, list[int]]:
    """Attach the sys_enter program, make ``n`` getppid() and lseek() calls; (events, drops)."""
    with (
        events_map(transport) as events,
        Map.create(
            _sys.BPF_MAP_TYPE_PERCPU_ARRAY, DROPS_KEY_SIZE, DROPS_VALUE_SIZE, DROPS_MAX_ENTRIES
        ) as drops,
        ExitStack() as stack,
    ):
        rings = stack.enter_context(perf_rings(events)) if transport == "perf" else {}
        program = build_syscalls_program(transport, events.fd, drops.fd, **filters)  # type: ignore[arg-type]
        with (
            Program.load(_sys.BPF_PROG_TYPE_RAW_TRACEPOINT, program, name="ebcap_t_sys") as prog,
            open(__file__, "rb") as probe,
            pinned_to(CPU),
        ):
            with attach_raw_tracepoint(prog, "sys_enter"):
                for i in range(n):
                    os.getppid()
                    os.lseek(probe.fileno(), 4096 + i, os.SEEK_SET)
            payloads = (
                ringbuf_records(events)
                if transport == "ringbuf"
                else [s for area in rings.values() for s in perf_samples(area)]
            )
        dropped = percpu_u64(drops)
    raw = b"".join(p[: SYSCALL_EVENT.itemsize] for p in payloads)
    assert all(len(p) >= SYSCALL_EVENT.itemsize for p in payloads)
    return np.frombuffer(raw, SYSCALL_EVENT), dropped


@pytest.mark.parametrize("transport", ["ringbuf", "perf"])
def test_syscalls_program_records_this_process(transport: str) -> None:
    n = 9
    t0 = time.monotonic_ns()
    events, drops = run_syscalls(transport, n, only_tgid=os.getpid())
    t1 = time.monotonic_ns()
    assert drops == [0] * len(possible_cpus())
    assert set(events["pid"]) == {os.getpid()}
    assert set(events["tid"]) == {threading.get_native_id()}
    assert set(events["cpu"]) == {CPU}
    comm = Path("/proc/thread-self/comm").read_text().strip().encode()
    assert set(events["comm"]) == {comm[:15]}
    assert np.all(np.diff(events["ts_ns"].astype(np.int64)) >= 0)
    assert np.all((events["ts_ns"] > t0) & (events["ts_ns"] < t1))
    assert np.count_nonzero(events["nr"] == NR_GETPPID) == n
    lseeks = events[events["nr"] == NR_LSEEK]
    assert len(lseeks) == n
    assert list(lseeks["args"][:, 1]) == [4096 + i for i in range(n)]  # offset
    assert set(lseeks["args"][:, 2]) == {os.SEEK_SET}  # whence
    assert len(set(lseeks["args"][:, 0])) == 1  # always the same fd


def test_syscalls_program_excludes_a_process_and_keeps_others() -> None:
    child_pids: list[int] = []

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        child_pids.append(pid)
        os.waitpid(pid, 0)

    with (
        events_map("ringbuf") as events,
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1) as drops,
    ):
        program = build_syscalls_program("ringbuf", events.fd, drops.fd, exclude_tgid=os.getpid())
        with Program.load(_sys.BPF_PROG_TYPE_RAW_TRACEPOINT, program) as prog:
            with attach_raw_tracepoint(prog, "sys_enter"):
                for _ in range(20):
                    os.getppid()
                spawn()
            got = np.frombuffer(b"".join(ringbuf_records(events)), SYSCALL_EVENT)
    assert os.getpid() not in set(got["pid"])
    child = got[got["pid"] == child_pids[0]]
    assert len(child) > 0  # the child's exit_group at least
    assert 231 in set(child["nr"])  # exit_group


def test_syscalls_program_filters_by_comm() -> None:
    hits = 13
    tids: list[int] = []

    def named_worker() -> None:
        Path("/proc/thread-self/comm").write_text("ebcap_t_comm")
        tids.append(threading.get_native_id())
        for _ in range(hits):
            os.getppid()

    with (
        events_map("ringbuf") as events,
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1) as drops,
    ):
        program = build_syscalls_program(
            "ringbuf", events.fd, drops.fd, only_tgid=os.getpid(), only_comm=b"ebcap_t_comm"
        )
        with Program.load(_sys.BPF_PROG_TYPE_RAW_TRACEPOINT, program) as prog:
            with attach_raw_tracepoint(prog, "sys_enter"):
                worker = threading.Thread(target=named_worker)
                worker.start()
                worker.join()
                for _ in range(hits):
                    os.getppid()  # this thread has another name: not recorded
            got = np.frombuffer(b"".join(ringbuf_records(events)), SYSCALL_EVENT)
    assert set(got["comm"]) == {b"ebcap_t_comm"}
    assert set(got["tid"]) == set(tids)
    assert np.count_nonzero(got["nr"] == NR_GETPPID) == hits


def test_syscalls_program_rejects_bad_filters() -> None:
    with pytest.raises(UsageError):
        build_syscalls_program("ringbuf", 3, 4, only_tgid=-1)
    with pytest.raises(UsageError):
        build_syscalls_program("ringbuf", 3, 4, only_comm=b"a\0b")
    with pytest.raises(UsageError, match="unknown transport"):
        build_syscalls_program("pipe", 3, 4)


# --- bench -----------------------------------------------------------------------
def run_bench(transport: str, size: int, repeat: int, ring_bytes: int = 1 << 20) -> tuple[
    np.ndarray, np.ndarray, int, int
]:  # fmt: skip
    """Test-run the producer ``repeat`` times on CPU; (events, stats, t0, t1)."""
    with (
        events_map(transport, ring_bytes) as events,
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, BENCH_STATS.itemsize, 1) as stats,
        ExitStack() as stack,
    ):
        scratch = None
        if needs_scratch_map(transport, size):
            scratch = stack.enter_context(Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, size, 1))
        rings = stack.enter_context(perf_rings(events, pages=64)) if transport == "perf" else {}
        program = build_bench_program(
            transport, size, events.fd, stats.fd, scratch_map_fd=scratch and scratch.fd
        )
        with (
            Program.load(_sys.BPF_PROG_TYPE_SOCKET_FILTER, program, name="ebcap_t_bench") as prog,
            pinned_to(CPU),
        ):
            t0 = time.monotonic_ns()
            assert prog.test_run(bytes(64), repeat=repeat).retval == 0
            t1 = time.monotonic_ns()
        payloads = ringbuf_records(events) if transport == "ringbuf" else perf_samples(rings[CPU])
        per_cpu = np.frombuffer(b"".join(stats.lookup_percpu(bytes(4))), BENCH_STATS)
    dtype = bench_event_dtype(size)
    got = np.frombuffer(b"".join(p[:size] for p in payloads), dtype)
    return got, per_cpu, t0, t1


@pytest.mark.parametrize(
    ("transport", "size"),
    [
        ("ringbuf", 16),
        ("ringbuf", 24),
        ("ringbuf", 4096),
        ("perf", 24),
        ("perf", STACK_EVENT_MAX),
        ("perf", STACK_EVENT_MAX + 8),
        ("perf", 4096),
    ],
)
def test_bench_program_events_and_stats(transport: str, size: int) -> None:
    repeat = 40
    events, stats, t0, t1 = run_bench(transport, size, repeat)
    assert stats["invocations"][CPU] == repeat and stats["drops"][CPU] == 0
    assert stats["invocations"].sum() == repeat
    assert len(events) == repeat
    assert list(events["seq"]) == list(range(repeat))
    assert set(events["cpu"]) == {CPU}
    assert np.all(np.diff(events["ts"].astype(np.int64)) >= 0)
    assert np.all((events["ts"] > t0) & (events["ts"] < t1))
    if size > 16:
        expected = events["ts"] ^ np.uint64(PAD_MAGIC)
        assert np.array_equal(events["pad"], np.repeat(expected[:, None], (size - 16) // 8, 1))


def test_bench_ringbuf_counts_drops_in_sequence() -> None:
    # One page of ring holds three 1032-byte records (1024 + 8 header).
    events, stats, _, _ = run_bench("ringbuf", 1024, 10, ring_bytes=PAGE)
    assert list(events["seq"]) == [0, 1, 2]
    assert (stats["invocations"][CPU], stats["drops"][CPU]) == (10, 7)


def test_bench_perf_counts_drops_without_rings() -> None:
    with (
        events_map("perf") as events,
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, BENCH_STATS.itemsize, 1) as stats,
    ):
        program = build_bench_program("perf", 64, events.fd, stats.fd)
        with Program.load(_sys.BPF_PROG_TYPE_SOCKET_FILTER, program) as prog, pinned_to(CPU):
            prog.test_run(bytes(64), repeat=25)
        per_cpu = np.frombuffer(b"".join(stats.lookup_percpu(bytes(4))), BENCH_STATS)
    assert (per_cpu["invocations"][CPU], per_cpu["drops"][CPU]) == (25, 25)


def test_bench_layout_matches_the_c_producer() -> None:
    dtype = bench_event_dtype(40)
    assert dtype.itemsize == 40
    assert [dtype.fields[n][1] for n in ("ts", "cpu", "seq", "pad")] == [0, 8, 12, 16]
    assert bench_event_dtype(16).names == ("ts", "cpu", "seq")
    for bad in (8, 20, 4104):
        with pytest.raises(UsageError):
            bench_event_dtype(bad)
    with pytest.raises(UsageError, match="scratch map"):
        build_bench_program("perf", STACK_EVENT_MAX + 8, 3, 4)
