"""For each new value, how many values seen before it are greater: amortised O(log n) each.

``ebcap reorder`` needs this for displacement (earlier samples with a larger
timestamp). The values seen are kept as a few sorted arrays of decreasing
size, like the digits of a binary counter: a new chunk is sorted and merged
with its neighbour while that is at most twice as large, so every value is
merged about log2(n) times, and a query is one binary search per array.
Within a chunk, the values before each queried one are compared directly.

Values that can no longer be greater than anything still to come are
dropped (:meth:`GreaterCounter.drop_not_above`), so memory follows the
values able to displace a later one (the reorder window), not the file.
``work`` counts the element operations done, so tests can check the cost
grows like n log n and not like n squared.
"""

from __future__ import annotations

from typing import Final

import numpy as np

CHUNK_ROWS: Final = 1024
"""Values compared pairwise within one step (before they join the sorted arrays)."""
MERGE_RATIO: Final = 2
"""A sorted array is merged into the one before it while that is at most this much larger."""
MAX_LEVELS: Final = 48
"""Dropping values can leave small arrays behind; past this many, all become one."""


class GreaterCounter:
    """The values seen so far (those still able to count), in a few sorted arrays."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []
        self.work = 0
        """Element operations so far: values compared, searched for, or moved in merges."""

    def displacement(
        self, values: np.ndarray, wanted: np.ndarray, later_bound: int | None
    ) -> np.ndarray:
        """For each of ``values`` (in arrival order, added as they come) where ``wanted``, how
        many values before it are greater (0 elsewhere).

        ``later_bound``: the smallest value still to come after these (None: none
        will come); what cannot exceed it is dropped.
        """
        n = len(values)
        out = np.zeros(n, dtype=np.int64)
        rest_min = np.minimum.accumulate(values[::-1])[::-1] if n else values
        for start in range(0, n, CHUNK_ROWS):
            end = min(n, start + CHUNK_ROWS)
            chunk = values[start:end]
            rows = np.flatnonzero(wanted[start:end])
            if len(rows):
                out[start + rows] = self._greater(chunk, rows)
            self._add(chunk)
            upcoming = [int(rest_min[end])] if end < n else []
            if later_bound is not None:
                upcoming.append(later_bound)
            if upcoming:
                self.drop_not_above(min(upcoming))
            else:
                self.levels = []
        return out

    def _greater(self, chunk: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Values greater than chunk[rows]: among those held, and earlier in the chunk."""
        stamps = chunk[rows]
        count = np.zeros(len(rows), dtype=np.int64)
        for level in self.levels:
            count += len(level) - np.searchsorted(level, stamps, side="right")
        earlier = np.arange(len(chunk))[None, :] < rows[:, None]
        count += np.count_nonzero(earlier & (chunk[None, :] > stamps[:, None]), axis=1)
        self.work += len(rows) * (len(chunk) + len(self.levels))
        return count

    def _add(self, chunk: np.ndarray) -> None:
        self.levels.append(np.sort(chunk))
        self.work += len(chunk)
        while len(self.levels) > 1 and len(self.levels[-2]) <= MERGE_RATIO * len(self.levels[-1]):
            last = self.levels.pop()
            merged = np.concatenate((self.levels.pop(), last))
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self.levels.append(merged)
            self.work += len(merged)

    def drop_not_above(self, bound: int) -> None:
        """Forget values <= ``bound``: none of them can exceed a value still to come."""
        kept = []
        for level in self.levels:
            cut = int(np.searchsorted(level, np.uint64(bound), side="right"))
            if cut == len(level):
                continue
            rest = level[cut:]
            kept.append(rest.copy() if 2 * cut > len(level) else rest)  # let big bases go
            self.work += 1
        if len(kept) > MAX_LEVELS:
            whole = np.sort(np.concatenate(kept))
            self.work += len(whole)
            kept = [whole]
        self.levels = kept
