"""The built-in benchmark producer and the integrity check of what was recorded.

A SOCKET_FILTER program, driven from user space by BPF_PROG_TEST_RUN with a
repeat count, emits one event per run: ``{u64 ts, u32 cpu, u32 seq, u64
pad[]}`` with ``seq`` counting every invocation on its CPU (drops included)
and every pad word ``ts ^ PAD_MAGIC`` (the same event as the C/libbpf anchor
harness). One thread per producer CPU, pinned there. Afterwards the
recording is checked event by event against what the producer says it made.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.bpf import _sys
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.capture.batch import fixed_rows
from ebcap.capture.layout import PayloadLayout
from ebcap.capture.sources import (
    KernelSide,
    Source,
    create_counter_map,
    create_events_map,
    read_percpu_u64,
)
from ebcap.errors import CaptureError, UsageError

if TYPE_CHECKING:
    from ebcap.capture.recorder import RecordOptions

PAD_MAGIC = 0x5A5AA5A5C3C33C3C
MIN_SIZE, MAX_SIZE = 16, 4096
TEST_RUN_PACKET = bytes(64)
"""Input of each test run; a socket filter needs at least an Ethernet header."""
REPEAT_PER_CALL = 4096


def validate_event_size(size: int) -> int:
    if not MIN_SIZE <= size <= MAX_SIZE or size % 8:
        raise UsageError(f"--size must be a multiple of 8 in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    return size


class BenchSource(Source):
    """The producer's kernel side: events map, stats map and the loaded program."""

    drops_are_lost_events = True

    def __init__(self, size: int) -> None:
        from ebcap.bpf.programs import bench

        self._bench = bench
        self.size = validate_event_size(size)
        self.spec = f"bench:{size}"
        dtype = bench.bench_event_dtype(size)
        self.layout = PayloadLayout(dtype, "ts", "cpu")
        self.stats: Map | None = None
        self.program_fd: int | None = None
        self._program: Program | None = None
        self._final: tuple[list[int], list[int]] | None = None

    def arrow_fields(self) -> list[pa.Field]:
        return [pa.field("ev_seq", pa.uint32())]

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        return {"ev_seq": pa.array(np.ascontiguousarray(events["seq"]))}

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        events = create_events_map(transport, buffer_bytes, stack)
        self.stats = create_counter_map("ebcap_bstats", 16, stack)
        stack.callback(self._keep_final_counters)  # runs before the map closes
        scratch = None
        if self._bench.needs_scratch_map(transport, self.size):
            scratch = create_counter_map("ebcap_bscratch", self.size, stack)
        insns = self._bench.build_bench_program(
            transport,
            self.size,
            events.fd,
            self.stats.fd,
            scratch_map_fd=scratch.fd if scratch is not None else None,
        )
        program = Program.load(_sys.BPF_PROG_TYPE_SOCKET_FILTER, insns, name="ebcap_bench")
        stack.callback(program.close)
        self._program = program
        # Drops are the stats map's second u64: no separate drops map.
        return KernelSide(events, self.stats, drops_field=1)

    @property
    def program(self) -> Program:
        if self._program is None:
            raise RuntimeError("the bench source has not started")
        return self._program

    def counters(self) -> tuple[list[int], list[int]]:
        """Per-CPU (invocations, drops) from the stats map, or as it was when it closed."""
        if self._final is not None:
            return self._final
        if self.stats is None:
            raise RuntimeError("the bench source has not started")
        return read_percpu_u64(self.stats, 0), read_percpu_u64(self.stats, 1)

    def _keep_final_counters(self) -> None:
        self._final = self.counters()


@dataclass
class ProducerRun:
    """What the producer threads did."""

    started_ns: int = 0
    ended_ns: int = 0
    calls: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return max(self.ended_ns - self.started_ns, 1) / 1e9


