"""``ebcap replay``: order, filter, pace and format a capture onto an output.

The pipeline per batch: an ordered batch (arrival or exact time order, with
lateness) -> filters (CPUs, kind) -> limit -> pacing (``speed``) -> text,
JSON lines or CSV bytes -> the output. Everything is per batch, so memory
stays bounded and the formatters stay vectorised.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import pyarrow as pa

from ebcap.errors import UsageError
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.format.schema import KIND_LOST_CODE, KIND_SAMPLE_CODE
from ebcap.replay.display import lines_bytes
from ebcap.replay.lines import bounded_ranges
from ebcap.replay.order import (
    DEFAULT_MAX_WINDOW_ROWS,
    OnScanned,
    OrderedBatch,
    OrderReport,
    arrival_order,
    time_order,
)
from ebcap.replay.records import CSV, JSONL, encoder_for
from ebcap.replay.scan import scan_columns, slice_schema
from ebcap.replay.text import ARRIVAL, TIME, TextFormatter

TEXT: Final = "text"
FORMATS: Final = (TEXT, JSONL, CSV)


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def flush(self) -> None: ...


@dataclass
class ReplayOptions:
    """What ``ebcap replay`` was asked for."""

    order: str = ARRIVAL
    fmt: str = TEXT
    cpus: Collection[int] | None = None
    kind: str | None = None
    limit: int | None = None
    speed: float | None = None
    wall: bool = False
    colour: bool = False
    max_window_rows: int = DEFAULT_MAX_WINDOW_ROWS
    spill_dir: str | Path | None = None

    def check(self) -> None:
        """Reject impossible values with a one-line UsageError."""
        if self.order not in (ARRIVAL, TIME):
            raise UsageError(f"unknown order {self.order!r}")
        if self.fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {self.fmt!r}")
        if self.kind is not None and self.kind not in fs.KINDS:
            raise UsageError(f"--kind must be one of {', '.join(fs.KINDS)}, not {self.kind!r}")
        if self.limit is not None and self.limit < 0:
            raise UsageError(f"--limit must be 0 or more, not {self.limit}")
        if self.speed is not None and not (self.speed > 0 and np.isfinite(self.speed)):
            raise UsageError(f"--speed must be a positive number, not {self.speed}")
        if self.wall and self.fmt != TEXT:
            raise UsageError("--wall applies to text output only (jsonl/csv keep ts_ns)")
        if self.max_window_rows < 1:
            raise UsageError("the sort window must hold at least one row")


@dataclass
class ReplaySummary:
    """What a replay wrote, and what the ordering had to say."""

    rows: int = 0
    samples: int = 0
    lost_rows: int = 0
    order: OrderReport = field(default_factory=OrderReport)


def capture_cpus(reader: CaptureReader) -> list[int]:
    """The CPUs a capture recorded: from its metadata, else from its rows."""
    recorded = reader.metadata.get(fs.META_CPUS)
    if isinstance(recorded, list) and all(isinstance(c, int) for c in recorded):
        return sorted(recorded)
    seen: set[int] = set()
    for part in scan_columns(reader, ("cpu",)):
        seen.update(np.unique(part.column("cpu").to_numpy()).tolist())
    return sorted(seen)


MAX_WAIT_S: Final = 1.0
"""The longest single sleep of the pacer; it looks at the clock again after each."""


class Pacer:
    """Holds rows back so they come out with their original gaps scaled by 1/speed."""

    def __init__(
        self,
        speed: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self._start: tuple[float, int] | None = None

    def groups(self, ts: np.ndarray) -> Iterator[tuple[int, int]]:
        """(start, end) row ranges of one batch, each yielded when it is due."""
        if len(ts) == 0:
            return
        if self._start is None:
            self._start = (self.clock(), int(ts[0]))
        began, origin = self._start
        offsets = (ts.astype(np.int64) - np.int64(origin)) / 1e9 / self.speed
        due = np.maximum.accumulate(began + offsets)
        position = 0
        while position < len(ts):
            now = self.clock()
            ready = int(np.searchsorted(due, now, side="right"))
            if ready <= position:  # in steps: a tiny speed puts rows beyond what sleep takes
                self.sleep(min(float(due[position]) - now, MAX_WAIT_S))
                continue
            yield position, ready
            position = ready


def _selected(batch: OrderedBatch, options: ReplayOptions) -> OrderedBatch:
    """The rows that pass the CPU and kind filters."""
    rows = batch.rows
    mask: np.ndarray | None = None
    if options.cpus is not None:
        mask = np.isin(rows.column("cpu").to_numpy(), np.fromiter(options.cpus, dtype=np.int64))
    if options.kind is not None:
        code = KIND_LOST_CODE if options.kind == fs.KIND_LOST else KIND_SAMPLE_CODE
        wanted = rows.column("kind").indices.to_numpy(zero_copy_only=False) == code
        mask = wanted if mask is None else mask & wanted
    if mask is None or mask.all():
        return batch
    return batch.filter(mask)


def ordered(
    reader: CaptureReader,
    options: ReplayOptions,
    report: OrderReport,
    columns: Sequence[str] | None = None,
    prepare: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
    on_scanned: OnScanned | None = None,
) -> Generator[OrderedBatch, None, None]:
    """The capture in the requested order (``columns``: only those, plus the ordering keys;
    ``prepare``: applied to each slice before the time sort; ``on_scanned``: told what
    the sort's first pass found, before the first row)."""
    if options.order == TIME:
        return time_order(
            reader,
            max_window_rows=options.max_window_rows,
            spill_dir=options.spill_dir,
            report=report,
            columns=columns,
            prepare=prepare,
            on_scanned=on_scanned,
        )
    return arrival_order(reader, columns, report)


def write_replay(
    reader: CaptureReader,
    out: Sink,
    options: ReplayOptions,
    *,
    pacer: Pacer | None = None,
    on_scanned: OnScanned | None = None,
) -> ReplaySummary:
    """Write the capture to ``out`` as ``options`` say; returns what was written.

    ``on_scanned(report)``: in time order, called with what the first pass
    found (a CPU's own disorder) before anything is written.
    """
    options.check()
    summary = ReplaySummary()
    if options.speed is not None and pacer is None:
        pacer = Pacer(options.speed)
    text = None
    encoder = None
    columns: Sequence[str] | None = None
    if options.fmt == TEXT:
        text = TextFormatter(
            reader.schema,
            reader.metadata,
            order=options.order,
            wall=options.wall,
            colour=options.colour,
        )
        columns = text.columns
    else:
        encoder = encoder_for(options.fmt, slice_schema(reader))
        out.write(encoder.header())
    remaining = options.limit
    prepare = text.prepare if text is not None else None
    stream = ordered(reader, options, summary.order, columns, prepare, on_scanned)
    with contextlib.closing(stream):
        for batch in stream:
            if text is not None and text.origin is None:
                text.set_origin(int(batch.rows.column("ts_ns")[0].as_py()))
            if remaining == 0:
                break
            chosen = _selected(batch, options)
            if remaining is not None and chosen.rows.num_rows > remaining:
                chosen = chosen.slice(0, remaining)
            if chosen.rows.num_rows == 0:
                continue
            for start, end in _ranges(chosen.rows, pacer):
                part = chosen.slice(start, end)
                if text is not None:
                    out.write(lines_bytes(text.format(part.rows, part.late_ns, part.moved)))
                elif encoder is not None:
                    out.write(encoder.encode(part.rows))
                if pacer is not None:
                    out.flush()
            _count(summary, chosen.rows)
            if remaining is not None:
                remaining -= chosen.rows.num_rows
                if remaining == 0:
                    break
    return summary


def _ranges(rows: pa.RecordBatch, pacer: Pacer | None) -> Iterator[tuple[int, int]]:
    """The row ranges written at once: a pacer's groups, cut where their payloads' text
    would be too large to build in one piece (:func:`~ebcap.replay.lines.bounded_ranges`)."""
    if pacer is None:
        yield from bounded_ranges(rows)
        return
    for start, end in pacer.groups(rows.column("ts_ns").to_numpy()):
        for low, high in bounded_ranges(rows.slice(start, end - start)):
            yield start + low, start + high


def _count(summary: ReplaySummary, rows: pa.RecordBatch) -> None:
    codes = rows.column("kind").indices.to_numpy(zero_copy_only=False)
    lost = int(np.count_nonzero(codes == KIND_LOST_CODE))
    summary.rows += rows.num_rows
    summary.lost_rows += lost
    summary.samples += rows.num_rows - lost
