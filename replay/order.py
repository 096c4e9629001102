"""The two replay orders: arrival (``seq``) and exact time order, both streaming.

Arrival order is the file order. Time order is exact, by (ts_ns, cpu, seq),
without loading the file: a first pass reads only ``ts_ns``, ``cpu`` and
``kind`` and records, for every slice, the smallest timestamp of all slices
after it. The second pass holds back only rows at or above that bound (no
later row can precede them) and emits the rest sorted, so memory follows the
reordering window, not the file. The perf buffer reorders across CPUs only,
which keeps that window small; the sort does not rely on it. If the window
would exceed ``max_window_rows`` (an event delivered very late, or a CPU whose
own stream is out of order) the rest of the file is sorted externally: sorted
runs spilled to temporary Arrow files, then merged. :class:`SortReport` says
what happened, for the CLI to tell the user.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.errors import BadFileError
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.lateness import LatenessTracker
from ebcap.replay.runs import SpilledRuns, sort_keys, sort_order
from ebcap.replay.scan import (
    SLICE_ROWS,
    is_sample,
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
"""Lateness travels with its row through the sort as this extra column."""


@dataclass
class OrderedBatch:
    """Rows in replay order, with each row's lateness in arrival order (0: on time).

    In time order a non-zero lateness means the sort moved the row earlier.
    """

    rows: pa.RecordBatch
    late_ns: np.ndarray


@dataclass
class SortReport:
    """What the time sort met and did; filled in while it runs."""

    rows: int = 0
    peak_window_rows: int = 0
    spilled_runs: int = 0
    spilled_rows: int = 0
    cpu_disorder: dict[int, int] = field(default_factory=dict)
    """CPU -> samples delivered after a later-stamped sample of the same CPU."""

    def notes(self) -> list[str]:
        """One line per noteworthy fact, for stderr."""
        out = []
        for cpu, count in sorted(self.cpu_disorder.items()):
            out.append(
                f"CPU {cpu}'s own stream is out of timestamp order ({count} events); "
                "the sort is still exact"
            )
        if self.spilled_runs:
            out.append(
                f"reordering exceeded the in-memory window: sorted {self.spilled_rows} events "
                f"externally in {self.spilled_runs} temporary runs (exact)"
            )
        return out


def arrival_order(
    reader: CaptureReader, columns: Sequence[str] | None = None
) -> Generator[OrderedBatch, None, None]:
    """The capture as delivered, checking that ``seq`` only grows.

    ``columns``: read only those and the ordering keys (seq, cpu, ts_ns, kind).
    """
    tracker = LatenessTracker()
    last = -1
    for rows in iter_slices(reader, columns=columns):
        seq = u64(rows, "seq")
        if int(seq[0]) <= last or (len(seq) > 1 and bool(np.any(seq[1:] <= seq[:-1]))):
            raise BadFileError(f"{reader.path}: seq does not increase in file order (damaged file)")
        last = int(seq[-1])
        yield OrderedBatch(rows, tracker.update(u64(rows, "ts_ns"), is_sample(rows)))


def time_order(
    reader: CaptureReader,
    *,
    max_window_rows: int = DEFAULT_MAX_WINDOW_ROWS,
    spill_dir: str | Path | None = None,
    report: SortReport | None = None,
    columns: Sequence[str] | None = None,
    prepare: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
) -> Generator[OrderedBatch, None, None]:
    """The capture sorted exactly by (ts_ns, cpu, seq), in bounded memory.

    ``columns``: read only those and the ordering keys (seq, cpu, ts_ns, kind).
    ``prepare`` turns each slice as read into what is sorted and handed out
    (it must keep the ordering keys): work done there per row is not
    carried through the sort column by column.
    """
    report = report if report is not None else SortReport()
    bounds = later_minimums(reader, report)
    read_schema = slice_schema(reader, columns)
    if prepare is not None:
        read_schema = prepare(pa.RecordBatch.from_pylist([], schema=read_schema)).schema
    schema = read_schema.append(LATE_FIELD)
    tracker = LatenessTracker()
    window = _Window(schema)
    runs: SpilledRuns | None = None
    try:
        for index, rows in enumerate(iter_slices(reader, columns=columns)):
            late = tracker.update(u64(rows, "ts_ns"), is_sample(rows))
            if prepare is not None:
                rows = prepare(rows)
            window.add(rows.append_column(LATE_FIELD, pa.array(late, pa.uint64())))
            report.rows += rows.num_rows
            report.peak_window_rows = max(report.peak_window_rows, window.rows)
            if runs is None:
                if index + 1 < len(bounds):
                    yield from _split(window.release_below(int(bounds[index + 1])))
                if window.rows > max_window_rows:
                    runs = SpilledRuns(schema, spill_dir)
            if runs is not None and window.rows >= max_window_rows:
                runs.add(window.take_all(sort=False))
        if runs is None:
            yield from _split(window.take_all())
            return
        runs.add(window.take_all(sort=False))
        report.spilled_runs, report.spilled_rows = len(runs.paths), runs.rows
        for table in runs.merge():
            yield from _split(table)
    finally:
        if runs is not None:
            runs.close()


def later_minimums(reader: CaptureReader, report: SortReport) -> np.ndarray:
    """First pass: for slice i, the smallest ts_ns of slices i..end (per-CPU order checked)."""
    minimums: list[int] = []
    highs: dict[int, int] = {}
    for part in scan_columns(reader, ("cpu", "ts_ns", "kind")):
        ts = u64(part, "ts_ns")
        minimums.append(int(ts.min()))
        sample = is_sample(part)
        cpu = part.column("cpu").to_numpy()
        if not sample.all():
            cpu, ts = cpu[sample], ts[sample]
        _count_cpu_disorder(cpu, ts, highs, report)
    if not minimums:
        return np.zeros(0, dtype=np.uint64)
    values = np.array(minimums, dtype=np.uint64)
    return np.minimum.accumulate(values[::-1])[::-1]


def _count_cpu_disorder(
    cpu: np.ndarray, ts: np.ndarray, highs: dict[int, int], report: SortReport
) -> None:
    """Count samples older than an earlier sample of the same CPU (carrying across slices)."""
    if len(cpu) == 0:
        return
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
            report.cpu_disorder[which] = report.cpu_disorder.get(which, 0) + behind
        highs[which] = int(running[-1])


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
        merged = [f.name for f in self.schema if _merged_by_concatenation(f)]
        if not merged:
            return table.take(pa.array(positions, pa.int64()))
        taken = table.drop_columns(merged).take(pa.array(positions, pa.int64()))
        for name in merged:
            index = self.schema.get_field_index(name)
            field = self.schema.field(index)
            column = _gathered_dictionary(field, [b.column(index) for b in self.batches], positions)
            taken = taken.add_column(index, field, column)
        return taken

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
        """Copy the held rows into one batch, in the order they were read."""
        table = self._take(self.where).combine_chunks()
        self.batches = table.to_batches()
        self.batch_rows = table.num_rows
        self.where = np.arange(table.num_rows, dtype=np.int64)


def _merged_by_concatenation(field: pa.Field) -> bool:
    """A source's dictionary column: batches bring their own dictionaries, maybe large.

    Arrow would unify them (hash every value) on every take; concatenating
    them and shifting the codes gives the same values without hashing. Only
    where the codes have room for that; ``kind`` has one small fixed
    dictionary and its codes mean something.
    """
    kind = field.type
    return (
        pa.types.is_dictionary(kind)
        and kind.index_type in (pa.int32(), pa.int64())
        and field.name not in fs.CORE_COLUMNS
    )


def _gathered_dictionary(
    field: pa.Field, columns: list[pa.DictionaryArray], positions: np.ndarray
) -> pa.Array:
    """The values at ``positions`` of the columns laid end to end, dictionaries concatenated."""
    kind = field.type
    if not columns:
        return pa.DictionaryArray.from_arrays(
            pa.array([], kind.index_type), pa.array([], kind.value_type)
        )
    sizes = np.array([len(column.dictionary) for column in columns], dtype=np.int64)
    shifts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    codes = np.concatenate(
        [
            pc.fill_null(c.indices, 0).to_numpy().astype(np.int64) + shift
            for c, shift in zip(columns, shifts, strict=True)
        ]
    )[positions]
    nulls = None
    if any(column.null_count for column in columns):
        valid = np.concatenate([np.asarray(column.is_valid()) for column in columns])
        nulls = ~valid[positions]
    dictionary = pa.concat_arrays([column.dictionary for column in columns])
    indices = pa.array(codes, kind.index_type, mask=nulls)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def _split(table: pa.Table) -> Iterator[OrderedBatch]:
    """Sorted table -> OrderedBatches of at most a slice, without the lateness column."""
    for batch in table.combine_chunks().to_batches(max_chunksize=SLICE_ROWS):
        if batch.num_rows == 0:
            continue
        late = batch.column(LATE_FIELD.name).to_numpy().astype(np.uint64, copy=False)
        yield OrderedBatch(batch.drop_columns([LATE_FIELD.name]), late)
