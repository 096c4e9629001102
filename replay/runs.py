"""Sorted runs spilled to temporary files, read back through bounded buffers, and merged.

The exact time sort spills the rows it must hold back when they exceed its
memory bound. A run is a sorted Arrow IPC file, LZ4-compressed, in blocks
of :data:`RUN_BLOCK_ROWS` rows; dictionary columns are stored plain, so no
block carries the dictionary of its whole run. A run is read one block at a
time through an ordinary file (no memory map that would keep every page it
touched), so memory holds one block per open run, and a run's file is
deleted as soon as its last row is out.

At most :data:`MAX_OPEN_RUNS` runs exist at once. Runs of about the same
size are merged :data:`MERGE_WIDTH` at a time into one (what is left of
them), like the levels of a log-structured merge: every row is rewritten
about log_WIDTH(spilled rows / block) times, and merging never needs more
than MAX_OPEN_RUNS blocks in memory.

The merge is block-wise and vectorised: each step emits every row not
greater than the smallest "last key of the current block" among sources
that have more blocks, so no later block can hold a smaller key.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa

from ebcap.closing import ClosesOnExit
from ebcap.errors import ClosedError
from ebcap.replay.dictionaries import plain_columns, plain_schema
from ebcap.replay.scan import u64

SORT_KEY: Final = ("ts_ns", "cpu", "seq")
"""The total order of ``--sorted``: time, ties by CPU, then by arrival."""
RUN_BLOCK_ROWS: Final = 8192
"""Rows per block of a run: what one open run keeps in memory."""
MAX_OPEN_RUNS: Final = 16
"""Runs that may exist at once; more are merged first."""
MERGE_WIDTH: Final = 4
"""Runs of one size class merged into one at a time."""
RUN_COMPRESSION: Final = "lz4"
"""Cheap to write and read back; the spill is a copy of the rows held, not of the file."""

Key = tuple[int, int, int]
Keys = tuple[np.ndarray, np.ndarray, np.ndarray]


def sort_keys(table: pa.Table | pa.RecordBatch) -> Keys:
    """The (ts_ns, cpu, seq) columns as numpy arrays."""
    if isinstance(table, pa.Table):
        ts, cpu, seq = (
            table.column(name).to_numpy().astype(np.uint64, copy=False) for name in SORT_KEY
        )
        return ts, cpu, seq
    return u64(table, "ts_ns"), u64(table, "cpu"), u64(table, "seq")


def sort_order(ts: np.ndarray, cpu: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Indices that sort rows by (ts_ns, cpu, seq)."""
    return np.lexsort((seq, cpu, ts))


def sorted_table(table: pa.Table) -> pa.Table:
    """``table`` sorted by the sort key (one chunk)."""
    if table.num_rows == 0:
        return table
    return table.take(pa.array(sort_order(*sort_keys(table)))).combine_chunks()


def count_ready(keys: Keys, start: int, limit: Key | None, bound: int | None) -> int:
    """How many rows from ``start`` of a sorted block have key <= ``limit`` and ts < ``bound``."""
    ts, cpu, seq = (k[start:] for k in keys)
    ready = np.ones(len(ts), dtype=bool)
    if limit is not None:
        lt, lc, ls = (np.uint64(v) for v in limit)
        ready &= (ts < lt) | ((ts == lt) & ((cpu < lc) | ((cpu == lc) & (seq <= ls))))
    if bound is not None:
        ready &= ts < np.uint64(bound)
    return int(np.count_nonzero(ready))


class _Cursor:
    """Reading position in a sorted source of blocks: the current block and where in it."""

    def __init__(self, blocks: int, load: Callable[[int], pa.RecordBatch], rows: int) -> None:
        self.blocks = blocks
        self.load = load
        self.remaining = rows
        self.index = -1
        self.block: pa.RecordBatch | None = None
        self.keys: Keys | None = None
        self.offset = 0
        self.advance()

    def advance(self) -> bool:
        """Load the next non-empty block; False when the source is exhausted."""
        self.block = self.keys = None
        while self.index + 1 < self.blocks:
            self.index += 1
            block = self.load(self.index)
            if block.num_rows:
                self.block, self.keys, self.offset = block, sort_keys(block), 0
                return True
        return False

    @property
    def has_more_blocks(self) -> bool:
        return self.index + 1 < self.blocks

    def last_key(self) -> Key:
        if self.keys is None:
            raise ClosedError("run cursor has no block")
        return (int(self.keys[0][-1]), int(self.keys[1][-1]), int(self.keys[2][-1]))

    def take(self, limit: Key | None, bound: int | None) -> pa.RecordBatch | None:
        """The rows of the current block up to ``limit`` and below ``bound``; moves past them."""
        if self.block is None or self.keys is None:
            return None
        n = count_ready(self.keys, self.offset, limit, bound)
        if n == 0:
            return None
        rows = self.block.slice(self.offset, n)
        self.offset += n
        self.remaining -= n
        if self.offset == self.block.num_rows:
            self.advance()
        return rows


