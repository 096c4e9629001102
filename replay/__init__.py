"""Replay and analysis of captures: both orders, exact bounded-memory sort, reorder numbers.

The orders (:mod:`~ebcap.replay.order`), the outputs (text, JSON lines, CSV,
Parquet, SQL) and the reordering analysis all stream a capture slice by
slice; none loads a whole file.
"""

from __future__ import annotations

from ebcap.replay.api import Event, iter_events, replay_callbacks
from ebcap.replay.order import OrderedBatch, SortReport, arrival_order, time_order
from ebcap.replay.player import ReplayOptions, ReplaySummary, replay
from ebcap.replay.reorder import ReorderReport, analyze

__all__ = [
    "Event",
    "OrderedBatch",
    "ReorderReport",
    "ReplayOptions",
    "ReplaySummary",
    "SortReport",
    "analyze",
    "arrival_order",
    "iter_events",
    "replay",
    "replay_callbacks",
    "time_order",
]
