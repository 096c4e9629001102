"""The picture of a capture's reordering: arrival order against time, and lateness.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so it works headless and leaves the caller's matplotlib
state alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import numpy as np

from ebcap.errors import UsageError, require_package
from ebcap.replay.reorder import ReorderReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PICTURE_FORMATS: Final = (
    "png",
    "svg",
    "svgz",
    "pdf",
    "eps",
    "ps",
    "jpg",
    "jpeg",
    "webp",
    "tif",
    "tiff",
)
"""What the Agg canvas (with Pillow for the bitmaps) writes, named by file extension."""


def picture_format(path: str | os.PathLike[str]) -> str:
    """The format a picture's file name asks for (``reorder.svg`` -> ``svg``)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PICTURE_FORMATS:
        raise UsageError(
            f"cannot tell the picture format of {path} from its name: "
            f"use one of .{', .'.join(PICTURE_FORMATS)}"
        )
    require_package("matplotlib", "--plot")  # before the analysis, not after it
    return suffix


def draw(
    report: ReorderReport,
    out: str | os.PathLike[str] | IO[Any],
    *,
    title: str = "",
    fmt: str = "png",
) -> None:
    """Draw timestamp vs arrival order coloured by CPU, and a lateness histogram, as ``fmt``."""
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
    values, counts = report.lateness_ns.histogram()
    if len(values):
        bins = min(100, max(10, report.late // 20))
        spread.hist(values / 1e3, bins=bins, weights=counts, log=True)
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
    figure.savefig(out, format=fmt)


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