class _Run:
    """One run file; opened on first read, one block of it in memory at a time."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path = path
        self.rows = rows
        self._file: pa.NativeFile | None = None
        self._cursor: _Cursor | None = None

    @property
    def remaining(self) -> int:
        return self.rows if self._cursor is None else self._cursor.remaining

    def cursor(self) -> _Cursor:
        if self._cursor is None:
            self._file = pa.OSFile(str(self.path), "rb")
            reader = pa.ipc.open_file(self._file)
            self._cursor = _Cursor(reader.num_record_batches, reader.get_batch, self.rows)
        return self._cursor

    def delete(self) -> None:
        self._cursor = None
        file, self._file = self._file, None
        if file is not None:
            file.close()
        self.path.unlink(missing_ok=True)


def table_cursor(table: pa.Table, block_rows: int) -> _Cursor:
    """A sorted in-memory table read like a run."""
    blocks = table.to_batches(max_chunksize=block_rows)
    return _Cursor(len(blocks), blocks.__getitem__, table.num_rows)


def merge_step(cursors: list[_Cursor], bound: int | None) -> pa.Table | None:
    """The next rows in key order (all with ts < ``bound``), or None when there are none."""
    waiting = [c.last_key() for c in cursors if c.block is not None and c.has_more_blocks]
    limit = min(waiting) if waiting else None
    parts = [part for c in cursors if (part := c.take(limit, bound)) is not None]
    if not parts:
        return None
    return sorted_table(pa.Table.from_batches(parts))


class SpilledRuns(ClosesOnExit):
    """Sorted runs in a private temporary directory (made on the first spill, removed on
    :meth:`close`)."""

    def __init__(
        self,
        schema: pa.Schema,
        directory: str | Path | None = None,
        *,
        block_rows: int | None = None,
    ) -> None:
        self.schema = plain_schema(schema)
        self.parent = directory
        self.block_rows = block_rows or RUN_BLOCK_ROWS
        self._dir: Path | None = None
        self._closed = False
        self.runs: list[_Run] = []
        self.written = 0
        """Runs written, merges included."""
        self.spilled_rows = 0
        """Rows spilled by :meth:`add` (rows rewritten by merges not counted again)."""
        self.merges = 0
        self.peak_open = 0

    @property
    def pending_rows(self) -> int:
        """Rows spilled and not merged out yet."""
        return sum(run.remaining for run in self.runs)

    def _directory(self) -> Path:
        if self._closed:
            raise ClosedError("spilled runs are closed")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ebcap-sort-", dir=self.parent))
        return self._dir

    def add(self, table: pa.Table) -> None:
        """Sort ``table`` and write it as one run (merging runs if there are too many)."""
        if table.num_rows == 0:
            return
        self.spilled_rows += table.num_rows
        self._write(iter([sorted_table(table)]))
        self._limit()

    def _write(self, tables: Iterator[pa.Table]) -> None:
        path = self._directory() / f"run-{self.written:06d}.arrow"
        rows = 0
        options = pa.ipc.IpcWriteOptions(compression=RUN_COMPRESSION)
        with (
            pa.OSFile(str(path), "wb") as sink,
            pa.ipc.new_file(sink, self.schema, options=options) as writer,
        ):
            for table in tables:
                plain = plain_columns(table)
                for batch in plain.to_batches(max_chunksize=self.block_rows):
                    writer.write_batch(batch)
                    rows += batch.num_rows
        self.runs.append(_Run(path, rows))
        self.written += 1
        self.peak_open = max(self.peak_open, len(self.runs))

    def _limit(self) -> None:
        """Merge runs of one size class MERGE_WIDTH at a time, and while there are too many."""
        while True:
            group = self._full_class()
            if group is None and len(self.runs) > MAX_OPEN_RUNS:
                group = sorted(self.runs, key=lambda run: run.remaining)[:MERGE_WIDTH]
            if group is None:
                return
            cursors = [run.cursor() for run in group]
            self._write(_steps(cursors, None))
            self.merges += 1
            for run in group:
                run.delete()
                self.runs.remove(run)

    def _full_class(self) -> list[_Run] | None:
        """MERGE_WIDTH runs of the smallest size class that has that many, if any."""
        classes: dict[int, list[_Run]] = {}
        for run in self.runs:
            blocks = max(1, math.ceil(run.remaining / self.block_rows))
            classes.setdefault(int(math.log(blocks, MERGE_WIDTH) + 1e-9), []).append(run)
        full = [runs for _, runs in sorted(classes.items()) if len(runs) >= MERGE_WIDTH]
        return full[0][:MERGE_WIDTH] if full else None

    def merge_below(self, bound: int | None, ready: pa.Table) -> Iterator[pa.Table]:
        """Every row of the runs and of ``ready`` (sorted, in memory) with ts < ``bound``
        (all rows when None), in key order, a few blocks at a time; columns plain."""
        cursors = [run.cursor() for run in self.runs]
        if ready.num_rows:
            cursors.append(table_cursor(plain_columns(ready), self.block_rows))
        yield from _steps(cursors, bound)
        for run in [run for run in self.runs if run.remaining == 0]:
            run.delete()
            self.runs.remove(run)

    def close(self) -> None:
        """Delete the run files. Idempotent."""
        self._closed = True
        for run in self.runs:
            run.delete()
        self.runs = []
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _steps(cursors: list[_Cursor], bound: int | None) -> Iterator[pa.Table]:
    live = [c for c in cursors if c.block is not None]
    while live:
        table = merge_step(live, bound)
        if table is None:
            return
        yield table
        live = [c for c in live if c.block is not None]
