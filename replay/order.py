"""The two replay orders: arrival (``seq``) and exact time order, both streaming.

Arrival order is the file order. Time order is exact, by (ts_ns, cpu, seq),
without loading the file: a first pass reads only ``ts_ns``, ``cpu`` and
``kind`` and records, for every slice, the smallest timestamp of all slices
after it. The second pass holds back only rows at or above that bound (no
later row can precede them) and emits the rest sorted, so memory follows the
reordering window, not the file. The perf buffer reorders across CPUs only,
which keeps that window small; the sort does not rely on it.

When the rows held back would exceed ``max_window_rows`` (an event delivered
very late, or a CPU whose own stream is out of order), they are spilled as a
sorted run to a temporary file (:mod:`~ebcap.replay.runs`): only those rows,
none of which could go out yet. From then on, rows below the bound go out
merged with the runs' rows below it, read back a block at a time, and the
window fills again from empty. Peak memory is the window plus a block per
open run, whatever the length of the file.

Each row carries its lateness (:mod:`~ebcap.replay.lateness`) and, in time
order, how many earlier-delivered rows it now precedes
(:mod:`~ebcap.replay.moves`). :class:`OrderReport` says what the ordering
met, for the caller to tell the user: what the first pass found is there
before the first row is handed out.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa

from ebcap.errors import BadFileError
from ebcap.format.counts import sample_mask
from ebcap.format.reader import CaptureReader
from ebcap.replay.dictionaries import (
    coded_like,
    gathered_dictionary,
    merged_by_concatenation,
    used_entries_only,
)
from ebcap.replay.lateness import LatenessTracker
from ebcap.replay.moves import MoveCounter, Mover, TwoCpuMover
from ebcap.replay.runs import SpilledRuns, sort_keys, sort_order
from ebcap.replay.scan import (
    SLICE_ROWS,
    iter_slices,
    scan_columns,
    slice_schema,
    u64,
)

DEFAULT_MAX_WINDOW_ROWS: Final = 1 << 18
"""Rows the time sort may hold in memory before it spills to disk."""

FEW_CPUS: Final = 8
"""Up to this many CPUs in a slice, per-CPU order is checked with a mask per CPU."""

COMPACT_FACTOR: Final = 4
"""Held rows are compacted when the batches kept for them hold this many times more rows."""

LATE_FIELD: Final = pa.field("__ebcap_late_ns", pa.uint64(), nullable=False)
ARRIVAL_FIELD: Final = pa.field("__ebcap_arrival", pa.int64(), nullable=False)
"""Lateness and arrival position travel with their row through the sort as extra columns."""

OnScanned = Callable[["OrderReport"], None]


@dataclass
class OrderedBatch:
    """Rows in replay order, with each row's lateness in arrival order (0: on time).

    ``moved`` (time order only): how many rows delivered before each row come
    after it now; 0 where the sort did not move the row ahead of any.
    """

    rows: pa.RecordBatch
    late_ns: np.ndarray
    moved: np.ndarray | None = None

    def filter(self, mask: np.ndarray) -> OrderedBatch:
        """The rows where ``mask`` is set, with their lateness and moves."""
        moved = self.moved[mask] if self.moved is not None else None
        return OrderedBatch(self.rows.filter(pa.array(mask)), self.late_ns[mask], moved)

    def slice(self, start: int, stop: int) -> OrderedBatch:
        """Rows ``start`` to ``stop`` (zero-copy)."""
        moved = self.moved[start:stop] if self.moved is not None else None
        return OrderedBatch(self.rows.slice(start, stop - start), self.late_ns[start:stop], moved)


@dataclass
class OrderReport:
    """What an ordering met and did; filled in while it runs.

    ``cpu_disorder`` is known before the first row in time order (the first
    pass finds it), at the end in arrival order.
    """

    sorted: bool = False
    rows: int = 0
    scanned: bool = False
    """Time order: the first pass is done (``cpu_disorder`` is final)."""
    peak_window_rows: int = 0
    spilled_runs: int = 0
    """Runs written by spilling (not counting those merges wrote)."""
    spilled_rows: int = 0
    run_merges: int = 0
    peak_open_runs: int = 0
    cpu_disorder: dict[int, int] = field(default_factory=dict)
    """CPU -> samples delivered after a later-stamped sample of the same CPU."""

    def disorder_notes(self) -> list[str]:
        """One line per CPU whose own events came out of timestamp order."""
        tail = "; the sort is still exact" if self.sorted else ""
        return [
            f"CPU {cpu}'s own stream is out of timestamp order "
            f"({count} event{'' if count == 1 else 's'}){tail}"
            for cpu, count in sorted(self.cpu_disorder.items())
        ]

    def spill_notes(self) -> list[str]:
        """What the sort had to do on disk (known at the end)."""
        if not self.spilled_runs:
            return []
        merged = f", merged {self.run_merges} times" if self.run_merges else ""
        return [
            f"reordering exceeded the in-memory window: sorted {self.spilled_rows} events "
            f"externally in {self.spilled_runs} temporary runs{merged} (exact)"
        ]

    def notes(self) -> list[str]:
        """One line per noteworthy fact, for stderr."""
        return self.disorder_notes() + self.spill_notes()


def in_order(
    reader: CaptureReader,
    in_time_order: bool,
    report: OrderReport,
    columns: Sequence[str] | None = None,
) -> Generator[OrderedBatch, None, None]:
    """The capture in exact time order, or as delivered (``columns``: as the two take it)."""
    if in_time_order:
        return time_order(reader, report=report, columns=columns)
    return arrival_order(reader, columns, report)


def arrival_order(
    reader: CaptureReader,
    columns: Sequence[str] | None = None,
    report: OrderReport | None = None,
) -> Generator[OrderedBatch, None, None]:
    """The capture as delivered, checking that ``seq`` only grows.

    ``columns``: read only those and the ordering keys (seq, cpu, ts_ns, kind).
    ``report`` gets the rows and each CPU's own disorder, as they stream.
    """
    report = report if report is not None else OrderReport()
    tracker = LatenessTracker()
    highs: dict[int, int] = {}
    last = -1
    for rows in iter_slices(reader, columns=columns):
        seq = u64(rows, "seq")
        if int(seq[0]) <= last or (len(seq) > 1 and bool(np.any(seq[1:] <= seq[:-1]))):
            raise BadFileError(f"{reader.path}: seq does not increase in file order (damaged file)")
        last = int(seq[-1])
        ts, sample = u64(rows, "ts_ns"), sample_mask(rows)
        cpu = rows.column("cpu").to_numpy()
        _count_cpu_disorder(cpu[sample], ts[sample], highs, report)
        report.rows += rows.num_rows
        yield OrderedBatch(rows, tracker.update(ts, sample))


def time_order(
    reader: CaptureReader,
    *,
    max_window_rows: int = DEFAULT_MAX_WINDOW_ROWS,
    spill_dir: str | Path | None = None,
    report: OrderReport | None = None,
    columns: Sequence[str] | None = None,
    prepare: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
    on_scanned: OnScanned | None = None,
) -> Generator[OrderedBatch, None, None]:
    """The capture sorted exactly by (ts_ns, cpu, seq), in bounded memory.

    ``columns``: read only those and the ordering keys (seq, cpu, ts_ns, kind).
    ``prepare`` turns each slice as read into what is sorted and handed out
    (it must keep the ordering keys): work done there per row is not
    carried through the sort column by column. ``on_scanned(report)`` is
    called after the first pass, before the first row.
    """
    report = report if report is not None else OrderReport()
    report.sorted = True
    shape = StreamShape()
    bounds = later_minimums(reader, report, shape)
    report.scanned = True
    if on_scanned is not None:
        on_scanned(report)
    read_schema = slice_schema(reader, columns)
    if prepare is not None:
        empty = [pa.nulls(0, field.type) for field in read_schema]  # any type, unions too
        read_schema = prepare(pa.RecordBatch.from_arrays(empty, schema=read_schema)).schema
    schema = read_schema.append(LATE_FIELD).append(ARRIVAL_FIELD)
    tracker = LatenessTracker()
    window = _Window(schema)
    mover: Mover = (
        TwoCpuMover() if shape.cpus <= 2 and shape.rows_out_of_order == 0 else MoveCounter()
    )
    emitter = _Emitter(schema, SpilledRuns(schema, spill_dir), mover)
    arrival = 0
    try:
        for index, rows in enumerate(iter_slices(reader, columns=columns)):
            late = tracker.update(u64(rows, "ts_ns"), sample_mask(rows))
            if prepare is not None:
                rows = prepare(rows)
            count = rows.num_rows
            positions = pa.array(np.arange(arrival, arrival + count, dtype=np.int64))
            arrival += count
            rows = rows.append_column(LATE_FIELD, pa.array(late, pa.uint64()))
            window.add(rows.append_column(ARRIVAL_FIELD, positions))
            report.rows += count
            report.peak_window_rows = max(report.peak_window_rows, window.rows)
            if index + 1 == len(bounds):
                break  # the last slice: everything goes out below
            yield from emitter.emit(window, int(bounds[index + 1]))
            if window.rows > max_window_rows:  # none of them can go out yet: to disk
                emitter.runs.add(window.take_all(sort=False))
                report.spilled_runs += 1
        yield from emitter.emit(window, None)
    finally:
        runs = emitter.runs
        report.spilled_rows = runs.spilled_rows
        report.run_merges = runs.merges
        report.peak_open_runs = max(report.peak_open_runs, runs.peak_open)
        runs.close()


@dataclass
class _Emitter:
    """Hands out the rows that may go out: from the window alone, or merged with the runs."""

    schema: pa.Schema
    runs: SpilledRuns
    mover: Mover

    def emit(self, window: _Window, bound: int | None) -> Iterator[OrderedBatch]:
        """Every row with ts_ns < ``bound`` (all rows when None) not handed out yet."""
        ready = window.take_all() if bound is None else window.release_below(bound)
        if self.runs.pending_rows == 0:
            yield from self._split(ready)
            return
        for table in self.runs.merge_below(bound, ready):
            yield from self._split(coded_like(table, self.schema))

    def _split(self, table: pa.Table) -> Iterator[OrderedBatch]:
        """Sorted table -> OrderedBatches of at most a slice, without the carried columns."""
        for batch in table.combine_chunks().to_batches(max_chunksize=SLICE_ROWS):
            if batch.num_rows == 0:
                continue
            late = batch.column(LATE_FIELD.name).to_numpy().astype(np.uint64, copy=False)
            moved = self.mover.moved(
                batch.column(ARRIVAL_FIELD.name).to_numpy(), batch.column("cpu").to_numpy()
            )
            rows = batch.drop_columns([LATE_FIELD.name, ARRIVAL_FIELD.name])
            yield OrderedBatch(rows, late, moved)


@dataclass
class StreamShape:
    """What the first pass saw of the CPUs' streams, loss records included."""

    newest: dict[int, int] = field(default_factory=dict)
    """Per CPU seen, the newest stamp of its rows."""
    rows_out_of_order: int = 0
    """Rows (samples or loss records) stamped before an earlier row of their CPU."""

    @property
    def cpus(self) -> int:
        """How many CPUs the rows came from."""
        return len(self.newest)


