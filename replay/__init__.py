"""Replay and analysis of captures: both orders, exact bounded-memory sort, reorder numbers.

The orders (:mod:`~ebcap.replay.order`), the outputs (text, JSON lines, CSV,
Parquet, SQL) and the reordering analysis all stream a capture slice by
slice; none loads a whole file. Writing a replay out is :func:`write_replay`
(what ``ebcap replay`` does); walking it from Python is :func:`iter_events`
and :func:`replay_callbacks` (``ebcap.open(...).events()`` / ``.replay()``).
"""

from __future__ import annotations

from ebcap.replay.api import Event, EventStream, iter_events, replay_callbacks
from ebcap.replay.order import OrderedBatch, OrderReport, arrival_order, time_order
from ebcap.replay.player import ReplayOptions, ReplaySummary, write_replay
from ebcap.replay.reorder import ReorderReport, analyze

__all__ = [
    "Event",
    "EventStream",
    "OrderReport",
    "OrderedBatch",
    "ReorderReport",
    "ReplayOptions",
    "ReplaySummary",
    "analyze",
    "arrival_order",
    "iter_events",
    "replay_callbacks",
    "time_order",
    "write_replay",
]
