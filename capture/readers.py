"""One interface over both ring readers, and the choice between them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ebcap.bpf.maps import Map
from ebcap.capture.batch import EventBatch
from ebcap.capture.ring_settings import ring_size
from ebcap.errors import UsageError

if TYPE_CHECKING:
    from ebcap.capture.recorder import RecordOptions
    from ebcap.capture.sources import Source


class Reader(Protocol):
    """What the recorder needs from a perf buffer or ring buffer reader."""

    bytes_read: int
    """Ring bytes consumed so far."""

    @property
    def ring_bytes(self) -> int:
        """Size of one ring (per CPU for perf)."""
        ...

    def wait(self, timeout: float) -> bool: ...

    def read(self) -> EventBatch: ...

    def kernel_lost(self) -> dict[int, int] | None:
        """Events each CPU lost so far by the kernel's count (None: it keeps none)."""
        ...

    def close(self) -> None: ...


def ring_bytes_used(transport: str, requested: int, source: Source) -> int:
    """The size of one ring as the recording will have it (what its file records).

    A pinned ring buffer has the size its owner gave it, whatever was asked.
    """
    from ebcap.capture.sources import PinnedSource

    if transport == "ringbuf" and isinstance(source, PinnedSource):
        with Map.open_pinned(source.path) as pinned:
            return pinned.info.max_entries
    return ring_size(transport, requested).bytes


def open_reader(
    transport: str, events: Map, cpus: list[int], opts: RecordOptions, source: Source
) -> Reader:
    """The reader for ``transport`` over the source's events map."""
    layout = source.layout
    exact = layout is not None and layout.whole_event and not source.variable_payloads
    payload_size = layout.size if exact and layout is not None else None
    if transport == "perf":
        from ebcap.capture.perf_reader import PerfBufferReader

        return PerfBufferReader(
            events,
            cpus,
            pages_per_cpu=ring_size(transport, opts.buffer_bytes).pages,
            wakeup_events=None if opts.watermark_bytes else opts.wakeup_events,
            watermark_bytes=opts.watermark_bytes,
            payload_size=payload_size,
        )
    if transport == "ringbuf":
        from ebcap.capture.ringbuf_reader import RingBufReader

        return RingBufReader(events)
    raise UsageError(f"unknown transport {transport!r}: use perf or ringbuf")