def later_minimums(
    reader: CaptureReader, report: OrderReport, shape: StreamShape | None = None
) -> np.ndarray:
    """First pass: for slice i, the smallest ts_ns of slices i..end (per-CPU order checked).

    ``shape``, if given, learns the CPUs seen and whether each kept its order."""
    shape = shape if shape is not None else StreamShape()
    minimums: list[int] = []
    # The newest sample stamp per CPU, for the disorder note. Until a loss record
    # comes it is the newest stamp of every row, so the shape's dict serves both.
    highs = shape.newest
    for part in scan_columns(reader, ("cpu", "ts_ns", "kind")):
        ts = u64(part, "ts_ns")
        minimums.append(int(ts.min()))
        sample = sample_mask(part)
        cpu = part.column("cpu").to_numpy()
        if highs is shape.newest and not sample.all():
            highs = dict(highs)  # from here on the two differ
        every_row = _behind_per_cpu(cpu, ts, shape.newest)
        shape.rows_out_of_order += sum(every_row.values())
        if highs is shape.newest:
            _add_disorder(report, every_row)
        else:
            _count_cpu_disorder(cpu[sample], ts[sample], highs, report)
    if not minimums:
        return np.zeros(0, dtype=np.uint64)
    values = np.array(minimums, dtype=np.uint64)
    return np.minimum.accumulate(values[::-1])[::-1]


