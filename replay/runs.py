"""Sorted runs spilled to temporary Arrow files, and their k-way merge.

The exact time sort falls back to this when the rows it must hold back would
exceed its memory bound. Runs are written uncompressed and read back through
a memory map, so merging keeps only page-cache-backed blocks, never the runs
themselves, in memory. The merge is block-wise and vectorised: each step
emits every row not greater than the smallest "last key of the current block"
among runs that have more blocks, so no later block can hold a smaller key.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa

from ebcap.closing import ClosesOnExit
from ebcap.errors import ClosedError
from ebcap.replay.scan import SLICE_ROWS, u64

SORT_KEY: Final = ("ts_ns", "cpu", "seq")
"""The total order of ``--sorted``: time, ties by CPU, then by arrival."""

Key = tuple[int, int, int]


def sort_keys(table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def count_not_above(keys: tuple[np.ndarray, np.ndarray, np.ndarray], start: int, bound: Key) -> int:
    """How many rows from ``start`` of a sorted block have key <= ``bound``."""
    ts, cpu, seq = (k[start:] for k in keys)
    bt, bc, bs = (np.uint64(v) for v in bound)
    at_most = (ts < bt) | ((ts == bt) & ((cpu < bc) | ((cpu == bc) & (seq <= bs))))
    return int(np.count_nonzero(at_most))


@dataclass
class _Cursor:
    """Reading position in one run file."""

    reader: pa.ipc.RecordBatchFileReader
    source: pa.MemoryMappedFile
    index: int = -1
    block: pa.RecordBatch | None = None
    keys: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    offset: int = 0

    def advance(self) -> bool:
        """Load the next non-empty block; False when the run is exhausted."""
        while self.index + 1 < self.reader.num_record_batches:
            self.index += 1
            block = self.reader.get_batch(self.index)
            if block.num_rows:
                self.block, self.keys, self.offset = block, sort_keys(block), 0
                return True
        self.block = self.keys = None
        return False

    @property
    def has_more_blocks(self) -> bool:
        return self.index + 1 < self.reader.num_record_batches

    def last_key(self) -> Key:
        if self.keys is None:
            raise ClosedError("run cursor has no block")
        return (int(self.keys[0][-1]), int(self.keys[1][-1]), int(self.keys[2][-1]))


class SpilledRuns(ClosesOnExit):
    """A temporary directory of sorted runs; removed on :meth:`close`."""

    def __init__(self, schema: pa.Schema, directory: str | Path | None = None) -> None:
        self.schema = schema
        self._dir: Path | None = Path(tempfile.mkdtemp(prefix="ebcap-sort-", dir=directory))
        self.paths: list[Path] = []
        self.rows = 0

    def _require(self) -> Path:
        if self._dir is None:
            raise ClosedError("spilled runs are closed")
        return self._dir

    def add(self, table: pa.Table) -> None:
        """Sort ``table`` and write it as one run."""
        directory = self._require()
        if table.num_rows == 0:
            return
        path = directory / f"run-{len(self.paths):06d}.arrow"
        ordered = sorted_table(table)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
            for batch in ordered.to_batches(max_chunksize=SLICE_ROWS):
                writer.write_batch(batch)
        self.paths.append(path)
        self.rows += table.num_rows

    def merge(self) -> Iterator[pa.Table]:
        """All rows of all runs in key order, a block-bounded table at a time."""
        self._require()
        cursors: list[_Cursor] = []
        try:
            for path in self.paths:
                source = pa.memory_map(str(path))
                cursor = _Cursor(pa.ipc.open_file(source), source)
                cursors.append(cursor)
            live = [c for c in cursors if c.advance()]
            while live:
                yield _merge_step(live)
                live = [c for c in live if c.block is not None]
        finally:
            for cursor in cursors:
                cursor.source.close()

    def close(self) -> None:
        """Delete the run files. Idempotent."""
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _merge_step(live: list[_Cursor]) -> pa.Table:
    """Emit every row no later block can undercut; advance the cursors."""
    waiting = [c.last_key() for c in live if c.has_more_blocks]
    bound = min(waiting) if waiting else None
    parts: list[pa.RecordBatch] = []
    for cursor in live:
        if cursor.block is None or cursor.keys is None:
            continue
        remaining = cursor.block.num_rows - cursor.offset
        n = remaining if bound is None else count_not_above(cursor.keys, cursor.offset, bound)
        if n:
            parts.append(cursor.block.slice(cursor.offset, n))
            cursor.offset += n
        if cursor.offset == cursor.block.num_rows:
            cursor.advance()
    return sorted_table(pa.Table.from_batches(parts, schema=live[0].reader.schema))
