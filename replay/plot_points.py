"""The points ``ebcap reorder --plot`` draws, kept in bounded memory while the file streams.

An evenly thinned sample of (arrival index, ts_ns, cpu) for the whole
capture (the stride doubles whenever the cap is passed), and the first
events in full for a close-up where single late events show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

PLOT_POINTS: Final = 200_000
"""At most this many (arrival, timestamp) points are kept for the plot."""
ZOOM_POINTS: Final = 600
"""The first events, all kept, for a close-up where single late events show."""


@dataclass
class PlotPoints:
    """An evenly thinned sample of (arrival index, ts_ns, cpu), and the first events."""

    index: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    cpu: list[np.ndarray] = field(default_factory=list)
    stride: int = 1
    kept: int = 0
    head_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    head_cpu: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))

    def add(self, start: int, ts: np.ndarray, cpu: np.ndarray) -> None:
        """The samples at arrival positions ``start``.. (thinned to the current stride)."""
        room = ZOOM_POINTS - len(self.head_ts)
        if room > 0:
            self.head_ts = np.concatenate((self.head_ts, ts[:room]))
            self.head_cpu = np.concatenate((self.head_cpu, cpu[:room]))
        positions = np.arange(start, start + len(ts))
        pick = positions % self.stride == 0
        self.index.append(positions[pick])
        self.ts.append(ts[pick])
        self.cpu.append(cpu[pick])
        self.kept += int(pick.sum())
        if self.kept > PLOT_POINTS:
            self.stride *= 2
            index, ts_all, cpu_all = self.arrays()
            keep = index % self.stride == 0
            self.index, self.ts, self.cpu = [index[keep]], [ts_all[keep]], [cpu_all[keep]]
            self.kept = int(keep.sum())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arrival index, ts_ns, cpu) of the points kept."""

        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        return cat(self.index, np.int64), cat(self.ts, np.uint64), cat(self.cpu, np.uint16)
