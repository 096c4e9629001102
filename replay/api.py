"""Replay from Python: events as objects, or callbacks shaped like libbpf's.

Code written against a live perf buffer (``handler(cpu, data)`` per sample,
``lost_handler(cpu, count)`` per loss) can be pointed at a capture instead::

    with ebcap.open("run.arrow") as capture:
        replay_callbacks(capture, handle_sample, sorted=True, lost_handler=handle_lost)

Both walk the file in bounded memory, like ``ebcap replay``, and say what the
ordering met in an :class:`~ebcap.replay.order.OrderReport`: ``.report`` of
the iterator :func:`iter_events` returns, or the ``report`` given to
:func:`replay_callbacks` (filled in as it runs). A CPU whose own events came
out of timestamp order is in ``report.cpu_disorder`` once the first event
is out in time order, at the end in arrival order; ``report.notes()`` says
it all in words.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.format.schema import KIND_LOST_CODE
from ebcap.replay.order import OrderedBatch, OrderReport, in_order

SampleHandler = Callable[[int, bytes], object]
LostHandler = Callable[[int, int], object]


@dataclass(frozen=True, slots=True)
class Event:
    """One row of a capture: a sample, or a report of ``lost`` events on ``cpu``."""

    seq: int
    cpu: int
    ts_ns: int
    kind: str
    lost: int
    round: int
    data: bytes
    fields: dict[str, Any]
    """The source's decoded columns (pid, comm, syscall, ...) by name."""

    @property
    def is_lost(self) -> bool:
        return self.kind == fs.KIND_LOST


@contextlib.contextmanager
def _opened(source: CaptureReader | str | os.PathLike[str]) -> Iterator[CaptureReader]:
    """Use a reader as given, or open (and later close) a path."""
    if isinstance(source, CaptureReader):
        yield source
        return
    with CaptureReader(source) as reader:
        yield reader


@contextlib.contextmanager
def _batches(
    reader: CaptureReader, in_time_order: bool, report: OrderReport
) -> Iterator[Iterator[OrderedBatch]]:
    stream = in_order(reader, in_time_order, report)
    with contextlib.closing(stream):
        yield stream


class EventStream(Iterator[Event]):
    """The events of a capture, one at a time; ``report`` says what the ordering met."""

    def __init__(self, source: CaptureReader | str | os.PathLike[str], sorted: bool) -> None:
        self.report = OrderReport()
        self._events = _events(source, sorted, self.report)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Stop early: close the file if it was opened here and drop any sort runs."""
        self._events.close()


def iter_events(
    reader: CaptureReader | str | os.PathLike[str], sorted: bool = False
) -> EventStream:
    """Every row as an :class:`Event`, in arrival order or (``sorted``) exact time order.

    The iterator's ``report`` (:class:`~ebcap.replay.order.OrderReport`) fills in as it goes.
    """
    return EventStream(reader, sorted)


def _events(
    reader: CaptureReader | str | os.PathLike[str], sorted: bool, report: OrderReport
) -> Generator[Event, None, None]:
    with _opened(reader) as capture, _batches(capture, sorted, report) as stream:
        extra = [name for name in capture.schema.names if name not in fs.CORE_COLUMNS]
        for batch in stream:
            rows = batch.rows
            core = {name: rows.column(name).to_pylist() for name in fs.CORE_COLUMNS}
            decoded = {name: rows.column(name).to_pylist() for name in extra}
            for i in range(rows.num_rows):
                yield Event(
                    seq=core["seq"][i],
                    cpu=core["cpu"][i],
                    ts_ns=core["ts_ns"][i],
                    kind=core["kind"][i],
                    lost=core["lost"][i],
                    round=core["round"][i],
                    data=core["data"][i],
                    fields={name: values[i] for name, values in decoded.items()},
                )


def replay_callbacks(
    reader: CaptureReader | str | os.PathLike[str],
    handler: SampleHandler,
    sorted: bool = False,
    lost_handler: LostHandler | None = None,
    report: OrderReport | None = None,
) -> int:
    """Call ``handler(cpu, data)`` per sample and ``lost_handler(cpu, count)`` per loss.

    Like a libbpf perf buffer's sample and lost callbacks; loss rows are
    skipped when no ``lost_handler`` is given. ``report``, if given, is filled
    in with what the ordering met. Returns the number of samples.
    """
    samples = 0
    report = report if report is not None else OrderReport()
    with _opened(reader) as capture, _batches(capture, sorted, report) as stream:
        for batch in stream:
            rows = batch.rows
            cpus = rows.column("cpu").to_pylist()
            lost_rows = rows.column("kind").indices.to_numpy(zero_copy_only=False) == KIND_LOST_CODE
            data = rows.column("data").to_pylist()
            counts = rows.column("lost").to_pylist() if lost_rows.any() else None
            for i, cpu in enumerate(cpus):
                if not lost_rows[i]:
                    handler(cpu, data[i])
                    samples += 1
                elif lost_handler is not None and counts is not None:
                    lost_handler(cpu, counts[i])
    return samples
