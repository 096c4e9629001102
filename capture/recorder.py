"""The recording loop: source -> reader -> rows -> writer, until told to stop.

Order matters for correctness. The output is opened first (so an existing
file is refused before anything is attached), then the source is started and
the reader installed. On stop the program is detached *before* the final
drain, so the last events are not cut off mid-ring, and the totals written at
close (events, lost, drops per CPU) match the rows. Every kernel object is
held by one ExitStack and released on every exit path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from ebcap.bpf import _sys
from ebcap.bpf import cpus as cpu_info
from ebcap.capture import realtime
from ebcap.capture.assemble import RowAssembler
from ebcap.capture.batch import EventBatch
from ebcap.capture.metadata import capture_metadata
from ebcap.capture.pacing import DrainPacer
from ebcap.capture.readers import Reader, open_reader
from ebcap.capture.ring_settings import DEFAULT_PERF_BUFFER_BYTES, DEFAULT_WAKEUP_EVENTS
from ebcap.capture.sources import KernelSide, Source, read_percpu_u64
from ebcap.errors import CaptureError, EbcapError
from ebcap.format.file_checks import recover_command
from ebcap.format.schema import KIND_SAMPLE_CODE, make_schema
from ebcap.format.writer import DEFAULT_ZSTD_LEVEL, CaptureWriter, utc_now_iso
from ebcap.replay.memory import DRAIN_WARM_BYTES, fault_in

POLL_INTERVAL_S = 0.1
DROP_POLL_INTERVAL_S = 0.5
FINAL_DRAIN_ROUNDS = 8


@dataclass
class RecordOptions:
    """Everything `ebcap record` decides before it starts."""

    output: Path
    transport: str = "perf"
    buffer_bytes: int = DEFAULT_PERF_BUFFER_BYTES
    """Perf: per CPU (rounded up to a power of two of pages); ring buffer: the whole ring."""
    wakeup_events: int | None = DEFAULT_WAKEUP_EVENTS
    watermark_bytes: int | None = None
    cpus: list[int] | None = None
    duration_s: float | None = None
    count: int | None = None
    flush_interval_s: float = 1.0
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    realtime: int | None = None
    """SCHED_FIFO priority of the drain (0: normal); None: the default where allowed."""
    force: bool = False
    command: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """A snapshot for live display."""

    elapsed_s: float
    events: int
    lost: int
    drops: int
    payload_bytes: int
    events_per_cpu: dict[int, int]
    lost_per_cpu: dict[int, int]
    payload_bytes_per_cpu: dict[int, int] = field(default_factory=dict)


@dataclass
class RecordSummary:
    """What a finished recording reports (and `--json` prints)."""

    path: str
    transport: str
    source: str
    duration_s: float
    events: int
    lost: int
    drops: int
    events_per_cpu: dict[int, int]
    lost_per_cpu: dict[int, int]
    drops_per_cpu: dict[int, int]
    file_bytes: int
    rounds: int
    stopped_by: str
    drain_scheduling: str = realtime.NORMAL
    writer_scheduling: str = realtime.NORMAL
    undecodable: int = 0
    """Samples shorter than the payload layout: kept, their decoded columns null."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def bytes_per_event(self) -> float:
        return self.file_bytes / self.events if self.events else 0.0


