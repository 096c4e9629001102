"""A distribution of non-negative integers in bounded memory: lateness (ns), displacement.

Exact while it holds at most :data:`EXACT_VALUES` distinct values (a count
per value), which covers captures whose late events are few or repeat.
Beyond that it becomes a log-bucketed histogram, the DDSketch idea: with
a = :data:`RELATIVE_ACCURACY` and g = (1 + a) / (1 - a), bucket *i* holds
the values in (g^(i-1), g^i], and a percentile is reported as its bucket's
centre 2 g^i / (g + 1), within a relative error a of the true value. That
takes log(max / min) / log(g) buckets: about 1,400 for 1 ns .. 1,000 s. Both
forms merge by adding counts. The count, minimum and maximum stay exact.

Percentiles are nearest-rank: the smallest value with at least p% of the
values at or below it (numpy's ``inverted_cdf``).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

EXACT_VALUES: Final = 65_536
"""Distinct values kept exactly; past this the distribution becomes a sketch."""
RELATIVE_ACCURACY: Final = 0.01
"""a: every percentile of a sketch is within this fraction of the true value."""
_GAMMA: Final = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA: Final = math.log(_GAMMA)
_TENTHS: Final = 10
"""Percentiles are given to a tenth (p99.9): ranks are computed in integer tenths."""


class Distribution:
    """Counts of non-negative integers: exact per value, or per logarithmic bucket."""

    def __init__(self, exact_values: int | None = None) -> None:
        self.exact_values = exact_values or EXACT_VALUES
        self.keys = np.zeros(0, dtype=np.int64)
        """Distinct values (exact) or bucket numbers (sketch; bucket -1 holds 0), sorted."""
        self.counts = np.zeros(0, dtype=np.int64)
        self.exact = True
        self.count = 0
        self.min = 0
        self.max = 0

    @property
    def kind(self) -> str:
        """How the percentiles were computed, for the report."""
        if self.exact:
            return "exact"
        return f"within {RELATIVE_ACCURACY:.0%} (log-bucket sketch)"

    def add(self, values: np.ndarray) -> None:
        """Count ``values`` (non-negative integers)."""
        if not len(values):
            return
        values = np.asarray(values).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        self.min = low if not self.count else min(self.min, low)
        self.max = max(self.max, high)
        self.count += len(values)
        keys, counts = np.unique(values if self.exact else _buckets(values), return_counts=True)
        self._merge(keys, counts)
        if self.exact and len(self.keys) > self.exact_values:
            self.exact = False
            self._merge_into_buckets()

    def _merge(self, keys: np.ndarray, counts: np.ndarray) -> None:
        merged, where = np.unique(np.concatenate((self.keys, keys)), return_inverse=True)
        self.counts = np.bincount(where, weights=np.concatenate((self.counts, counts)))
        self.counts = self.counts.astype(np.int64)
        self.keys = merged

    def _merge_into_buckets(self) -> None:
        keys, counts = _buckets(self.keys), self.counts
        self.keys, self.counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self._merge(keys, counts)

    def percentile(self, p: float) -> float:
        """The nearest-rank p-th percentile (0 when empty)."""
        if not self.count:
            return 0.0
        tenths = round(p * _TENTHS)
        rank = max(1, -(-tenths * self.count // (100 * _TENTHS)))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        key = int(self.keys[index])
        if self.exact:
            return float(key)
        return float(min(max(_centre(key), self.min), self.max))

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, counts): each distinct value, or each bucket's centre."""
        if self.exact:
            return self.keys.astype(np.float64), self.counts
        centres = np.array([_centre(int(k)) for k in self.keys], dtype=np.float64)
        return centres, self.counts

    def exact_counts(self) -> dict[int, int]:
        """Value -> count; only while exact."""
        if not self.exact:
            raise ValueError("the distribution is a sketch: no exact counts")
        return dict(zip(self.keys.tolist(), self.counts.tolist(), strict=True))


def _buckets(values: np.ndarray) -> np.ndarray:
    """Bucket of each value: ceil(log_g(v)) for v >= 1, -1 for 0."""
    positive = np.maximum(values, 1).astype(np.float64)
    index = np.ceil(np.log(positive) / _LOG_GAMMA - 1e-12).astype(np.int64)
    return np.where(values > 0, np.maximum(index, 0), -1)


def _centre(bucket: int) -> float:
    """The value reported for a bucket: within a of every value in it."""
    if bucket < 0:
        return 0.0
    if bucket == 0:
        return 1.0
    return 2 * _GAMMA**bucket / (_GAMMA + 1)