def _count_cpu_disorder(
    cpu: np.ndarray, ts: np.ndarray, highs: dict[int, int], report: OrderReport
) -> None:
    """Count samples older than an earlier sample of the same CPU (carrying across slices)."""
    _add_disorder(report, _behind_per_cpu(cpu, ts, highs))


def _add_disorder(report: OrderReport, found: dict[int, int]) -> None:
    for which, behind in found.items():
        report.cpu_disorder[which] = report.cpu_disorder.get(which, 0) + behind


def _behind_per_cpu(cpu: np.ndarray, ts: np.ndarray, highs: dict[int, int]) -> dict[int, int]:
    """Per CPU, the rows stamped before an earlier row of that CPU; ``highs`` carries the
    newest stamp of each CPU from slice to slice."""
    found: dict[int, int] = {}
    if len(cpu) == 0:
        return found
    present = np.flatnonzero(np.bincount(cpu))
    if len(present) <= FEW_CPUS:  # a mask per CPU beats sorting the slice by CPU
        groups = [(int(c), ts[cpu == c]) for c in present]
    else:
        order = np.argsort(cpu, kind="stable")
        cpus, stamps = cpu[order], ts[order]
        edges = [0, *(np.flatnonzero(cpus[1:] != cpus[:-1]) + 1).tolist(), len(cpus)]
        groups = [(int(cpus[a]), stamps[a:b]) for a, b in itertools.pairwise(edges)]
    for which, group in groups:
        carry = highs.get(which, 0)
        # The newest stamp seen up to each sample, itself included: a sample is behind
        # exactly when it is below that (it cannot be below itself).
        running = np.maximum.accumulate(group)
        np.maximum(running, np.uint64(carry), out=running)
        behind = int(np.count_nonzero(group < running))
        if behind:
            found[which] = behind
        highs[which] = int(running[-1])
    return found


