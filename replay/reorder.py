"""What reordering did to a capture: how many events came late, by how much.

Terms (see :mod:`ebcap.replay.lateness` for *late* and *lateness*):

- sample *i* is **late** if ``ts_ns[i] < max(ts_ns[0..i-1])`` over the samples
  delivered before it; its **lateness** is that maximum minus ``ts_ns[i]``.
- its **displacement** is the number of samples delivered before it with a
  larger timestamp: how many places an exact sort moves it back.
- it is **late against** the sample that set that maximum; the CPU pair
  (late CPU, CPU of the sample it is late against) shows which rings
  overtook which: a CPU late against itself means its own ring was out of
  order, which a perf buffer never does.
- its **round distance** is its drain round minus the round of the sample
  that set the maximum it is late against: 0 means the reader's walk over
  the CPUs within one drain reordered it, 1 or more that it waited in its
  ring across drains.

The reorder window a consumer sorting online would have needed is the
largest lateness (in ns) and the largest displacement (in events).

Two passes in bounded memory: the first finds, for each slice, the smallest
timestamp still to come; the second keeps only earlier timestamps above that
bound (the only ones a later sample can be displaced by).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.lateness import LatenessTracker
from ebcap.replay.order import OrderReport, later_minimums
from ebcap.replay.scan import is_sample, iter_slices, u64

CHUNK_ROWS: Final = 1024
"""Rows compared pairwise when counting displacement within a slice."""
PLOT_POINTS: Final = 200_000
"""At most this many (arrival, timestamp) points are kept for the plot."""
ZOOM_POINTS: Final = 600
"""The first events, all kept, for a close-up where single late events show."""
PERCENTILES: Final = (50.0, 99.0, 99.9)


@dataclass
class PlotPoints:
    """An evenly thinned sample of (arrival index, ts_ns, cpu), plus every late event's lateness."""

    index: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    cpu: list[np.ndarray] = field(default_factory=list)
    stride: int = 1
    kept: int = 0
    head_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    head_cpu: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))

    def add(self, start: int, ts: np.ndarray, cpu: np.ndarray) -> None:
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
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        return cat(self.index, np.int64), cat(self.ts, np.uint64), cat(self.cpu, np.uint16)


@dataclass
class ReorderReport:
    """The numbers of ``ebcap reorder``; :meth:`to_dict` is its JSON form."""

    transport: str
    samples: int = 0
    late: int = 0
    lateness_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    displacement: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    per_cpu: dict[int, dict[str, int]] = field(default_factory=dict)
    cpu_pairs: dict[tuple[int, int], dict[str, int]] = field(default_factory=dict)
    rounds: int = 0
    rounds_with_late: int = 0
    max_late_in_round: int = 0
    round_distance: Counter[int] = field(default_factory=Counter)
    cpu_disorder: dict[int, int] = field(default_factory=dict)
    plot: PlotPoints | None = None

    @property
    def late_percent(self) -> float:
        return 100.0 * self.late / self.samples if self.samples else 0.0

    @property
    def max_lateness_ns(self) -> int:
        return int(self.lateness_ns.max()) if len(self.lateness_ns) else 0

    @property
    def max_displacement(self) -> int:
        return int(self.displacement.max()) if len(self.displacement) else 0

    def lateness_percentiles_us(self) -> dict[str, float]:
        """Nearest-rank percentiles of the late events' lateness, in microseconds."""
        return {
            _pname(p): float(v) / 1e3
            for p, v in zip(PERCENTILES, _ranks(self.lateness_ns), strict=True)
        }

    def displacement_percentiles(self) -> dict[str, int]:
        return {
            _pname(p): int(v) for p, v in zip(PERCENTILES, _ranks(self.displacement), strict=True)
        }

    def to_dict(self) -> dict[str, Any]:
        distance = {str(k): v for k, v in sorted(self.round_distance.items()) if k < 2}
        distance["2+"] = sum(v for k, v in self.round_distance.items() if k >= 2)
        return {
            "transport": self.transport,
            "samples": self.samples,
            "late": self.late,
            "late_percent": round(self.late_percent, 4),
            "lateness_us": {"max": self.max_lateness_ns / 1e3, **self.lateness_percentiles_us()},
            "displacement_events": {
                "max": self.max_displacement,
                **self.displacement_percentiles(),
            },
            "window": {"ns": self.max_lateness_ns, "events": self.max_displacement},
            "per_cpu": {str(c): v for c, v in sorted(self.per_cpu.items())},
            "cpu_pairs": [
                {"late_cpu": a, "against_cpu": b, **v}
                for (a, b), v in sorted(self.cpu_pairs.items())
            ],
            "rounds": {
                "count": self.rounds,
                "with_late": self.rounds_with_late,
                "max_late_in_one": self.max_late_in_round,
                "distance": distance,
            },
            "cpu_disorder": {str(c): n for c, n in sorted(self.cpu_disorder.items())},
        }


def _pname(p: float) -> str:
    return f"p{p:g}".replace(".", "")


def _ranks(values: np.ndarray) -> list[float]:
    if len(values) == 0:
        return [0.0] * len(PERCENTILES)
    return [float(v) for v in np.percentile(values, PERCENTILES, method="inverted_cdf")]


def analyze(reader: CaptureReader, *, keep_plot_points: bool = False) -> ReorderReport:
    """Measure the reordering of a capture (see the module docstring for the terms)."""
    sort_report = OrderReport()
    bounds = later_minimums(reader, sort_report)
    report = ReorderReport(transport=str(reader.metadata.get(fs.META_TRANSPORT, "?")))
    report.cpu_disorder = dict(sort_report.cpu_disorder)
    report.plot = PlotPoints() if keep_plot_points else None
    walk = _Walk(report)
    for index, rows in enumerate(iter_slices(reader)):
        sample = is_sample(rows)
        future = int(bounds[index + 1]) if index + 1 < len(bounds) else None
        walk.slice(
            u64(rows, "ts_ns")[sample],
            rows.column("cpu").to_numpy()[sample].astype(np.int64),
            rows.column("round").to_numpy()[sample].astype(np.int64),
            future,
        )
    walk.finish()
    return report


