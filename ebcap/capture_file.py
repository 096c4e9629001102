"""The object :func:`ebcap.open` returns: a capture file you can read and replay.

It is the format's :class:`~ebcap.format.reader.CaptureReader` (metadata,
totals, batches, tables) plus the two ways of walking the events that the
replay package provides, so offline code needs one import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ebcap.format.reader import CaptureReader

if TYPE_CHECKING:
    from ebcap.replay.api import EventStream, LostHandler, SampleHandler
    from ebcap.replay.order import OrderReport


class Capture(CaptureReader):
    """An open ebcap file: ``.metadata``, ``.totals``, ``.to_table()``, events, replay.

    ``order_report`` is what the latest walk (:meth:`events` or :meth:`replay`)
    met: a CPU whose own events are out of timestamp order, what the time sort
    spilled to disk; ``order_report.notes()`` says it in words.
    """

    order_report: OrderReport | None = None

    def events(self, sorted: bool = False) -> EventStream:
        """Every row as a typed event, in arrival order or (``sorted``) exact time order.

        The iterator's ``report`` is also :attr:`order_report`.
        """
        from ebcap.replay.api import iter_events

        stream = iter_events(self, sorted=sorted)
        self.order_report = stream.report
        return stream

    def replay(
        self,
        handler: SampleHandler,
        sorted: bool = False,
        lost_handler: LostHandler | None = None,
    ) -> int:
        """Call ``handler(cpu, data)`` per sample, like a libbpf sample callback.

        ``lost_handler(cpu, count)`` gets the losses. Returns the number of
        samples; :attr:`order_report` says what the ordering met.
        """
        from ebcap.replay.api import replay_callbacks
        from ebcap.replay.order import OrderReport

        self.order_report = OrderReport()
        return replay_callbacks(
            self, handler, sorted=sorted, lost_handler=lost_handler, report=self.order_report
        )
