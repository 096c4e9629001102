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

Two passes: the first finds, for each slice, the smallest timestamp still to
come; the second keeps only earlier timestamps above that bound (the only
ones a later sample can be displaced by) in a structure that counts them in
O(log n) (:mod:`~ebcap.replay.inversions`): 8 bytes per timestamp of the
reorder window, however long the file. Lateness and displacement
percentiles come from :class:`~ebcap.replay.distribution.Distribution`
(exact while their distinct values are few, else within 1%; the report
says which), per-round counts from :class:`~ebcap.replay.rounds.RoundLog`
(the worst rounds in memory, all in a temporary file): nothing is kept per
late event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from ebcap.format import schema as fs
from ebcap.format.counts import sample_mask
from ebcap.format.reader import CaptureReader
from ebcap.replay.distribution import Distribution
from ebcap.replay.inversions import GreaterCounter
from ebcap.replay.lateness import LatenessTracker
from ebcap.replay.order import OrderReport, later_minimums
from ebcap.replay.plot_points import PlotPoints
from ebcap.replay.rounds import RoundLog
from ebcap.replay.scan import iter_slices, u64

PERCENTILES: Final = (50.0, 99.0, 99.9)
CPU_PAIR_BASE: Final = 1 << 16
"""CPU numbers are uint16: a pair (a, b) is coded as a * base + b."""


@dataclass
class ReorderReport:
    """The numbers of ``ebcap reorder``; :meth:`to_dict` is its JSON form."""

    transport: str
    samples: int = 0
    late: int = 0
    lateness_ns: Distribution = field(default_factory=Distribution)
    displacement: Distribution = field(default_factory=Distribution)
    per_cpu: dict[int, dict[str, int]] = field(default_factory=dict)
    cpu_pairs: dict[tuple[int, int], dict[str, int]] = field(default_factory=dict)
    rounds: RoundLog = field(default_factory=RoundLog)
    round_distance: Counter[int] = field(default_factory=Counter)
    cpu_disorder: dict[int, int] = field(default_factory=dict)
    plot: PlotPoints | None = None
    work: int = 0
    """Element operations spent counting displacement (grows like n log n)."""

    @property
    def late_percent(self) -> float:
        return 100.0 * self.late / self.samples if self.samples else 0.0

    @property
    def max_lateness_ns(self) -> int:
        return self.lateness_ns.max

    @property
    def max_displacement(self) -> int:
        return self.displacement.max

    def lateness_percentiles_us(self) -> dict[str, float]:
        """Nearest-rank percentiles of the late events' lateness, in microseconds."""
        return {_pname(p): self.lateness_ns.percentile(p) / 1e3 for p in PERCENTILES}

    def displacement_percentiles(self) -> dict[str, int]:
        """Nearest-rank percentiles of the late events' displacement, in events."""
        return {_pname(p): round(self.displacement.percentile(p)) for p in PERCENTILES}

    def late_rounds(self) -> Iterator[dict[str, int]]:
        """Every drain round with a late event, in file order (read back from disk)."""
        return iter(self.rounds)

    def close(self) -> None:
        """Drop the per-round temporary file. Idempotent."""
        self.rounds.close()

    def to_dict(self) -> dict[str, Any]:
        """Everything but the list of all rounds with late events (see :meth:`late_rounds`)."""
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
            "percentiles": {
                "lateness": self.lateness_ns.kind,
                "displacement": self.displacement.kind,
            },
            "window": {"ns": self.max_lateness_ns, "events": self.max_displacement},
            "per_cpu": {str(c): v for c, v in sorted(self.per_cpu.items())},
            "cpu_pairs": [
                {"late_cpu": a, "against_cpu": b, **v}
                for (a, b), v in sorted(self.cpu_pairs.items())
            ],
            "rounds": {
                "count": self.rounds.rounds,
                "with_late": self.rounds.with_late,
                "max_late_in_one": self.rounds.max_late,
                "distance": distance,
                "most_late": self.rounds.top(),
            },
            "cpu_disorder": {str(c): n for c, n in sorted(self.cpu_disorder.items())},
        }


def _pname(p: float) -> str:
    return f"p{p:g}".replace(".", "")


def analyze(reader: CaptureReader, *, keep_plot_points: bool = False) -> ReorderReport:
    """Measure the reordering of a capture (see the module docstring for the terms).

    The report holds a temporary file of per-round counts: close it when done.
    """
    order_report = OrderReport()
    bounds = later_minimums(reader, order_report)
    report = ReorderReport(transport=str(reader.metadata.get(fs.META_TRANSPORT, "?")))
    report.cpu_disorder = dict(order_report.cpu_disorder)
    report.plot = PlotPoints() if keep_plot_points else None
    walk = _Walk(report)
    try:
        for index, rows in enumerate(iter_slices(reader)):
            sample = sample_mask(rows)
            future = int(bounds[index + 1]) if index + 1 < len(bounds) else None
            walk.slice(
                u64(rows, "ts_ns")[sample],
                rows.column("cpu").to_numpy()[sample].astype(np.int64),
                rows.column("round").to_numpy()[sample].astype(np.int64),
                future,
            )
        walk.finish()
    except BaseException:
        report.close()
        raise
    return report


class _Walk:
    """State carried from slice to slice by :func:`analyze`."""

    def __init__(self, report: ReorderReport) -> None:
        self.report = report
        self.tracker = LatenessTracker()
        self.earlier = GreaterCounter()  # earlier timestamps still able to displace
        self.max_round = -1  # round of the sample holding the running maximum
        self.max_cpu = -1

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
        displacement = self.earlier.displacement(ts, late, future)
        report.work = self.earlier.work
        lateness = np.where(late, prior - ts, np.uint64(0))
        report.lateness_ns.add(lateness[late])
        report.displacement.add(displacement[late])
        report.samples += n
        report.late += int(late.sum())
        self._per_cpu(cpu, late, lateness)
        self._pairs(cpu[late], against[late], lateness[late])
        report.rounds.add(rounds, late, lateness)
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
        keys = late_cpu * CPU_PAIR_BASE + against_cpu
        for key in np.unique(keys).tolist():
            mine = keys == key
            pair = (key // CPU_PAIR_BASE, key % CPU_PAIR_BASE)
            entry = self.report.cpu_pairs.setdefault(pair, {"count": 0, "max_lateness_ns": 0})
            entry["count"] += int(mine.sum())
            entry["max_lateness_ns"] = max(entry["max_lateness_ns"], int(lateness[mine].max()))

    def finish(self) -> None:
        self.report.rounds.finish()