class Recorder:
    """Records one source into one file."""

    def __init__(self, source: Source, options: RecordOptions) -> None:
        self.source = source
        self.options = options
        self.transport = source.transport_of(options.transport)
        self.cpus = options.cpus or cpu_info.online_cpus()
        self.work_path: Path | None = None
        """The file being written until it is renamed to the output (once running)."""

    def run(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: Callable[[Progress], None] | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> RecordSummary:
        """Record until ``should_stop()``, the duration or the count; ``on_started``
        runs once the rings are installed (e.g. to start a producer)."""
        opts = self.options
        priority = realtime.resolve(opts.realtime)  # refused before anything is made
        schema = make_schema(self.source.arrow_fields(), capture_metadata(self, opts))
        writer = CaptureWriter(
            opts.output,
            schema,
            force=opts.force,
            flush_interval=opts.flush_interval_s,
            background=True,
            zstd_level=opts.zstd_level,
        )
        self.work_path = writer.partial_path
        try:
            with ExitStack() as stack:
                kernel = self.source.start(self.transport, opts.buffer_bytes, stack)
                reader = open_reader(self.transport, kernel.events, self.cpus, opts, self.source)
                stack.callback(reader.close)
                drops = _DropTracker(kernel, self.source, self.cpus)  # before any event flows
                writer.on_worker(fault_in)  # both threads' memory, before events flow
                fault_in(DRAIN_WARM_BYTES)
                stack.enter_context(realtime.frozen_heap())
                if kernel.attach is not None:
                    kernel.attach()
                if on_started is not None:
                    on_started()
                required = opts.realtime is not None
                with realtime.drain_priority(priority, required) as scheduling:
                    # Only beside a drain the kernel let run real-time: a nice -20 writer
                    # next to a normal drain would starve it on a shared CPU.
                    granted = priority if scheduling != realtime.NORMAL else 0
                    writer_scheduling = writer.on_worker(lambda: realtime.boost_writer(granted))
                    summary = self._loop(writer, reader, kernel, drops, should_stop, on_progress)
        except BaseException as exc:
            writer.abort()
            kept = _what_was_kept(writer)
            told = str(writer.partial_path) in str(exc)  # the writer's own failures say it
            if kept is None or told or not isinstance(exc, Exception):
                raise  # (Ctrl-C: the command says where the data is)
            if isinstance(exc, EbcapError):
                raise CaptureError(f"{exc}; {kept}") from exc
            exc.add_note(kept)  # a bug: the traceback (EBCAP_DEBUG=1) says where the data is
            raise
        return replace(summary, drain_scheduling=scheduling, writer_scheduling=writer_scheduling)

    def _loop(
        self,
        writer: CaptureWriter,
        reader: Reader,
        kernel: KernelSide,
        drops: _DropTracker,
        should_stop: Callable[[], bool],
        on_progress: Callable[[Progress], None] | None,
    ) -> RecordSummary:
        opts = self.options
        rows = RowAssembler(self.source, writer.schema, writer.counts)
        pacer = DrainPacer(reader.ring_bytes)
        start = time.monotonic()
        last_tick = start
        rounds = 0
        stopped_by = "signal"
        while True:
            now = time.monotonic()
            if should_stop():
                break
            if opts.duration_s is not None and now - start >= opts.duration_s:
                stopped_by = "duration"
                break
            if opts.count is not None and _samples(rows) >= opts.count:
                stopped_by = "count"
                break
            reader.wait(POLL_INTERVAL_S)
            pacer.before_drain()
            before = reader.bytes_read
            rounds += self._drain_once(reader, rows, writer, rounds)
            pacer.after_drain(reader.bytes_read - before)
            if time.monotonic() - last_tick >= DROP_POLL_INTERVAL_S:
                last_tick = time.monotonic()
                self._write(writer, drops.rows(rows, rounds))
                if on_progress:
                    on_progress(_progress(rows, drops, last_tick - start))
            writer.maybe_flush()
        if kernel.detach is not None:
            kernel.detach()
        for _ in range(FINAL_DRAIN_ROUNDS):
            if opts.count is not None and _samples(rows) >= opts.count:
                break
            if not self._drain_once(reader, rows, writer, rounds):
                break
            rounds += 1
        self._write(writer, drops.rows(rows, rounds))
        self._write(writer, drops.unreported_rows(rows, rounds, reader.kernel_lost()))
        elapsed = time.monotonic() - start
        totals = _totals(rows, drops, elapsed)
        path = writer.close(totals)
        if on_progress:
            on_progress(_progress(rows, drops, elapsed))
        return RecordSummary(
            path=str(path),
            transport=self.transport,
            source=self.source.spec,
            duration_s=elapsed,
            events=_samples(rows),
            lost=sum(rows.lost_per_cpu.values()),
            drops=sum(drops.total.values()),
            events_per_cpu=dict(sorted(rows.samples_per_cpu.items())),
            lost_per_cpu=dict(sorted(rows.lost_per_cpu.items())),
            drops_per_cpu=dict(sorted(drops.total.items())),
            file_bytes=Path(path).stat().st_size,
            rounds=rounds,
            stopped_by=stopped_by,
            undecodable=rows.undecodable,
        )

    def _drain_once(
        self, reader: Reader, rows: RowAssembler, writer: CaptureWriter, round_no: int
    ) -> int:
        """Read what the rings hold; 1 if it was anything, else 0."""
        batch = reader.read()
        if len(batch) == 0:
            return 0
        if self.options.count is not None:
            batch = _trim_to_count(batch, self.options.count - _samples(rows))
        self._write(writer, rows.assemble(batch, round_no))
        return 1

    @staticmethod
    def _write(writer: CaptureWriter, batch: pa.RecordBatch | None) -> None:
        if batch is not None and batch.num_rows:
            writer.write(batch)


class _DropTracker:
    """Turns the BPF drop counters into ``lost`` rows and totals.

    Ring buffer: the kernel keeps no lost count, so the program's drop counter
    is the only record of a loss; every increase becomes a ``lost`` row. Perf:
    the kernel reports losses in band (PERF_RECORD_LOST), but only with the
    next sample that fits, so losses at the very end of a capture are never
    reported; the drop counter saw them (or, without one, the kernel's count
    that the perf events give since Linux 6.0), and the difference becomes a
    final ``lost`` row per CPU.
    """

    def __init__(self, kernel: KernelSide, source: Source, cpus: list[int]) -> None:
        self._map = kernel.drops
        self._field = kernel.drops_field
        self._as_rows = (
            source.drops_are_lost_events and kernel.events.info.type == _sys.BPF_MAP_TYPE_RINGBUF
        )
        self.cpus = set(cpus)
        self.total: dict[int, int] = {}
        self._start = self._read()
        """What the counter held before recording (a pinned producer's may not start at 0)."""

    def _read(self) -> list[int]:
        return read_percpu_u64(self._map, self._field) if self._map is not None else []

    def rows(self, rows: RowAssembler, round_no: int) -> pa.RecordBatch | None:
        if self._map is None:
            return None
        counts = [now - before for now, before in zip(self._read(), self._start, strict=True)]
        deltas = {}
        for cpu, count in enumerate(counts):
            if cpu in self.cpus and count != self.total.get(cpu, 0):
                deltas[cpu] = count - self.total.get(cpu, 0)
                self.total[cpu] = count
        if not self._as_rows or not deltas:
            return None
        return rows.drop_rows(deltas, time.monotonic_ns(), round_no)

    def unreported_rows(
        self, rows: RowAssembler, round_no: int, kernel_lost: dict[int, int] | None
    ) -> pa.RecordBatch | None:
        """Perf: ``lost`` rows for losses no LOST record had reported by the end, by the
        drop counter or, without one (a pinned map), by the kernel's own count."""
        if self._as_rows:
            return None
        counted = self.total if self._map is not None else kernel_lost
        if counted is None:
            return None
        pending = {
            cpu: count - rows.lost_per_cpu.get(cpu, 0)
            for cpu, count in counted.items()
            if count > rows.lost_per_cpu.get(cpu, 0)
        }
        return rows.drop_rows(pending, time.monotonic_ns(), round_no) if pending else None


def _what_was_kept(writer: CaptureWriter) -> str | None:
    """Where the rows flushed before a failure are, and how to get them back (None: nowhere)."""
    partial = writer.partial_path
    if not writer.batches_written or not partial.exists():
        return None
    return (
        f"the {writer.rows_written:,} rows flushed before are in {partial} "
        f"({recover_command(partial)} makes a valid file of them)"
    )


def _samples(rows: RowAssembler) -> int:
    return sum(rows.samples_per_cpu.values())


def _trim_to_count(batch: EventBatch, remaining: int) -> EventBatch:
    """Keep rows up to and including the ``remaining``-th sample."""
    is_sample = np.flatnonzero(batch.kind == KIND_SAMPLE_CODE)
    if remaining <= 0:
        return batch.take(np.zeros(0, dtype=np.int64))
    if len(is_sample) <= remaining:
        return batch
    return batch.take(np.arange(is_sample[remaining - 1] + 1))


def _progress(rows: RowAssembler, drops: _DropTracker, elapsed: float) -> Progress:
    return Progress(
        elapsed_s=elapsed,
        events=_samples(rows),
        lost=sum(rows.lost_per_cpu.values()),
        drops=sum(drops.total.values()),
        payload_bytes=rows.payload_bytes,
        events_per_cpu=dict(rows.samples_per_cpu),
        lost_per_cpu=dict(rows.lost_per_cpu),
        payload_bytes_per_cpu=dict(rows.payload_bytes_per_cpu),
    )


def _totals(rows: RowAssembler, drops: _DropTracker, elapsed: float) -> dict[str, object]:
    return {
        "end_time": utc_now_iso(),
        "duration_s": round(elapsed, 6),
        "events": _samples(rows),
        "lost": sum(rows.lost_per_cpu.values()),
        "drops": sum(drops.total.values()),
        "events_per_cpu": {str(c): n for c, n in sorted(rows.samples_per_cpu.items())},
        "lost_per_cpu": {str(c): n for c, n in sorted(rows.lost_per_cpu.items())},
        "drops_per_cpu": {str(c): n for c, n in sorted(drops.total.items())},
        "undecodable": rows.undecodable,
        "last_drain_ns": rows.last_drain_ns,
    }
