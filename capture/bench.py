"""`ebcap bench`: the built-in producer at full speed, recorded to a real file, and
the report of what arrived against what was produced.

The pieces live apart: :mod:`~ebcap.capture.bench_source` (the kernel side),
:mod:`~ebcap.capture.bench_producers` (pinned producer threads) and
:mod:`~ebcap.capture.bench_integrity` (the event-by-event check). Here they are
run together, and every event is accounted for per CPU: received, or reported
lost, and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.compute as pc

from ebcap.capture.bench_integrity import check_integrity
from ebcap.capture.bench_producers import Producers, consumer_off
from ebcap.capture.bench_source import BenchSource
from ebcap.errors import CaptureError

if TYPE_CHECKING:
    from ebcap.capture.recorder import RecordOptions


@dataclass(frozen=True)
class Production:
    """What the producer says it made."""

    cpus: list[int]
    """The CPUs it ran on."""
    invocations: list[int]
    """Events attempted, per possible CPU (drops included)."""
    drops: list[int]
    """Events the program could not emit, per possible CPU."""
    wall_s: float


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
    produced_per_cpu: dict[int, int]
    received_per_cpu: dict[int, int]
    lost_per_cpu: dict[int, int]
    """Reported lost on each CPU."""
    missing_per_cpu: dict[int, int]
    """Produced but not received, per CPU (the lost ones among them)."""
    holes_per_cpu: dict[int, int]
    """Sequence numbers missing below the highest received, per CPU."""
    out_of_order_per_cpu: dict[int, int]
    unaccounted_per_cpu: dict[int, int]
    """missing - reported lost, per CPU: must be 0 on every CPU."""
    file_bytes: int
    bytes_per_event: float
    wakeup: str

    @property
    def ok(self) -> bool:
        """No event damaged, repeated, reordered, or missing without a loss report."""
        return not (
            self.corrupted
            or self.duplicates
            or self.unaccounted
            or any(self.out_of_order_per_cpu.values())
            or any(self.unaccounted_per_cpu.values())
        )

    @property
    def problems(self) -> str:
        """What made the bench fail, as one line ('' when it is ok)."""
        found = {
            "corrupted": self.corrupted,
            "duplicated": self.duplicates,
            "out of order": sum(self.out_of_order_per_cpu.values()),
            "unaccounted": self.unaccounted,
        }
        parts = [f"{n:,} {what}" for what, n in found.items() if n]
        parts += [
            f"CPU {cpu}: {n:+,} events neither received nor reported lost"
            for cpu, n in sorted(self.unaccounted_per_cpu.items())
            if n
        ]
        return ", ".join(parts)


def check_recording(
    path: str | Path,
    size: int,
    production: Production,
    *,
    transport: str,
    wakeup: str,
    handled_ns: int | None = None,
) -> BenchReport:
    """Check the bench recording at ``path`` against what the producer made.

    consumed/s is received events over the window from the first event's BPF
    timestamp to ``handled_ns`` (when the recorder had written the last one;
    default: now), as the anchor harness measures it.
    """
    from ebcap.format.reader import CaptureReader

    handled_ns = time.monotonic_ns() if handled_ns is None else handled_ns
    with CaptureReader(path) as reader:
        integrity = check_integrity(reader.iter_batches(), size)
        first_ts = handled_ns
        for batch in reader.iter_batches(columns=["ts_ns"]):
            first_ts = min(first_ts, int(pc.min(batch["ts_ns"]).as_py() or handled_ns))
    file_bytes = Path(path).stat().st_size
    produced_per_cpu = {c: production.invocations[c] for c in production.cpus}
    received_per_cpu = {c: integrity.received_per_cpu.get(c, 0) for c in production.cpus}
    lost_per_cpu = {c: integrity.lost_per_cpu.get(c, 0) for c in production.cpus}
    missing = {c: produced_per_cpu[c] - received_per_cpu[c] for c in production.cpus}
    produced = sum(production.invocations)
    received = integrity.received
    lost_reported = sum(integrity.lost_per_cpu.values())
    return BenchReport(
        transport=transport,
        size=size,
        producers=production.cpus,
        produced=produced,
        received=received,
        produced_per_s=produced / production.wall_s,
        consumed_per_s=received / (max(handled_ns - first_ts, 1) / 1e9),
        loss_pct=100.0 * (produced - received) / produced if produced else 0.0,
        lost_reported=lost_reported,
        drops_in_bpf=sum(production.drops),
        unaccounted=produced - received - lost_reported,
        corrupted=integrity.corrupted,
        duplicates=integrity.duplicates,
        produced_per_cpu=produced_per_cpu,
        received_per_cpu=received_per_cpu,
        lost_per_cpu=lost_per_cpu,
        missing_per_cpu=missing,
        holes_per_cpu={c: integrity.holes_per_cpu.get(c, 0) for c in production.cpus},
        out_of_order_per_cpu={c: integrity.out_of_order_per_cpu.get(c, 0) for c in production.cpus},
        unaccounted_per_cpu={c: missing[c] - lost_per_cpu[c] for c in production.cpus},
        file_bytes=file_bytes,
        bytes_per_event=file_bytes / received if received else 0.0,
        wakeup=wakeup,
    )


def run_bench(
    source: BenchSource, cpus: list[int], duration_s: float, options: RecordOptions
) -> BenchReport:
    """Produce on ``cpus`` for ``duration_s`` while recording; check what arrived."""
    from ebcap.capture.metadata import wakeup_description
    from ebcap.capture.recorder import Recorder

    producers = Producers(source, cpus, duration_s)
    recorder = Recorder(source, options)
    with consumer_off(cpus):
        try:
            summary = recorder.run(should_stop=producers.done.is_set, on_started=producers.start)
        finally:
            producers.stop()
    handled_ns = time.monotonic_ns()
    if producers.run.errors:
        raise CaptureError(producers.run.errors[0])
    invocations, drops = source.counters()
    production = Production(cpus, invocations, drops, producers.run.wall_s)
    wakeup = wakeup_description(recorder.transport, options.wakeup_events, options.watermark_bytes)
    return check_recording(
        summary.path,
        source.size,
        production,
        transport=recorder.transport,
        wakeup=wakeup,
        handled_ns=handled_ns,
    )