class _Window:
    """Rows read but not yet emitted: the batches that hold them, and their sort keys.

    Each row is copied once, when it is emitted: held rows stay where they
    were read and are picked out of the batches by position. A batch is let
    go once none of its rows is held; if a few held rows keep many batches
    alive, those rows are compacted into one batch.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []
        self.batch_rows = 0
        """Rows in ``batches``, held or not."""
        empty = np.zeros(0, dtype=np.uint64)
        self.ts, self.cpu, self.seq = empty, empty, empty
        self.where = np.zeros(0, dtype=np.int64)
        """Position of each held row in the concatenated ``batches``."""

    @property
    def rows(self) -> int:
        """Rows held."""
        return len(self.where)

    def add(self, batch: pa.RecordBatch) -> None:
        ts, cpu, seq = sort_keys(batch)
        start = self.batch_rows
        self.ts = np.concatenate((self.ts, ts))
        self.cpu = np.concatenate((self.cpu, cpu))
        self.seq = np.concatenate((self.seq, seq))
        self.where = np.concatenate((self.where, np.arange(start, start + len(ts))))
        self.batches.append(batch)
        self.batch_rows += len(ts)

    def take_all(self, *, sort: bool = True) -> pa.Table:
        """Everything held (sorted unless ``sort`` is False), leaving the window empty."""
        order = sort_order(self.ts, self.cpu, self.seq) if sort else slice(None)
        table = self._take(self.where[order])
        self._keep(np.zeros(self.rows, dtype=bool))
        return table

    def release_below(self, bound: int) -> pa.Table:
        """Rows with ts_ns < ``bound``, sorted; the rest stay held."""
        below = self.ts < np.uint64(bound)
        ready = np.flatnonzero(below)
        order = ready[sort_order(self.ts[ready], self.cpu[ready], self.seq[ready])]
        table = self._take(self.where[order])
        self._keep(~below)
        return table

    def _take(self, positions: np.ndarray) -> pa.Table:
        table = pa.Table.from_batches(self.batches, schema=self.schema)
        empty = self._null_columns()
        merged = {i for i, f in enumerate(self.schema) if merged_by_concatenation(f)} - empty
        if not merged and not empty:
            return table.take(pa.array(positions, pa.int64()))
        apart = sorted(merged | empty)
        kept = table.drop_columns([self.schema.field(i).name for i in apart])
        taken = kept.take(pa.array(positions, pa.int64()))
        for index in apart:  # in schema order, so each goes back where it was
            field = self.schema.field(index)
            if index in empty:
                column = pa.nulls(len(positions), field.type)
            else:
                columns = [b.column(index) for b in self.batches]
                column = gathered_dictionary(field, columns, positions)
            taken = taken.add_column(index, field, column)
        return taken

    def _null_columns(self) -> set[int]:
        """The columns null in every held batch (a text replay's body columns, where the
        bodies were made before the sort): made again, not copied row by row."""
        if not self.batch_rows:
            return set()
        batches = self.batches
        return {
            index
            for index, field in enumerate(self.schema)
            if field.nullable and all(b.column(index).null_count == b.num_rows for b in batches)
        }

    def _keep(self, held: np.ndarray) -> None:
        """Hold only the rows where ``held`` is set; let go of batches no longer needed."""
        self.ts, self.cpu, self.seq = self.ts[held], self.cpu[held], self.seq[held]
        self.where = self.where[held]
        if not len(self.where):
            self.batches, self.batch_rows = [], 0
            return
        first = int(self.where[0])  # positions only ever grow along the window
        dropped = 0
        while dropped + self.batches[0].num_rows <= first:
            dropped += self.batches.pop(0).num_rows
        if dropped:
            self.where -= dropped
            self.batch_rows -= dropped
        if self.batch_rows > COMPACT_FACTOR * max(self.rows, SLICE_ROWS):
            self._compact()

    def _compact(self) -> None:
        """Copy the held rows into one batch, in the order they were read (source
        dictionaries cut down to what those rows use)."""
        table = self._take(self.where).combine_chunks()
        for index, kept in enumerate(self.schema):
            if merged_by_concatenation(kept):
                column = used_entries_only(table.column(index).chunk(0))
                table = table.set_column(index, kept, column)
        self.batches = table.to_batches()
        self.batch_rows = table.num_rows
        self.where = np.arange(table.num_rows, dtype=np.int64)
