"""How many events the time sort moved each row ahead of, in memory that follows the disorder.

A row *moved ahead of* N events when N rows delivered before it come after
it in time order: a late event, a tie the sort breaks by CPU, a loss record
stamped before the samples delivered ahead of it. It is counted as rows come
out of the sort: N is the number of rows delivered before it that have not
come out yet, which is its arrival position minus how many of the positions
below it were already handed out.

Within a batch, the rows handed out earlier that were delivered after a row
are counted by :func:`earlier_greater`. Across batches, the positions
handed out are kept as disjoint intervals. Output in arrival
order keeps them one interval, ``[0, n)``; an event delivered very late adds
one more. Memory follows how scattered the handed-out positions are (the
disorder), not the length of the file.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ebcap.replay.inversions import GreaterCounter

BAND: Final = 128
"""Rows looked back over directly when counting earlier rows delivered after a row."""
PIECE_ROWS: Final = 4096
"""Rows compared against their band at a time (bounds the comparison matrix)."""
PAIR_BUDGET: Final = 64
"""Far-back comparisons allowed per row before the general counter takes over."""
MAX_GROUPS: Final = 128
"""CPUs in a batch up to which rows are counted one CPU at a time (a binary search each)."""


class Mover(Protocol):
    """Counts, for rows handed out in time order, the earlier-delivered rows still to come."""

    def moved(self, arrival: np.ndarray, cpu: np.ndarray | None = None) -> np.ndarray: ...


class TwoCpuMover:
    """:class:`MoveCounter`'s count in closed form, for a capture of at most two CPUs whose
    rows (loss records too) each keep their CPU's order, as a perf buffer delivers them.

    A row's own CPU then has nothing delivered before it still to come. Of the other
    CPU's rows, those delivered before it are the first ``arrival - k`` (``k``: rows
    of its own CPU before it, in either order), those handed out before it the first
    ``out - k`` (``out``: its place in the output): ``max(0, arrival - out)`` remain.
    """

    def __init__(self) -> None:
        self.handed_out = 0

    def moved(self, arrival: np.ndarray, cpu: np.ndarray | None = None) -> np.ndarray:
        arrival = np.asarray(arrival, dtype=np.int64)
        out = np.arange(self.handed_out, self.handed_out + len(arrival), dtype=np.int64)
        self.handed_out += len(arrival)
        return np.maximum(arrival - out, 0)


class MoveCounter:
    """Counts, for rows handed out in time order, the earlier-delivered rows still to come."""

    def __init__(self) -> None:
        self.starts = np.zeros(0, dtype=np.int64)
        self.ends = np.zeros(0, dtype=np.int64)
        """Handed-out positions: ``[starts[i], ends[i])``, sorted, disjoint, not touching."""
        self.before = np.zeros(0, dtype=np.int64)
        """Positions in the intervals before interval i."""

    @property
    def intervals(self) -> int:
        """How many intervals the handed-out positions form (what memory follows)."""
        return len(self.starts)

    def moved(self, arrival: np.ndarray, cpu: np.ndarray | None = None) -> np.ndarray:
        """For rows handed out in this order (their arrival positions), how many rows
        delivered before each are still to come; records them as handed out.

        ``cpu``: each row's CPU, which makes the count cheap while every CPU's rows
        keep their arrival order (see :func:`earlier_greater`)."""
        arrival = np.asarray(arrival, dtype=np.int64)
        # Rows delivered before each that had not come out when this batch began, less
        # those earlier in the batch that were delivered before it too.
        earlier_below = np.arange(len(arrival)) - earlier_greater(arrival, cpu)
        out = arrival - self.handed_out_below(arrival) - earlier_below
        self._add(arrival)
        return out

    def handed_out_below(self, positions: np.ndarray) -> np.ndarray:
        """How many handed-out positions are below each of ``positions``."""
        if not len(self.starts):
            return np.zeros(len(positions), dtype=np.int64)
        i = np.searchsorted(self.starts, positions, side="right") - 1
        inside = np.maximum(i, 0)
        width = self.ends[inside] - self.starts[inside]
        count = self.before[inside] + np.clip(positions - self.starts[inside], 0, width)
        return np.where(i >= 0, count, 0)

    def _add(self, positions: np.ndarray) -> None:
        """Mark ``positions`` (distinct, not yet handed out) as handed out."""
        if not len(positions):
            return
        points = np.sort(positions, kind="stable")  # a merge of a few ascending runs
        breaks = np.flatnonzero(np.diff(points) != 1) + 1
        first = np.concatenate(([0], breaks))
        last = np.concatenate((breaks - 1, [len(points) - 1]))
        starts = np.concatenate((self.starts, points[first]))
        ends = np.concatenate((self.ends, points[last] + 1))
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        reach = np.maximum.accumulate(ends)
        opens = np.concatenate(([True], starts[1:] > reach[:-1]))  # touching intervals join
        heads = np.flatnonzero(opens)
        self.starts = starts[heads]
        self.ends = np.maximum.reduceat(ends, heads)
        lengths = self.ends - self.starts
        self.before = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)


def earlier_greater(values: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """For each i, how many of values[:i] are greater than values[i] (values distinct).

    With ``groups`` (the rows' CPUs) where each group's values increase, as a
    CPU's events keep their delivery order through the time sort, the count
    is one binary search per group (:func:`_earlier_greater_by_group`).
    Otherwise: rows handed out in time order are mostly in arrival order: only a row
    below the running maximum (a descent) has any. Those within :data:`BAND`
    rows before it are compared directly; those further back can only be
    values greater than something more than BAND rows after them, usually
    few (one event delivered very late is one), compared with the rows
    that need them. When there are many, the general counter does it all.
    """
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    if n < 2:
        return out
    running = np.maximum.accumulate(values)
    descents = np.flatnonzero(values[1:] < running[:-1]) + 1
    if not len(descents):
        return out
    if groups is not None:
        by_group = _earlier_greater_by_group(values, groups, descents)
        if by_group is not None:
            return by_group
    padded = np.concatenate((np.full(BAND, -1, dtype=np.int64), values))
    windows = sliding_window_view(padded, BAND)  # row i: values[i - BAND : i]
    for start in range(0, len(descents), PIECE_ROWS):
        rows = descents[start : start + PIECE_ROWS]
        out[rows] = np.count_nonzero(windows[rows] > values[rows][:, None], axis=1)
    far = descents[descents > BAND]
    far = far[running[far - BAND - 1] > values[far]]
    if not len(far):
        return out
    later_min = np.minimum.accumulate(values[::-1])[::-1]
    sources = np.flatnonzero(values[: n - BAND - 1] > later_min[BAND + 1 :])
    if len(sources) * len(far) > PAIR_BUDGET * n:
        wanted = np.zeros(n, dtype=bool)
        wanted[descents] = True
        return GreaterCounter().displacement(values.astype(np.uint64), wanted, None)
    for start in range(0, len(far), PIECE_ROWS):
        rows = far[start : start + PIECE_ROWS]
        behind = sources[None, :] < (rows - BAND)[:, None]
        greater = values[sources][None, :] > values[rows][:, None]
        out[rows] += np.count_nonzero(behind & greater, axis=1)
    return out


def _earlier_greater_by_group(
    values: np.ndarray, groups: np.ndarray, descents: np.ndarray
) -> np.ndarray | None:
    """:func:`earlier_greater` when each group's values increase (None when one does not);
    ``descents``: the rows below the running maximum of those before them, the only ones
    with any.

    A row's own group contributes nothing before it. The rows of another
    group g before row i are g's first k rows, increasing, so those greater
    than values[i] number k less those below it: max(0, k - #(g's values <
    values[i])), a binary search over g's values.
    """
    present = np.flatnonzero(np.bincount(groups))
    if len(present) > MAX_GROUPS:
        return None
    out = np.zeros(len(values), dtype=np.int64)
    for group in present:
        mine = groups == group
        own = values[mine]
        if len(own) > 1 and not (own[1:] > own[:-1]).all():
            return None
        rows = descents[~mine[descents]]
        before = (np.cumsum(mine) - mine)[rows]  # rows of the group before each row
        out[rows] += np.maximum(before - np.searchsorted(own, values[rows]), 0)
    return out
