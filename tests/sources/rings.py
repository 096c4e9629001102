"""Run a source's kernel side and read its rings back in the plainest way.

One pass from position 0 with rings sized so none wraps: enough to check
what the programs emit, independent of the capture readers.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable
from contextlib import ExitStack

import numpy as np

from ebcap.bpf import _sys
from ebcap.bpf.cpus import online_cpus
from ebcap.bpf.maps import Map
from ebcap.capture.sources import Source, read_percpu_u64

PAGE = mmap.PAGESIZE
RING_BYTES = 4 << 20
PERF_PAGES = 1024  # 4 MiB per CPU


def open_perf_ring(events: Map, cpu: int, stack: ExitStack, pages: int = PERF_PAGES) -> mmap.mmap:
    """A raw-sample BPF_OUTPUT perf ring on ``cpu`` in ``events``, undone by ``stack``."""
    attr = _sys.PerfEventAttr(
        type=_sys.PERF_TYPE_SOFTWARE,
        size=_sys.PERF_ATTR_SIZE,
        config=_sys.PERF_COUNT_SW_BPF_OUTPUT,
        sample_type=_sys.PERF_SAMPLE_RAW,
        sample_period=1,
        wakeup_events=1,
    )
    fd = _sys.perf_event_open(attr, -1, cpu, -1, _sys.PERF_FLAG_FD_CLOEXEC)
    stack.callback(os.close, fd)
    area = mmap.mmap(fd, (1 + pages) * PAGE, mmap.MAP_SHARED)
    stack.callback(area.close)
    events.update(struct.pack("<I", cpu), struct.pack("<I", fd))
    _sys.ioctl(fd, _sys.PERF_EVENT_IOC_ENABLE)
    return area


def _perf_samples(area: mmap.mmap) -> list[bytes]:
    head = struct.unpack_from("<Q", area, _sys.DATA_HEAD_OFFSET)[0]
    offset, size = struct.unpack_from("<QQ", area, _sys.DATA_OFFSET_OFFSET)
    if head > size:
        raise AssertionError("test perf ring wrapped")
    samples, pos = [], 0
    while pos < head:
        kind, _misc, length = struct.unpack_from("<IHH", area, offset + pos)
        if kind != _sys.PERF_RECORD_SAMPLE:
            raise AssertionError(f"unexpected perf record type {kind} (lost events?)")
        raw_size = struct.unpack_from("<I", area, offset + pos + _sys.PERF_EVENT_HEADER_SIZE)[0]
        start = offset + pos + _sys.PERF_EVENT_HEADER_SIZE + 4
        samples.append(bytes(area[start : start + raw_size]))
        pos += length
    return samples


def _ringbuf_records(ring: Map) -> list[bytes]:
    size = ring.info.max_entries
    with mmap.mmap(ring.fd, PAGE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE) as area:
        producer = struct.unpack_from("<Q", area, 0)[0]
        if producer > size:
            raise AssertionError("test ring buffer wrapped")
        records, pos = [], 0
        while pos < producer:
            length, _ = struct.unpack_from("<II", area, PAGE + pos)
            if length & _sys.BPF_RINGBUF_BUSY_BIT:
                raise AssertionError("uncommitted ring buffer record after detach")
            start = PAGE + pos + _sys.BPF_RINGBUF_HDR_SZ
            if not length & _sys.BPF_RINGBUF_DISCARD_BIT:
                records.append(bytes(area[start : start + length]))
            pos += (length & 0x3FFFFFFF) + _sys.BPF_RINGBUF_HDR_SZ + 7 & ~7
    return records


SOURCE_PROGRAMS = frozenset({"ebcap_tp", "ebcap_xdp", "ebcap_tc"})
"""Names of the programs these sources load (other tests may load other ebcap programs)."""


def source_programs() -> set[tuple[int, str]]:
    """(id, name) of the loaded programs of the sources tested here."""
    from kernel_helpers import ebcap_programs

    return {(i, name) for i, name in ebcap_programs() if name in SOURCE_PROGRAMS}


def wait_programs_gone(before: set[tuple[int, str]], timeout: float = 5.0) -> None:
    """Assert no program beyond ``before`` stays (tc frees its programs after RCU)."""
    deadline = time.monotonic() + timeout
    while source_programs() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert source_programs() - before == set()


def _drops(counters: Map | None) -> list[int]:
    return read_percpu_u64(counters) if counters is not None else []


def collect(
    source: Source, transport: str, action: Callable[[], None]
) -> tuple[list[bytes], list[int]]:
    """Start ``source``, run ``action``, detach; return (payloads, drops per CPU during it).

    Drops are counted from when the rings are in place: before that a perf
    event array has no ring to write to, which the program counts too.
    """
    with ExitStack() as stack:
        kernel = source.start(transport, RING_BYTES, stack)
        rings = (
            {cpu: open_perf_ring(kernel.events, cpu, stack) for cpu in online_cpus()}
            if transport == "perf"
            else {}
        )
        if kernel.attach is not None:
            kernel.attach()
        start = _drops(kernel.drops)
        action()
        time.sleep(0.05)
        if kernel.detach is not None:
            kernel.detach()
        drops = [after - before for after, before in zip(_drops(kernel.drops), start, strict=True)]
        if transport == "perf":
            payloads = [p for area in rings.values() for p in _perf_samples(area)]
        else:
            payloads = _ringbuf_records(kernel.events)
    return payloads, drops


def structured(source: Source, payloads: list[bytes]) -> np.ndarray:
    """The fixed parts of ``payloads`` as a structured array of the source's layout."""
    layout = source.layout
    if layout is None:
        raise AssertionError("source has no layout")
    short = [len(p) for p in payloads if len(p) < layout.size]
    if short:
        raise AssertionError(f"payloads shorter than the layout ({layout.size}): {short[:5]}")
    joined = b"".join(p[: layout.size] for p in payloads)
    return np.frombuffer(joined, dtype=layout.dtype)
