"""Lateness: how far back in time an event went when it was delivered.

Definition, used everywhere in ebcap (replay markers, ``ebcap reorder``):
in arrival order (``seq``), a row *i* is **late** if
``ts_ns[i] < max(ts_ns[j])`` over the samples *j* delivered before it, and
its **lateness** is that maximum minus ``ts_ns[i]``. The first sample is
never late; an equal timestamp is not late.

A ``lost`` row can be late too: its ``ts_ns`` is when the kernel wrote the
loss record (or when ebcap read the drop counter), and the sort places it
by that time like any row, so replay marks it when it came after samples
stamped later. It never raises the maximum, though: a drop counter read
at the end of a drain is stamped after the samples of that drain, and
would make the next round's samples look late when they are not.
``ebcap reorder`` measures samples only.

A consumer that sorts online needs a reorder window at least as long as the
largest lateness, which is why this number is the one to look at.
"""

from __future__ import annotations

import numpy as np


class LatenessTracker:
    """The running maximum of sample timestamps across consecutive slices."""

    def __init__(self) -> None:
        self.high = 0
        """Largest sample timestamp seen so far (0 before the first sample)."""

    def prior_max(self, ts: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """For each row, the largest sample timestamp delivered before it; advances the carry."""
        if len(ts) == 0:
            return np.zeros(0, dtype=np.uint64)
        stamps = np.where(sample, ts, np.uint64(0)).astype(np.uint64, copy=False)
        running = np.maximum.accumulate(stamps)
        prior = np.empty_like(running)
        prior[0] = self.high
        prior[1:] = running[:-1]
        np.maximum(prior, np.uint64(self.high), out=prior)
        self.high = max(self.high, int(running[-1]))
        return prior

    def update(self, ts: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """Lateness in ns of each row (sample or loss) of the next slice (0 where not late)."""
        prior = self.prior_max(ts, sample)
        late = ts < prior
        return np.where(late, prior - ts, np.uint64(0)).astype(np.uint64, copy=False)
