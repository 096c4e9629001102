"""Reading a PERF_EVENT_ARRAY: one BPF_OUTPUT perf ring per CPU, drained in CPU order.

For every CPU the reader opens a PERF_COUNT_SW_BPF_OUTPUT event with
TIME|CPU|RAW samples on CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns),
maps its ring writable (so the kernel never overwrites what is unread: it
counts the loss and later writes a LOST record instead), plugs the event
into the map under the CPU's index and enables it. One epoll covers all
rings. The ring walking itself is :mod:`ebcap.capture.perf_ring`.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from contextlib import suppress
from dataclasses import dataclass
from typing import Final

from ebcap.bpf import _sys
from ebcap.bpf._errors import kernel_error
from ebcap.bpf.maps import Map
from ebcap.capture.batch import EventBatch
from ebcap.capture.epoll_wait import EpollReader
from ebcap.capture.perf_ring import SAMPLE_TYPE, walk_perf_ring
from ebcap.capture.ring_walk import RingPosition, SpanBuffer
from ebcap.errors import EbcapError, KernelError, MissingCapabilityError, UsageError

_U64: Final = struct.Struct("<Q")
_U32: Final = struct.Struct("<I")
_LOST_READ: Final = struct.Struct("<QQ")
"""What read() of an event with read_format PERF_FORMAT_LOST gives: value, lost."""
DEFAULT_WAKEUP_EVENTS: Final = 1
"""Wake the reader at every event when the caller chose neither events nor bytes."""


@dataclass
class _CpuRing:
    cpu: int
    fd: int
    area: mmap.mmap
    data_offset: int
    data_size: int
    head: RingPosition
    """data_head: the kernel's, read whole."""
    tail: RingPosition
    """data_tail: ours, stored whole (the kernel reads it at every write)."""
    counts_lost: bool
    """Whether read() gives the event's lost count (PERF_FORMAT_LOST)."""


