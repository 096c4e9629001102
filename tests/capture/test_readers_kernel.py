"""Both ring readers on the real kernel, fed by the bench program through BPF_PROG_TEST_RUN.

The bench event (``ts, cpu, seq, pad[]``) is ground truth by itself: ``seq``
counts every attempt on its CPU (drops included), every pad word is
``ts ^ PAD_MAGIC``, and the stats map says how many attempts and drops
there were. So every payload byte, every count and every gap is checked.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from kernel_helpers import bench_program, open_fds, run_pinned

from ebcap.bpf import _sys
from ebcap.bpf.cpus import online_cpus, possible_cpus
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.bpf.programs.bench import BENCH_STATS, PAD_MAGIC, bench_event_dtype
from ebcap.capture.batch import EventBatch
from ebcap.capture.perf_reader import PerfBufferReader
from ebcap.capture.ringbuf_reader import RingBufReader
from ebcap.errors import ClosedError, KernelError, UsageError
from ebcap.format.schema import KIND_LOST_CODE, KIND_SAMPLE_CODE, UNKNOWN_CPU

pytestmark = pytest.mark.privileged

SIZE = 64  # bench event bytes: perf delivers them with raw size 68, in 96-byte records
PERF_RECORD = 96
RINGBUF_RECORD = 72
CPUS = online_cpus()
TEST_RUN_INPUT = bytes(64)  # a socket filter needs at least an Ethernet header

Reader = PerfBufferReader | RingBufReader


@dataclass
class Producer:
    """The bench program over an events map, run on chosen CPUs."""

    program: Program
    stats: Map

    def run(self, cpu: int, n: int) -> None:
        run_pinned(cpu, lambda: self.program.test_run(TEST_RUN_INPUT, repeat=n))

    def counters(self, cpu: int) -> tuple[int, int]:
        """(invocations, drops) on ``cpu``."""
        raw = self.stats.lookup_percpu(bytes(4))[cpu]
        values = np.frombuffer(raw, dtype=BENCH_STATS)[0]
        return int(values["invocations"]), int(values["drops"])


@contextmanager
def bench(transport: str, events: Map) -> Iterator[Producer]:
    with bench_program(transport, SIZE, events, "ebcap_t_reader") as (program, stats):
        yield Producer(program, stats)


def perf_map(entries: int | None = None) -> Map:
    n = entries if entries is not None else len(possible_cpus())
    return Map.create(_sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, n, name="ebcap_t_pea")


def ringbuf_map(size: int) -> Map:
    return Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, size, name="ebcap_t_rb")


@contextmanager
def reader_for(
    transport: str, ring_bytes: int, **perf: int | None
) -> Iterator[tuple[Reader, Producer]]:
    """A ``transport`` reader, rings of ``ring_bytes`` (per CPU for perf), and its producer."""
    if transport == "perf":
        pages = ring_bytes // os.sysconf("SC_PAGE_SIZE")
        with (
            perf_map() as events,
            bench("perf", events) as producer,
            PerfBufferReader(events, CPUS, pages_per_cpu=pages, **perf) as reader,  # type: ignore[arg-type]
        ):
            yield reader, producer
    else:
        with (
            ringbuf_map(ring_bytes) as events,
            bench("ringbuf", events) as producer,
            RingBufReader(events) as reader,
        ):
            yield reader, producer


def expected_payloads(events: np.ndarray) -> np.ndarray:
    """The bytes the bench program writes for these (ts, cpu, seq): pad words from ts."""
    want = np.zeros(len(events), dtype=bench_event_dtype(SIZE))
    for name in ("ts", "cpu", "seq"):
        want[name] = events[name]
    want["pad"] = (events["ts"] ^ np.uint64(PAD_MAGIC))[:, None]
    return want.view(np.uint8).reshape(len(events), SIZE)


def decoded(batch: EventBatch) -> np.ndarray:
    """The samples of ``batch`` as bench events, after checking every payload byte."""
    samples = batch.take(np.flatnonzero(batch.kind == KIND_SAMPLE_CODE))
    payloads = samples.fixed_payloads(SIZE)
    assert payloads is not None, "payload lengths differ"
    events = np.ascontiguousarray(payloads).view(bench_event_dtype(SIZE)).reshape(-1)
    np.testing.assert_array_equal(payloads, expected_payloads(events))
    return events


# --- every event, exactly -------------------------------------------------------------
@pytest.mark.parametrize(
    ("transport", "payload_size"), [("perf", SIZE), ("perf", None), ("ringbuf", None)]
)
def test_one_read_returns_every_event_of_every_cpu(
    transport: str, payload_size: int | None
) -> None:
    per_cpu = 2000
    perf_opts = {"payload_size": payload_size} if transport == "perf" else {}
    with reader_for(transport, 1 << 20, **perf_opts) as (reader, producer):
        t0 = time.monotonic_ns()
        for cpu in CPUS:
            producer.run(cpu, per_cpu)
        t1 = time.monotonic_ns()
        assert reader.wait(2.0)
        batch = reader.read()
        read_end = time.monotonic_ns()
        assert len(reader.read()) == 0  # the first read took everything
        counters = {cpu: producer.counters(cpu) for cpu in CPUS}
        # Whole records: perf header, time, cpu, raw size + 68 raw bytes; ring buffer 8 + 64.
        record = 8 + 8 + 8 + 4 + (SIZE + 4) if transport == "perf" else 8 + SIZE
        assert reader.bytes_read == len(batch) * record
    assert len(batch) == per_cpu * len(CPUS)
    assert batch.num_samples == len(batch) and batch.num_lost == 0
    lengths = set(batch.lengths.tolist())
    assert lengths == ({68} if transport == "perf" and payload_size is None else {SIZE})
    events = decoded(batch)
    for cpu in CPUS:
        assert events["seq"][events["cpu"] == cpu].tolist() == list(range(per_cpu))
        assert counters[cpu] == (per_cpu, 0)
    assert ((events["ts"] >= t0) & (events["ts"] <= t1)).all()
    if transport == "perf":
        # Drained in CPU order; perf's own CPU and TIME agree with the event's.
        assert batch.cpu.tolist() == sorted(batch.cpu.tolist())
        np.testing.assert_array_equal(batch.cpu, events["cpu"])
        assert (batch.ts_ns >= events["ts"]).all() and (batch.ts_ns <= t1).all()
        assert (np.diff(batch.ts_ns.astype(np.int64))[np.diff(batch.cpu) == 0] > 0).all()
    else:  # a record carries neither: the CPU unknown, the time when it had been read
        assert set(batch.cpu.tolist()) == {UNKNOWN_CPU}  # a layout's cpu field replaces it
        assert len(set(batch.ts_ns.tolist())) == 1
        assert events["ts"].max() <= batch.ts_ns[0] <= read_end
        assert (np.diff(events["ts"].astype(np.int64)) > 0).all()  # produced one CPU after another


# --- wrap-around ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("transport", "ring_bytes", "record"),
    [("perf", 8192, PERF_RECORD), ("ringbuf", 8192, RINGBUF_RECORD)],
)
def test_many_rounds_through_a_small_ring_wrap_around_without_loss(
    transport: str, ring_bytes: int, record: int
) -> None:
    per_round, rounds, cpu = 41, 30, CPUS[-1]
    assert per_round * rounds * record > 10 * ring_bytes  # wraps at least ten times
    assert (ring_bytes // record) * record != ring_bytes  # so records straddle the end
    batches = []
    with reader_for(transport, ring_bytes) as (reader, producer):
        for _ in range(rounds):
            producer.run(cpu, per_round)
            batch = reader.read()
            assert len(batch) == per_round
            batches.append(batch)
        assert producer.counters(cpu) == (per_round * rounds, 0)
    events = decoded(EventBatch.concat(batches))
    assert events["seq"].tolist() == list(range(per_round * rounds))
    assert set(events["cpu"].tolist()) == {cpu}


# --- loss -------------------------------------------------------------------------------
def test_overflowed_perf_ring_reports_lost_rows_that_close_the_seq_gap() -> None:
    cpu, first, second = CPUS[0], 500, 10
    with reader_for("perf", 4096, payload_size=SIZE) as (reader, producer):
        producer.run(cpu, first)  # one page holds 42 records: the rest is lost
        before = reader.read()
        producer.run(cpu, second)  # the LOST record comes with the next event that fits
        after = reader.read()
        invocations, drops = producer.counters(cpu)
    batch = EventBatch.concat([before, after])
    assert invocations == first + second
    assert before.num_lost == 0 and 0 < before.num_samples < first
    assert batch.num_samples + batch.num_lost == first + second
    assert batch.num_lost == drops
    lost_rows = np.flatnonzero(batch.kind == KIND_LOST_CODE)
    assert len(lost_rows) == 1 and batch.cpu[lost_rows[0]] == cpu
    assert batch.lengths[lost_rows[0]] == 0
    events = decoded(batch)
    seq = events["seq"].astype(np.int64)
    gap = int(lost_rows[0])  # samples before the lost row: those that fitted
    assert gap == before.num_samples
    assert seq[:gap].tolist() == list(range(gap))
    assert seq[gap:].tolist() == list(range(first, first + second))  # all of the second run
    assert batch.num_lost == first - gap  # exactly the seq gap


def test_full_ring_buffer_drops_show_as_seq_gaps() -> None:
    cpu, n = CPUS[0], 200
    with reader_for("ringbuf", 4096) as (reader, producer):
        producer.run(cpu, n)  # 4096 / 72: 56 fit
        batch = reader.read()
        invocations, drops = producer.counters(cpu)
    events = decoded(batch)
    assert invocations == n and len(events) + drops == n
    assert events["seq"].tolist() == list(range(len(events)))  # the first ones, in order


# --- wakeups ----------------------------------------------------------------------------
def test_perf_wakeup_every_n_events() -> None:
    cpu = CPUS[0]
    with reader_for("perf", 8 * 4096, wakeup_events=16) as (reader, producer):
        assert not reader.wait(0)
        producer.run(cpu, 15)
        assert not reader.wait(0.1)
        producer.run(cpu, 1)
        assert reader.wait(2.0)
        assert reader.read().num_samples == 16


def test_perf_wakeup_watermark_bytes() -> None:
    cpu = CPUS[0]
    with reader_for("perf", 8 * 4096, watermark_bytes=20 * PERF_RECORD) as (reader, producer):
        producer.run(cpu, 10)
        assert not reader.wait(0.1)
        producer.run(cpu, 20)
        assert reader.wait(2.0)
        assert reader.read().num_samples == 30


def test_ringbuf_wakes_the_consumer_that_caught_up() -> None:
    with reader_for("ringbuf", 1 << 16) as (reader, producer):
        assert not reader.wait(0)
        producer.run(CPUS[0], 3)
        assert reader.wait(2.0)
        assert reader.read().num_samples == 3
        assert not reader.wait(0.05)
        producer.run(CPUS[0], 2)
        assert reader.wait(2.0)
        assert decoded(reader.read())["seq"].tolist() == [3, 4]


def test_fileno_is_an_epoll_fd() -> None:
    for transport in ("perf", "ringbuf"):
        with reader_for(transport, 1 << 16) as (reader, _):
            assert os.readlink(f"/proc/self/fd/{reader.fileno()}") == "anon_inode:[eventpoll]"
        assert reader.closed


# --- resources ----------------------------------------------------------------------------
def mapped_kernel_objects() -> list[str]:
    """Lines of /proc/self/maps backed by perf events or BPF maps."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "perf_event" in line or "bpf-map" in line]


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_close_releases_every_fd_and_mapping(transport: str) -> None:
    events = perf_map() if transport == "perf" else ringbuf_map(1 << 16)
    with events, bench(transport, events) as producer:
        before = open_fds()
        reader: Reader = (
            PerfBufferReader(events, CPUS, pages_per_cpu=4)
            if transport == "perf"
            else RingBufReader(events)
        )
        producer.run(CPUS[0], 5)
        assert reader.read().num_samples == 5
        assert len(open_fds()) > len(before) and mapped_kernel_objects()
        reader.close()
        # Still referenced: nothing here is left to the garbage collector.
        assert open_fds() == before
        assert mapped_kernel_objects() == []
        reader.close()  # idempotent
        for call in (reader.read, lambda: reader.wait(0), reader.fileno):
            with pytest.raises(ClosedError, match="reader is closed"):
                call()
        assert not events.closed  # the map stays the caller's
        if transport == "perf":  # the slots are empty again: nothing left to delete
            assert not any(events.delete(struct.pack("<I", cpu)) for cpu in CPUS)
        if transport == "perf":  # the events are off: output fails and the program counts drops
            producer.run(CPUS[0], 7)
            assert producer.counters(CPUS[0]) == (12, 7)


