"""One interface over both ring readers, and the choice between them."""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, Protocol

from ebcap.bpf.maps import Map
from ebcap.capture.batch import EventBatch
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

    def close(self) -> None: ...


def perf_pages_per_cpu(buffer_bytes: int) -> int:
    """Data pages per CPU: the buffer size in pages, rounded up to a power of two."""
    pages = max(1, -(-buffer_bytes // mmap.PAGESIZE))
    return 1 << (pages - 1).bit_length()


def open_reader(
    transport: str, events: Map, cpus: list[int], opts: RecordOptions, source: Source
) -> Reader:
    """The reader for ``transport`` over the source's events map."""
    fixed = source.layout is not None and not source.variable_payloads
    payload_size = source.layout.size if fixed and source.layout is not None else None
    if transport == "perf":
        from ebcap.capture.perf_reader import PerfBufferReader

        return PerfBufferReader(
            events,
            cpus,
            pages_per_cpu=perf_pages_per_cpu(opts.buffer_bytes),
            wakeup_events=None if opts.watermark_bytes else opts.wakeup_events,
            watermark_bytes=opts.watermark_bytes,
            payload_size=payload_size,
        )
    if transport == "ringbuf":
        from ebcap.capture.ringbuf_reader import RingBufReader

        return RingBufReader(events)
    raise UsageError(f"unknown transport {transport!r}: use perf or ringbuf")