class Producers:
    """One pinned thread per CPU, each running the program until told to stop."""

    def __init__(self, source: BenchSource, cpus: list[int], duration_s: float) -> None:
        self.source = source
        self.cpus = cpus
        self.duration_s = duration_s
        self.run = ProducerRun()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.done = threading.Event()

    def start(self) -> None:
        self.run.started_ns = time.monotonic_ns()
        for cpu in self.cpus:
            thread = threading.Thread(target=self._produce, args=(cpu,), daemon=True)
            self._threads.append(thread)
            thread.start()
        threading.Thread(target=self._join_all, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _join_all(self) -> None:
        for thread in self._threads:
            thread.join()
        self.run.ended_ns = time.monotonic_ns()
        self.done.set()

    def _produce(self, cpu: int) -> None:
        program = self.source.program
        try:
            os.sched_setaffinity(0, {cpu})
            deadline = time.monotonic() + self.duration_s
            while not self._stop.is_set() and time.monotonic() < deadline:
                program.test_run(TEST_RUN_PACKET, repeat=REPEAT_PER_CALL)
                with self._lock:
                    self.run.calls += 1
        except Exception as exc:  # reported, not swallowed: the bench fails on it
            with self._lock:
                self.run.errors.append(f"producer on CPU {cpu}: {exc}")


@dataclass
class IntegrityReport:
    """Event-by-event check of a bench recording."""

    received: int = 0
    corrupted: int = 0
    duplicates: int = 0
    received_per_cpu: dict[int, int] = field(default_factory=dict)
    """Distinct sequence numbers received per CPU (by the CPU in the event header)."""
    holes_per_cpu: dict[int, int] = field(default_factory=dict)
    """Sequence numbers missing below the highest one received, per CPU."""
    out_of_order_per_cpu: dict[int, int] = field(default_factory=dict)


def check_integrity(batches: Iterable[pa.RecordBatch], size: int) -> IntegrityReport:
    """Check every sample's header and padding, and per-CPU sequence continuity.

    One batch at a time: what is kept across batches is each good event's
    sequence number (4 bytes), not the payloads.
    """
    report = IntegrityReport()
    seqs: dict[int, list[np.ndarray]] = {}
    for batch in batches:
        samples = batch.filter(pc.equal(batch["kind"].cast(pa.string()), "sample"))
        report.received += samples.num_rows
        if not samples.num_rows:
            continue
        data = samples["data"]
        offsets = np.frombuffer(data.buffers()[1], np.int32, len(data) + 1, data.offset * 4)
        values = np.frombuffer(data.buffers()[2], dtype=np.uint8)
        good_length = np.diff(offsets) >= size
        rows = np.flatnonzero(good_length)
        report.corrupted += int((~good_length).sum())
        words = fixed_rows(values, offsets[rows], size).view("<u8").reshape(len(rows), size // 8)
        ts = words[:, 0]
        header_cpu = (words[:, 1] & 0xFFFFFFFF).astype(np.int64)
        seq = (words[:, 1] >> 32).astype(np.int64)
        bad = np.zeros(len(rows), dtype=bool)
        if size > 16:
            bad |= (words[:, 2:] != (ts ^ np.uint64(PAD_MAGIC))[:, None]).any(axis=1)
        recorded_cpu = samples["cpu"].to_numpy()[rows].astype(np.int64)
        bad |= header_cpu != recorded_cpu
        report.corrupted += int(bad.sum())
        for cpu in np.unique(header_cpu[~bad]).tolist():
            seqs.setdefault(cpu, []).append(seq[(header_cpu == cpu) & ~bad])
    for cpu, parts in seqs.items():
        cpu_seq = np.concatenate(parts)
        unique = np.unique(cpu_seq)
        report.duplicates += len(cpu_seq) - len(unique)
        report.out_of_order_per_cpu[cpu] = int((np.diff(cpu_seq) < 0).sum())
        report.received_per_cpu[cpu] = len(unique)
        report.holes_per_cpu[cpu] = int(unique[-1] + 1 - len(unique))
    return report


@contextmanager
def _consumer_off(producer_cpus: list[int]) -> Iterator[None]:
    """Pin the consumer (this thread) to the CPUs nobody produces on, if any are left,
    and give it its old CPUs back afterwards.

    The anchor harness does the same (consumer on CPU 1, producer on CPU 0).
    Producer threads pin themselves, so they are not affected.
    """
    before = os.sched_getaffinity(0)
    free = set(before) - set(producer_cpus)
    if free:
        os.sched_setaffinity(0, free)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class BenchReport:
    """The outcome of one bench run (what `ebcap bench --json` prints)."""

    transport: str
    size: int
    producers: list[int]
    produced: int
    received: int
    produced_per_s: float
    consumed_per_s: float
    loss_pct: float
    lost_reported: int
    drops_in_bpf: int
    unaccounted: int
    """produced - received - lost_reported: events nobody accounted for (must be 0)."""
    corrupted: int
    duplicates: int
    out_of_order_per_cpu: dict[int, int]
    missing_per_cpu: dict[int, int]
    file_bytes: int
    bytes_per_event: float
    wakeup: str

    @property
    def ok(self) -> bool:
        return not (self.corrupted or self.duplicates or self.unaccounted)


def run_bench(
    source: BenchSource, cpus: list[int], duration_s: float, options: RecordOptions
) -> BenchReport:
    """Produce on ``cpus`` for ``duration_s`` while recording; check what arrived.

    consumed/s is received events over the window from the first event's BPF
    timestamp to the moment the recorder had written the last one, as the
    anchor harness measures it.
    """

    from ebcap.capture.metadata import wakeup_description
    from ebcap.capture.recorder import Recorder
    from ebcap.format.reader import CaptureReader

    producers = Producers(source, cpus, duration_s)
    recorder = Recorder(source, options)
    with _consumer_off(cpus):
        try:
            summary = recorder.run(should_stop=producers.done.is_set, on_started=producers.start)
        finally:
            producers.stop()
    handled_ns = time.monotonic_ns()
    if producers.run.errors:
        raise CaptureError(producers.run.errors[0])
    invocations, drops = source.counters()
    with CaptureReader(summary.path) as reader:
        integrity = check_integrity(reader.iter_batches(), source.size)
        ends = reader.iter_batches(columns=["ts_ns", "lost"])
        lost_reported, first_ts = 0, handled_ns
        for batch in ends:
            lost_reported += int(pc.sum(batch["lost"]).as_py() or 0)
            first_ts = min(first_ts, int(pc.min(batch["ts_ns"]).as_py() or handled_ns))
    produced = sum(invocations)
    received = integrity.received
    return BenchReport(
        transport=recorder.transport,
        size=source.size,
        producers=cpus,
        produced=produced,
        received=received,
        produced_per_s=produced / producers.run.wall_s,
        consumed_per_s=received / (max(handled_ns - first_ts, 1) / 1e9),
        loss_pct=100.0 * (produced - received) / produced if produced else 0.0,
        lost_reported=lost_reported,
        drops_in_bpf=sum(drops),
        unaccounted=produced - received - lost_reported,
        corrupted=integrity.corrupted,
        duplicates=integrity.duplicates,
        out_of_order_per_cpu=integrity.out_of_order_per_cpu,
        missing_per_cpu={c: invocations[c] - integrity.received_per_cpu.get(c, 0) for c in cpus},
        file_bytes=summary.file_bytes,
        bytes_per_event=summary.file_bytes / received if received else 0.0,
        wakeup=wakeup_description(
            recorder.transport, options.wakeup_events, options.watermark_bytes
        ),
    )