def test_perf_reader_failing_halfway_closes_what_it_opened() -> None:
    missing_cpu = 63
    assert missing_cpu not in possible_cpus()
    with perf_map(64) as events:
        before = open_fds()
        with pytest.raises(KernelError, match="perf_event_open"):
            PerfBufferReader(events, [*CPUS, missing_cpu], pages_per_cpu=1)
        assert open_fds() == before


@pytest.mark.parametrize(
    ("cpus", "options", "message"),
    [
        ([], {}, "no CPUs"),
        ([0, 0], {}, "twice"),
        ([4096], {}, "no slot"),
        ([0], {"pages_per_cpu": 3}, "power of two"),
        ([0], {"wakeup_events": 4, "watermark_bytes": 64}, "not both"),
        ([0], {"wakeup_events": 0}, "at least 1"),
        ([0], {"watermark_bytes": 4096}, "below the 4096-byte buffer"),
        ([0], {"payload_size": -1}, "negative"),
    ],
)
def test_perf_reader_rejects_bad_arguments(
    cpus: list[int], options: dict[str, int], message: str
) -> None:
    opts = {"pages_per_cpu": 1, **options}
    with perf_map() as events:
        before = open_fds()
        with pytest.raises(UsageError, match=message):
            PerfBufferReader(events, cpus, **opts)  # type: ignore[arg-type]
        assert open_fds() == before


def test_readers_reject_the_other_map_type() -> None:
    with perf_map() as pea, ringbuf_map(4096) as rb:
        with pytest.raises(UsageError, match="not a PERF_EVENT_ARRAY"):
            PerfBufferReader(rb, [0], pages_per_cpu=1)
        with pytest.raises(UsageError, match="not a BPF ring buffer"):
            RingBufReader(pea)


def test_perf_reader_sizes() -> None:
    with perf_map() as events, PerfBufferReader(events, CPUS, pages_per_cpu=4) as reader:
        assert reader.ncpus == len(CPUS)
        assert reader.buffer_bytes_per_cpu == 4 * os.sysconf("SC_PAGE_SIZE")


def test_readers_refuse_a_closed_map_and_leave_nothing_open() -> None:
    for events in (perf_map(), ringbuf_map(4096)):
        events.close()
        before = open_fds()
        with pytest.raises(ClosedError, match="map is closed"):
            if events.info.type == _sys.BPF_MAP_TYPE_RINGBUF:
                RingBufReader(events)
            else:
                PerfBufferReader(events, CPUS, pages_per_cpu=1)
        assert open_fds() == before
