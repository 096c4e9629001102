"""Per-CPU sequence numbers checked as they stream past, in memory that follows the gaps.

A producer numbers its events per CPU from 0. What a check must say of a
recording is how many distinct numbers arrived, how many are missing below
the highest, how many arrived twice and how many came after a higher one.
Keeping every number for a sort at the end costs 8 bytes an event (3.6 GB
for a minute of a fast producer); here each CPU keeps the next number it
expects and the ranges still missing below it. An event in order with a gap
before it opens one range; an event below the expected number fills a
missing one or is a duplicate. Memory follows the gaps (one range per burst
of drops), not the events.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CpuSequence:
    """One CPU's numbers so far."""

    expected: int = 0
    """One past the highest number received."""
    received: int = 0
    """Distinct numbers received."""
    duplicates: int = 0
    out_of_order: int = 0
    """Numbers that arrived below the one before them."""
    last: int = -1
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    """Missing ranges ``[starts[i], ends[i])`` below ``expected``, sorted, disjoint."""

    @property
    def holes(self) -> int:
        """Numbers missing below the highest received."""
        return self.expected - self.received

    def add(self, seq: np.ndarray) -> None:
        """Take the numbers of one batch, in arrival order."""
        if not len(seq):
            return
        seq = seq.astype(np.int64, copy=False)
        previous = np.concatenate(([self.last], seq[:-1]))
        self.out_of_order += int(np.count_nonzero(seq < previous))
        self.last = int(seq[-1])
        if seq[0] >= self.expected and (len(seq) < 2 or (seq[1:] > seq[:-1]).all()):
            self._add_ascending(seq)
        else:
            for number in seq.tolist():
                self._add_one(number)

    def _add_ascending(self, seq: np.ndarray) -> None:
        """Numbers all above those before and increasing: only the gaps between them."""
        before = np.concatenate(([self.expected], seq[:-1] + 1))
        gap = seq > before
        self.starts += before[gap].tolist()
        self.ends += seq[gap].tolist()
        self.received += len(seq)
        self.expected = int(seq[-1]) + 1

    def _add_one(self, number: int) -> None:
        if number >= self.expected:
            if number > self.expected:
                self.starts.append(self.expected)
                self.ends.append(number)
            self.expected = number + 1
            self.received += 1
            return
        i = bisect.bisect_right(self.starts, number) - 1
        if i < 0 or number >= self.ends[i]:
            self.duplicates += 1
            return
        start, end = self.starts[i], self.ends[i]
        pieces = [(a, b) for a, b in ((start, number), (number + 1, end)) if a < b]
        self.starts[i : i + 1] = [a for a, _ in pieces]
        self.ends[i : i + 1] = [b for _, b in pieces]
        self.received += 1