class _Walk:
    """State carried from slice to slice by :func:`analyze`."""

    def __init__(self, report: ReorderReport) -> None:
        self.report = report
        self.tracker = LatenessTracker()
        self.window = np.zeros(0, dtype=np.uint64)  # earlier timestamps still able to displace
        self.max_round = -1  # round of the sample holding the running maximum
        self.max_cpu = -1
        self.late_parts: list[np.ndarray] = []
        self.disp_parts: list[np.ndarray] = []
        self.per_round_late: Counter[int] = Counter()
        self.round_ids: set[int] = set()

    def slice(
        self, ts: np.ndarray, cpu: np.ndarray, rounds: np.ndarray, future: int | None
    ) -> None:
        n = len(ts)
        if n == 0:
            return
        report = self.report
        if report.plot is not None:
            report.plot.add(report.samples, ts, cpu.astype(np.uint16))
        prior = self.tracker.prior_max(ts, np.ones(n, dtype=bool))
        late = ts < prior
        holder, against = self._holders(ts, prior, rounds, cpu)
        displacement = self._displacement(ts, late, future)
        lateness = (prior - ts)[late]
        self.late_parts.append(lateness)
        self.disp_parts.append(displacement[late])
        report.samples += n
        report.late += int(late.sum())
        self._per_cpu(cpu, late, prior - np.where(late, ts, prior))
        self._pairs(cpu[late], against[late], lateness)
        self.round_ids.update(np.unique(rounds).tolist())
        late_rounds, counts = np.unique(rounds[late], return_counts=True)
        self.per_round_late.update(dict(zip(late_rounds.tolist(), counts.tolist(), strict=True)))
        report.round_distance.update((rounds[late] - holder[late]).tolist())

    def _holders(
        self, ts: np.ndarray, prior: np.ndarray, rounds: np.ndarray, cpu: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each sample, the round and the CPU of the sample that set the maximum before it."""
        n = len(ts)
        sets_max = ts >= prior  # this sample becomes (or ties) the running maximum
        last_setter = np.maximum.accumulate(np.where(sets_max, np.arange(n), -1))
        before = np.concatenate(([-1], last_setter[:-1]))
        known = before >= 0
        index = np.maximum(before, 0)
        holder_round = np.where(known, rounds[index], self.max_round)
        holder_cpu = np.where(known, cpu[index], self.max_cpu)
        if last_setter[-1] >= 0:
            self.max_round = int(rounds[last_setter[-1]])
            self.max_cpu = int(cpu[last_setter[-1]])
        return holder_round, holder_cpu

    def _displacement(self, ts: np.ndarray, late: np.ndarray, future: int | None) -> np.ndarray:
        """For each sample, how many earlier samples carry a larger timestamp."""
        n = len(ts)
        out = np.zeros(n, dtype=np.int64)
        rest_min = np.minimum.accumulate(ts[::-1])[::-1]
        for start in range(0, n, CHUNK_ROWS):
            end = min(n, start + CHUNK_ROWS)
            chunk = ts[start:end]
            rows = np.flatnonzero(late[start:end])
            if len(rows):
                stamps = chunk[rows]
                out[start + rows] = len(self.window) - np.searchsorted(self.window, stamps, "right")
                earlier = np.arange(len(chunk))[None, :] < rows[:, None]
                out[start + rows] += np.count_nonzero(
                    earlier & (chunk[None, :] > stamps[:, None]), axis=1
                )
            self.window = np.sort(np.concatenate((self.window, chunk)))
            upcoming = [int(rest_min[end])] if end < n else []
            if future is not None:
                upcoming.append(future)
            bound = min(upcoming) if upcoming else None
            if bound is None:
                self.window = self.window[:0]
            else:
                self.window = self.window[np.searchsorted(self.window, bound, "right") :]
        return out

    def _per_cpu(self, cpu: np.ndarray, late: np.ndarray, lateness: np.ndarray) -> None:
        for c in np.unique(cpu).tolist():
            mine = cpu == c
            entry = self.report.per_cpu.setdefault(
                c, {"samples": 0, "late": 0, "max_lateness_ns": 0}
            )
            entry["samples"] += int(mine.sum())
            entry["late"] += int((late & mine).sum())
            entry["max_lateness_ns"] = max(entry["max_lateness_ns"], int(lateness[mine].max()))

    def _pairs(self, late_cpu: np.ndarray, against_cpu: np.ndarray, lateness: np.ndarray) -> None:
        if len(late_cpu) == 0:
            return
        keys = late_cpu * 65_536 + against_cpu
        for key in np.unique(keys).tolist():
            mine = keys == key
            pair = (key // 65_536, key % 65_536)
            entry = self.report.cpu_pairs.setdefault(pair, {"count": 0, "max_lateness_ns": 0})
            entry["count"] += int(mine.sum())
            entry["max_lateness_ns"] = max(entry["max_lateness_ns"], int(lateness[mine].max()))

    def finish(self) -> None:
        report = self.report
        if self.late_parts:
            report.lateness_ns = np.concatenate(self.late_parts).astype(np.uint64)
            report.displacement = np.concatenate(self.disp_parts).astype(np.int64)
        report.rounds = len(self.round_ids)
        report.rounds_with_late = len(self.per_round_late)
        report.max_late_in_round = max(self.per_round_late.values(), default=0)
