"""Reading a BPF ring buffer (BPF_MAP_TYPE_RINGBUF): one ring shared by all CPUs.

The map is mapped twice over: the consumer page read-write at offset 0 (we
publish how far we have read there) and, from offset page_size, the
producer page followed by the data area mapped twice in a row, read-only.
epoll on the map fd itself wakes us when the kernel decides to (it does
when the consumer has caught up). The ring walking itself is
:mod:`ebcap.capture.ringbuf_ring`.
"""

from __future__ import annotations

import mmap
import time
from typing import Final

from ebcap.bpf import _sys
from ebcap.bpf._errors import kernel_error
from ebcap.bpf.maps import Map
from ebcap.capture.batch import EventBatch
from ebcap.capture.epoll_wait import EpollReader
from ebcap.capture.ring_walk import RingPosition, SpanBuffer
from ebcap.capture.ringbuf_ring import walk_ringbuf
from ebcap.errors import UsageError
from ebcap.format.schema import UNKNOWN_CPU

_POS_OFFSET: Final = 0
"""consumer_pos / producer_pos: the first u64 of their page."""


class RingBufReader(EpollReader):
    """Drains ``ringbuf_map``; the map stays the caller's (not closed here)."""

    name = "ring buffer reader"

    def __init__(self, ringbuf_map: Map) -> None:
        info = ringbuf_map.info
        if info.type != _sys.BPF_MAP_TYPE_RINGBUF:
            raise UsageError(f"map {info.name or info.id} is not a BPF ring buffer")
        self.page_size = mmap.PAGESIZE
        self.buffer_bytes = info.max_entries
        self.discarded = 0
        """Records the producer discarded, skipped (kept for diagnostics)."""
        self.bytes_read = 0
        """Ring bytes consumed so far, headers included (for pacing the drains)."""
        super().__init__()
        try:
            fd = ringbuf_map.fd
            self._consumer = self._map(fd, self.page_size, 0, mmap.PROT_READ | mmap.PROT_WRITE)
            self._producer = self._map(
                fd, self.page_size + 2 * self.buffer_bytes, self.page_size, mmap.PROT_READ
            )
            self._consumer_pos = self._position(self._consumer, _POS_OFFSET)
            self._producer_pos = self._position(self._producer, _POS_OFFSET)
            self._epoll.add(fd)
            self._span = SpanBuffer(self.buffer_bytes)
        except BaseException:
            self._stack.close()
            raise

    def _map(self, fd: int, length: int, offset: int, prot: int) -> mmap.mmap:
        try:
            area = mmap.mmap(fd, length, mmap.MAP_SHARED, prot, offset=offset)
        except OSError as exc:
            call = f"mmap(ring buffer, {length} bytes at {offset})"
            raise kernel_error(call, exc.errno or 0) from None  # no capability is checked
        self._stack.callback(area.close)
        return area

    def _position(self, area: mmap.mmap, offset: int) -> RingPosition:
        position = RingPosition(area, offset)
        self._stack.callback(position.release)  # before the mapping closes (LIFO)
        return position

    @property
    def ncpus(self) -> int:
        """One ring for every CPU."""
        return 1

    @property
    def ring_bytes(self) -> int:
        return self.buffer_bytes

    def read(self) -> EventBatch:
        """Every committed record from the consumer position on, in ring order."""
        self._check_open()
        consumer = self._consumer_pos.load()
        producer = self._producer_pos.load()
        if consumer == producer:
            return EventBatch.empty()
        start, end = self.page_size, self.page_size + 2 * self.buffer_bytes
        with memoryview(self._producer) as whole, whole[start:end] as data:
            walk = walk_ringbuf(data, self.buffer_bytes, consumer, producer, self._span)
        # A record carries neither: unless the payload's layout names them (which then
        # replace these), the time is when it had been read (every record the walk took
        # was committed by then) and the CPU unknown.
        walk.batch.ts_ns.fill(time.monotonic_ns())
        walk.batch.cpu.fill(UNKNOWN_CPU)
        if walk.consumer_pos != consumer:
            # Only now, with the records copied out, may producers reuse their space.
            self._consumer_pos.store(walk.consumer_pos)
        self.discarded += walk.discarded
        self.bytes_read += walk.consumer_pos - consumer
        return walk.batch

    def kernel_lost(self) -> None:
        """None: a ring buffer keeps no count of failed reserves (the programs do)."""
        return None
