"""Counting the rows of a capture: sample records and lost events, per CPU.

The writer counts every row it is given (the totals it stores at close come
from here, and the recorder shows the same counts while it runs); ``ebcap
info`` and ``ebcap recover`` count the rows of files whose totals are missing
or no longer describe the rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ebcap.format import schema as fs


def sample_mask(batch: pa.RecordBatch) -> np.ndarray:
    """True for the sample rows of ``batch`` (False for lost records)."""
    codes = batch.column("kind").indices.to_numpy(zero_copy_only=False)
    return np.asarray(codes == fs.KIND_SAMPLE_CODE)


class CpuCounts:
    """Per-CPU sample records and lost-event sums of the rows seen, for the totals."""

    def __init__(self) -> None:
        self.events: dict[int, int] = {}
        self.lost: dict[int, int] = {}

    def add(self, batch: pa.RecordBatch) -> np.ndarray:
        """Count the rows of ``batch``; return its sample mask."""
        cpu = batch.column("cpu").to_numpy()
        is_sample = sample_mask(batch)
        _add_bincount(self.events, np.bincount(cpu[is_sample]))
        lost_rows = ~is_sample
        if lost_rows.any():
            lost = batch.column("lost").to_numpy()[lost_rows]
            for c, n in zip(cpu[lost_rows].tolist(), lost.tolist(), strict=True):
                self.lost[c] = self.lost.get(c, 0) + n
        return is_sample

    def totals(self) -> dict[str, Any]:
        """The event and lost totals (sums and per CPU) as stored in the file."""
        return {
            fs.TOTAL_EVENTS: sum(self.events.values()),
            fs.TOTAL_LOST: sum(self.lost.values()),
            fs.TOTAL_EVENTS_PER_CPU: dict(sorted(self.events.items())),
            fs.TOTAL_LOST_PER_CPU: dict(sorted(self.lost.items())),
        }


def _add_bincount(into: dict[int, int], counts: np.ndarray) -> None:
    for c in np.flatnonzero(counts).tolist():
        into[c] = into.get(c, 0) + int(counts[c])