class PerfBufferReader(EpollReader):
    """Drains the per-CPU perf rings of ``events_map`` (a PERF_EVENT_ARRAY).

    ``pages_per_cpu`` (a power of two) sizes each ring. The reader is woken
    every ``wakeup_events`` samples, or when ``watermark_bytes`` are
    waiting, whichever the caller gives (one of them; default: every event).
    ``payload_size`` trims samples of that size padded to the real event size
    (the kernel pads raw data so records stay 8-byte aligned).
    """

    name = "perf buffer reader"

    def __init__(
        self,
        events_map: Map,
        cpus: list[int],
        *,
        pages_per_cpu: int,
        wakeup_events: int | None = None,
        watermark_bytes: int | None = None,
        payload_size: int | None = None,
    ) -> None:
        self.page_size = mmap.PAGESIZE
        _check_args(events_map, cpus, pages_per_cpu, self.page_size, wakeup_events, watermark_bytes)
        if payload_size is not None and payload_size < 0:
            raise UsageError(f"payload size {payload_size}: must not be negative")
        self.cpus = list(cpus)
        self.buffer_bytes_per_cpu = pages_per_cpu * self.page_size
        self.unknown_records = 0
        """Records of types the reader does not know, skipped (kept for diagnostics)."""
        self.bytes_read = 0
        """Ring bytes consumed so far, records of every type (for pacing the drains)."""
        self._payload_size = payload_size
        self._map = events_map
        self._rings: list[_CpuRing] = []
        super().__init__()
        try:
            attr = _event_attr(wakeup_events, watermark_bytes)
            for cpu in self.cpus:
                self._rings.append(self._open_ring(cpu, attr, pages_per_cpu))
            self._span = SpanBuffer(self.buffer_bytes_per_cpu)  # the rings are drained in turn
        except BaseException:
            self._stack.close()
            raise

    def _open_ring(self, cpu: int, attr: _sys.PerfEventAttr, pages: int) -> _CpuRing:
        """Open, map, plug in and enable the ring of ``cpu``; undone by the exit stack."""
        stack = self._stack
        try:
            fd = _sys.perf_event_open(attr, -1, cpu, -1, _sys.PERF_FLAG_FD_CLOEXEC)
        except KernelError as exc:
            if exc.errno != errno.EINVAL or not attr.read_format:
                raise
            attr.read_format = 0  # before Linux 6.0: no lost count to read at the end
            fd = _sys.perf_event_open(attr, -1, cpu, -1, _sys.PERF_FLAG_FD_CLOEXEC)
        stack.callback(os.close, fd)
        try:
            area = mmap.mmap(
                fd,
                (1 + pages) * self.page_size,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except OSError as exc:
            raise _mmap_error(cpu, pages, self.page_size, exc.errno or 0) from None
        stack.callback(area.close)
        head = RingPosition(area, _sys.DATA_HEAD_OFFSET)
        tail = RingPosition(area, _sys.DATA_TAIL_OFFSET)
        stack.callback(head.release)  # before the mapping closes (LIFO)
        stack.callback(tail.release)
        data_offset = _U64.unpack_from(area, _sys.DATA_OFFSET_OFFSET)[0] or self.page_size
        data_size = _U64.unpack_from(area, _sys.DATA_SIZE_OFFSET)[0] or pages * self.page_size
        self._map.update(_U32.pack(cpu), _U32.pack(fd))
        # Unplug on close, or the map keeps the perf event (and its ring) alive.
        stack.callback(self._unplug, cpu)
        self._epoll.add(fd)
        _sys.ioctl(fd, _sys.PERF_EVENT_IOC_ENABLE)
        stack.callback(_sys.ioctl, fd, _sys.PERF_EVENT_IOC_DISABLE)
        return _CpuRing(cpu, fd, area, data_offset, data_size, head, tail, bool(attr.read_format))

    @property
    def ncpus(self) -> int:
        return len(self.cpus)

    @property
    def ring_bytes(self) -> int:
        """The data area of one CPU's ring."""
        return self.buffer_bytes_per_cpu

    def read(self) -> EventBatch:
        """Drain every ring once, in CPU order (that is the arrival order)."""
        self._check_open()
        batches = []
        for ring in self._rings:
            head = ring.head.load()
            tail = ring.tail.load()
            if head == tail:
                continue
            end = ring.data_offset + ring.data_size
            with memoryview(ring.area) as whole, whole[ring.data_offset : end] as data:
                walk = walk_perf_ring(
                    data,
                    ring.data_size,
                    head,
                    tail,
                    ring.cpu,
                    payload_size=self._payload_size,
                    into=self._span,
                )
            # Only now, with the records copied out, may the kernel reuse their space.
            ring.tail.store(walk.tail)
            self.unknown_records += walk.unknown
            self.bytes_read += walk.tail - tail
            batches.append(walk.batch)
        return EventBatch.concat(batches)

    def kernel_lost(self) -> dict[int, int] | None:
        """Samples each CPU's ring has lost so far, by the kernel's own count; None
        before Linux 6.0.

        The kernel reports a loss in band only with the next sample that fits (a
        PERF_RECORD_LOST before it), so the losses at the very end of a capture
        reach no record: this count finds them even without a drop counter.
        """
        self._check_open()
        lost = {}
        for ring in self._rings:
            if not ring.counts_lost:
                return None
            value = os.read(ring.fd, _LOST_READ.size)
            lost[ring.cpu] = _LOST_READ.unpack(value)[1]
        return lost

    def _unplug(self, cpu: int) -> None:
        """Empty the map slot of ``cpu``, so the map no longer holds our perf event."""
        if self._map.closed:
            return
        with suppress(KernelError):  # the map's owner may have gone first
            self._map.delete(_U32.pack(cpu))


def _mmap_error(cpu: int, pages: int, page_size: int, err: int) -> EbcapError:
    """Why the ring of ``cpu`` could not be mapped, said as the user can act on it."""
    call = f"mmap(perf ring of CPU {cpu}, {pages} pages)"
    if err == errno.ENOMEM:
        return UsageError(
            f"{call}: the kernel cannot allocate a ring of {pages * page_size} bytes per CPU: "
            "choose a smaller --buffer-size"
        )
    failure = kernel_error(call, err, capabilities=("CAP_IPC_LOCK",))
    if not isinstance(failure, MissingCapabilityError):
        return failure
    return MissingCapabilityError(
        f"{call}: permission denied: the rings lock more memory than perf_event_mlock_kb "
        "and RLIMIT_MEMLOCK leave this user (its other processes count too): needs "
        "CAP_IPC_LOCK, or a smaller --buffer-size",
        "CAP_IPC_LOCK",
        err,
    )


def _check_args(
    events_map: Map,
    cpus: list[int],
    pages: int,
    page_size: int,
    wakeup_events: int | None,
    watermark_bytes: int | None,
) -> None:
    if events_map.info.type != _sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY:
        raise UsageError(
            f"map {events_map.info.name or events_map.info.id} is not a PERF_EVENT_ARRAY"
        )
    if not cpus:
        raise UsageError("no CPUs to read")
    if len(set(cpus)) != len(cpus):
        raise UsageError(f"CPU list {cpus} names a CPU twice")
    slots = events_map.info.max_entries
    outside = [c for c in cpus if not 0 <= c < slots]
    if outside:
        raise UsageError(f"CPU {outside[0]} has no slot in the events map ({slots} entries)")
    if pages < 1 or pages & (pages - 1):
        raise UsageError(f"perf buffer of {pages} pages per CPU: must be a power of two")
    if wakeup_events is not None and watermark_bytes is not None:
        raise UsageError("give a wakeup every N events or a byte watermark, not both")
    if wakeup_events is not None and wakeup_events < 1:
        raise UsageError(f"wakeup every {wakeup_events} events: must be at least 1")
    if watermark_bytes is not None and not 0 < watermark_bytes < pages * page_size:
        raise UsageError(
            f"wakeup watermark of {watermark_bytes} bytes: must be above 0 and below the "
            f"{pages * page_size}-byte buffer"
        )


def _event_attr(wakeup_events: int | None, watermark_bytes: int | None) -> _sys.PerfEventAttr:
    attr = _sys.PerfEventAttr(
        type=_sys.PERF_TYPE_SOFTWARE,
        size=_sys.PERF_ATTR_SIZE,
        config=_sys.PERF_COUNT_SW_BPF_OUTPUT,
        sample_period=1,
        sample_type=SAMPLE_TYPE,
        disabled=1,
        use_clockid=1,
        clockid=_sys.CLOCK_MONOTONIC,
        sample_id_all=1,  # LOST records then carry TIME and CPU too
        read_format=_sys.PERF_FORMAT_LOST,
    )
    if watermark_bytes is not None:
        attr.watermark = 1
        attr.wakeup_watermark = watermark_bytes
    else:
        attr.wakeup_events = wakeup_events or DEFAULT_WAKEUP_EVENTS
    return attr
