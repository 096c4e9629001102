"""The object :func:`ebcap.open` returns: a capture file you can read and replay.

It is the format's :class:`~ebcap.format.reader.CaptureReader` (metadata,
totals, batches, tables) plus the two ways of walking the events that the
replay package provides, so offline code needs one import.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ebcap.format.reader import CaptureReader

if TYPE_CHECKING:
    from ebcap.replay.api import Event, LostHandler, SampleHandler


class Capture(CaptureReader):
    """An open ebcap file: ``.metadata``, ``.totals``, ``.to_table()``, events, replay."""

    def events(self, sorted: bool = False) -> Iterator[Event]:
        """Every row as a typed event, in arrival order or (``sorted``) exact time order."""
        from ebcap.replay.api import iter_events

        return iter_events(self, sorted=sorted)

    def replay(
        self,
        handler: SampleHandler,
        sorted: bool = False,
        lost_handler: LostHandler | None = None,
    ) -> int:
        """Call ``handler(cpu, data)`` per sample, like a libbpf sample callback.

        ``lost_handler(cpu, count)`` gets the losses. Returns the number of samples.
        """
        from ebcap.replay.api import replay_callbacks

        return replay_callbacks(self, handler, sorted=sorted, lost_handler=lost_handler)
