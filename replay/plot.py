"""The picture of a capture's reordering: arrival order against time, and lateness.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so it works headless and leaves the caller's matplotlib
state alone.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ebcap.replay.reorder import ReorderReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def draw(report: ReorderReport, out: str | os.PathLike[str] | IO[Any], *, title: str = "") -> None:
    """Write a PNG: timestamp vs arrival order coloured by CPU, and a lateness histogram."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 11), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    whole, zoom, spread = figure.subplots(3, 1, height_ratios=(3, 3, 2))
    if report.plot is not None:
        points = report.plot
        index, ts, cpu = points.arrays()
        origin = int(ts.min()) if len(ts) else 0
        note = f" (every {points.stride}th event)" if points.stride > 1 else ""
        _scatter(whole, index, ts, cpu, origin, f"timestamp vs arrival order{note}")
        head = np.arange(len(points.head_ts))
        head_origin = int(points.head_ts.min()) if len(head) else 0
        close_up = f"the first {len(head)} events: late ones sit below the rising edge"
        _scatter(zoom, head, points.head_ts, points.head_cpu, head_origin, close_up)
    late_us = report.lateness_ns.astype(np.float64) / 1e3
    if len(late_us):
        spread.hist(late_us, bins=min(100, max(10, len(late_us) // 20)), log=True)
    else:
        spread.text(
            0.5, 0.5, "no late events", ha="center", va="center", transform=spread.transAxes
        )
    worst_us = report.max_lateness_ns / 1e3
    spread.set_title(
        f"lateness of the {report.late} late events "
        f"({report.late_percent:.2f}% of {report.samples}; max {worst_us:.1f} us)"
    )
    spread.set_xlabel("lateness (us)")
    spread.set_ylabel("events")
    if title:
        figure.suptitle(title)
    figure.savefig(out, format="png")


def _scatter(
    axes: Axes, index: np.ndarray, ts: np.ndarray, cpu: np.ndarray, origin: int, title: str
) -> None:
    seconds = (ts.astype(np.int64) - origin) / 1e9
    for value in np.unique(cpu).tolist():
        mine = cpu == value
        axes.scatter(index[mine], seconds[mine], s=3, label=f"CPU {value}", rasterized=True)
    axes.set_title(title)
    axes.set_xlabel("arrival order (samples)")
    axes.set_ylabel("ts_ns - first (s)")
    if len(index):
        axes.legend(markerscale=4, loc="upper left", fontsize="small")
