"""A capture's summary: what was recorded where, over which time, per CPU, at what size.

One pass over the batches, decoding only the core columns it needs (not the
payloads, not the source's columns), gives the time span and the per-CPU
counts when the totals are missing; the rest comes from metadata, the totals
and the file size. ``ebcap info`` prints this.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from ebcap.errors import BadFileError
from ebcap.format import schema as fs
from ebcap.format.counts import CpuCounts
from ebcap.format.reader import CaptureReader

NS_PER_S: Final = 1_000_000_000
SUMMARY_COLUMNS: Final = ("seq", "cpu", "ts_ns", "kind", "lost")
"""The columns a summary reads (``seq`` so that its order is checked too)."""


@dataclass(frozen=True)
class CaptureSummary:
    """Everything ``ebcap info`` reports about one file."""

    path: Path
    file_size: int
    format_version: int
    ebcap_version: str | None
    transport: str
    source: str
    command: list[str] | None
    hostname: str | None
    kernel: str | None
    ncpus: int | None
    cpus: list[int] | None
    buffer_size: int | None
    wakeup: str | None
    clock: str | None
    start_time: str | None
    end_time: str | None
    first_ts_ns: int | None
    """Earliest sample timestamp (CLOCK_MONOTONIC ns); None without samples."""
    last_ts_ns: int | None
    first_wall: str | None
    """first_ts_ns on the wall clock (ISO 8601 UTC), via the recorded realtime offset."""
    last_wall: str | None
    duration_s: float | None
    rows: int
    samples: int
    lost_records: int
    batches: int
    events_per_cpu: dict[int, int]
    """Sample records per CPU; every CPU of ``cpus`` is listed, with 0 if it had none."""
    lost_per_cpu: dict[int, int]
    drops_per_cpu: dict[int, int] | None
    counts_from: str
    """"totals" when the per-CPU counts come from the end-of-capture totals, else "rows"."""
    uncompressed_bytes: int | None
    """Arrow bytes of the rows before compression, from the totals (None without them)."""
    bytes_per_event: float | None
    """File bytes per sample event (lost records are not events), as ``ebcap record`` says."""
    compression_ratio: float | None
    recovered: dict[str, Any] | None
    """The ``ebcap.recovered`` metadata of a file written by ``ebcap recover``."""
    source_columns: list[str] = field(default_factory=list)
    undecodable: int | None = None
    """Samples shorter than the payload layout (decoded columns null), from the totals."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as text, per-CPU maps keyed by CPU number as text."""
        out = asdict(self)
        out["path"] = str(self.path)
        for key in ("events_per_cpu", "lost_per_cpu", "drops_per_cpu"):
            if out[key] is not None:
                out[key] = {str(cpu): n for cpu, n in sorted(out[key].items())}
        return out


def wall_clock_iso(monotonic_ns: int, realtime_offset_ns: int) -> str:
    """A CLOCK_MONOTONIC timestamp as ISO 8601 UTC, to the nanosecond."""
    seconds, nanos = divmod(monotonic_ns + realtime_offset_ns, NS_PER_S)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def summarize(reader: CaptureReader) -> CaptureSummary:
    """Read ``reader`` once (its core columns only) and summarise it."""
    meta = reader.metadata
    recorded_cpus = _recorded_cpus(reader)
    counts = CpuCounts()
    first_ts: int | None = None
    last_ts: int | None = None
    rows = samples = 0
    for batch in reader.iter_batches(SUMMARY_COLUMNS):
        rows += batch.num_rows
        if batch.num_rows == 0:
            continue
        ts = batch.column("ts_ns").to_numpy()[counts.add(batch)]
        samples += len(ts)
        if len(ts):
            low, high = int(np.min(ts)), int(np.max(ts))
            first_ts = low if first_ts is None else min(first_ts, low)
            last_ts = high if last_ts is None else max(last_ts, high)

    totals = reader.totals or {}
    use_totals = fs.TOTAL_EVENTS_PER_CPU in totals
    per_cpu = totals if use_totals else counts.totals()
    drops = totals.get(fs.TOTAL_DROPS_PER_CPU)
    uncompressed = totals.get(fs.TOTAL_UNCOMPRESSED_BYTES)
    offset = meta.get(fs.META_REALTIME_OFFSET)
    file_size = reader.file_size
    return CaptureSummary(
        path=reader.path,
        file_size=file_size,
        format_version=reader.format_version,
        ebcap_version=meta.get(fs.META_EBCAP_VERSION),
        transport=meta[fs.META_TRANSPORT],
        source=meta[fs.META_SOURCE],
        command=meta.get(fs.META_COMMAND),
        hostname=meta.get(fs.META_HOSTNAME),
        kernel=meta.get(fs.META_KERNEL),
        ncpus=meta.get(fs.META_NCPUS),
        cpus=recorded_cpus,
        buffer_size=meta.get(fs.META_BUFFER_SIZE),
        wakeup=meta.get(fs.META_WAKEUP),
        clock=meta.get(fs.META_CLOCK),
        start_time=meta.get(fs.META_START_TIME),
        end_time=totals.get(fs.TOTAL_END_TIME),
        first_ts_ns=first_ts,
        last_ts_ns=last_ts,
        first_wall=_wall(first_ts, offset),
        last_wall=_wall(last_ts, offset),
        duration_s=None if first_ts is None or last_ts is None else (last_ts - first_ts) / NS_PER_S,
        rows=rows,
        samples=samples,
        lost_records=rows - samples,
        batches=reader.num_batches,
        events_per_cpu=_every_cpu(per_cpu[fs.TOTAL_EVENTS_PER_CPU], recorded_cpus),
        lost_per_cpu=_every_cpu(per_cpu.get(fs.TOTAL_LOST_PER_CPU, {}), recorded_cpus),
        drops_per_cpu=None if drops is None else _every_cpu(drops, recorded_cpus),
        counts_from="totals" if use_totals else "rows",
        uncompressed_bytes=uncompressed,
        bytes_per_event=file_size / samples if samples else None,
        compression_ratio=uncompressed / file_size if uncompressed and file_size else None,
        recovered=meta.get(fs.META_RECOVERED),
        source_columns=list(reader.source_columns),
        undecodable=totals.get(fs.TOTAL_UNDECODABLE),
    )


def _recorded_cpus(reader: CaptureReader) -> list[int] | None:
    """``ebcap.cpus``, checked to be a list of CPU numbers (None when absent)."""
    cpus = reader.metadata.get(fs.META_CPUS)
    if cpus is None:
        return None
    if not isinstance(cpus, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus
    ):
        raise BadFileError(f"{reader.path}: metadata {fs.META_CPUS} is not a list of CPU numbers")
    return cpus


def _every_cpu(counts: dict[int, int], cpus: list[int] | None) -> dict[int, int]:
    """``counts`` with every recorded CPU present (0 where it counted nothing), sorted."""
    merged = dict.fromkeys(cpus or (), 0)
    merged.update(counts)
    return dict(sorted(merged.items()))


def _wall(ts: int | None, offset: int | None) -> str | None:
    return None if ts is None or offset is None else wall_clock_iso(ts, offset)
