"""Spacing drains out, so that each one carries enough events to be worth its cost.

A drain has a fixed cost in Python (the wakeup, reading ring positions,
building Arrow arrays, handing rows to the writer) of tens of microseconds
whatever it carries. With a perf buffer waking the reader every 64 events
per CPU, a busy producer causes thousands of wakeups a second, and draining
at each of them spent more time on that fixed cost than on the events: at
2 M events/s of 256 bytes, 324 ns of the drain thread's CPU per event; with
drains at least 2 ms apart, 120 ns.

The pause is kept short of a ring filling: it is cut to the time in which, at
the rate the last drain saw, a quarter of one ring would fill, and skipped
after a drain that found a quarter of a ring or more (a burst after a quiet
spell, whose rate the last interval does not show).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

MIN_DRAIN_INTERVAL_S: Final = 0.002
"""At most 500 drains a second (a perf ring of 8 MiB lasts ~15 ms at 2 M events/s)."""

RING_SHARE: Final = 0.25
"""How much of a ring may fill, at the last drain's rate, before the next drain."""


class DrainPacer:
    """Says how long to wait before the next drain.

    ``ring_bytes`` is the size of the smallest ring (one CPU's perf ring, or the
    ring buffer); the rate is estimated from the bytes the last drain read.
    """

    def __init__(
        self,
        ring_bytes: int,
        interval_s: float = MIN_DRAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ring_bytes = ring_bytes
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._started: float | None = None
        self._previous: float | None = None
        self._gap_s = 0.0

    def before_drain(self) -> None:
        """Sleep until the next drain is due; then mark its start."""
        now = self._clock()
        if self._started is not None:
            wait = self._started + self._gap_s - now
            if wait > 0:
                self._sleep(wait)
                now = self._clock()
        self._previous, self._started = self._started, now

    def after_drain(self, bytes_read: int) -> None:
        """Account the bytes the drain just took out of the rings."""
        if self._previous is None or self._started is None:
            self._gap_s = self.interval_s
            return
        share = RING_SHARE * self.ring_bytes
        if bytes_read >= share:  # a ring filling this fast is drained again at once
            self._gap_s = 0.0
            return
        elapsed = max(self._started - self._previous, 1e-6)
        rate = bytes_read / elapsed  # bytes per second the rings filled with
        self._gap_s = min(self.interval_s, share / rate) if rate > 0 else self.interval_s
