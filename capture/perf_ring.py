"""Walking the records of one perf ring: pure functions over its data area.

No syscalls here: the functions take the data area as a buffer plus the
ring's positions, so they run the same on a real mmap and on a fake ring
built in a test. The span ``[tail, head)`` is copied out once (two slices
when it wraps), then walked. A perf buffer mostly holds runs of samples of
one size, so the walk checks with numpy that the headers at ``0, S, 2S, ...``
are all samples of size ``S`` and takes time, CPU and payload of the whole
run as strided columns; only a record that breaks the pattern (a LOST
record, another size, an unknown type) takes a step in Python.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import numpy as np

from ebcap.bpf import _sys
from ebcap.capture.batch import BatchBuilder, EventBatch
from ebcap.capture.ring_walk import RingData, SpanBuffer, copy_span, run_length
from ebcap.errors import CaptureError

SAMPLE_TYPE: Final = _sys.PERF_SAMPLE_TIME | _sys.PERF_SAMPLE_CPU | _sys.PERF_SAMPLE_RAW
"""The sample_type the readers open their events with; the layouts below follow it."""

PERF_EVENT_HEADER: Final = np.dtype([("type", "<u4"), ("misc", "<u2"), ("size", "<u2")])
"""struct perf_event_header."""

SAMPLE_RECORD: Final = np.dtype(
    [
        *PERF_EVENT_HEADER.descr,
        ("time", "<u8"),  # PERF_SAMPLE_TIME
        ("cpu", "<u4"),  # PERF_SAMPLE_CPU: u32 cpu, u32 res
        ("res", "<u4"),
        ("raw_size", "<u4"),  # PERF_SAMPLE_RAW: u32 size, then the raw bytes
    ]
)
"""PERF_RECORD_SAMPLE for :data:`SAMPLE_TYPE`, up to the raw bytes (28 bytes).

The raw size counts padding that keeps the record 8-byte aligned: a 24-byte
payload arrives with raw size 28."""

LOST_RECORD: Final = np.dtype([*PERF_EVENT_HEADER.descr, ("id", "<u8"), ("lost", "<u8")])
"""PERF_RECORD_LOST: events the kernel dropped because the ring was full."""

LOST_SAMPLE_ID: Final = np.dtype([("time", "<u8"), ("cpu", "<u4"), ("res", "<u4")])
"""struct sample_id after a LOST record when the event has ``sample_id_all``: the
TIME and CPU fields of :data:`SAMPLE_TYPE`, so a loss has a kernel timestamp."""

_HEADER: Final = struct.Struct("<IHH")
_SAMPLE: Final = struct.Struct("<IHHQIII")
_LOST: Final = struct.Struct("<IHHQQ")
_U64: Final = struct.Struct("<Q")


class PerfWalk(NamedTuple):
    """What one walk of a perf ring found."""

    batch: EventBatch
    tail: int
    """The new data_tail: just past the last whole record taken."""
    unknown: int
    """Records of other types, skipped by their header size."""


def walk_perf_ring(
    data: RingData,
    data_size: int,
    head: int,
    tail: int,
    cpu: int,
    *,
    payload_size: int | None = None,
    into: SpanBuffer | None = None,
) -> PerfWalk:
    """The records in ``[tail, head)`` of the perf ring of ``cpu``.

    ``data`` is the ring's data area (``data_size`` bytes, a power of two);
    ``head`` and ``tail`` are the free-running data_head and data_tail.
    Samples keep their raw bytes as delivered (padding included), except that
    those whose raw size is exactly ``payload_size`` padded are trimmed to it
    (see :func:`kept_bytes`). LOST records become
    lost rows on ``cpu``. A record cut short by ``head`` is left for later. The span
    is copied out through ``into`` when given.
    """
    if head == tail:
        return PerfWalk(EventBatch.empty(), tail, 0)
    chunk = copy_span(data, data_size, tail, head, into)
    batch, used, unknown = parse_perf_records(chunk, cpu, payload_size=payload_size)
    return PerfWalk(batch, tail + used, unknown)


def parse_perf_records(
    chunk: np.ndarray, cpu: int, *, payload_size: int | None = None
) -> tuple[EventBatch, int, int]:
    """Walk records laid out from the start of ``chunk`` (uint8).

    Returns the batch, the bytes consumed (whole records only) and the count
    of records of unknown type. Raises CaptureError on a corrupt record.
    """
    out = BatchBuilder(borrowed=chunk)
    end, pos, unknown = len(chunk), 0, 0
    while end - pos >= _HEADER.size:
        rtype, _misc, size = _HEADER.unpack_from(chunk.data, pos)
        if size < _HEADER.size:
            raise CaptureError(f"corrupt perf ring on CPU {cpu}: record of {size} bytes")
        if pos + size > end:
            break  # cut short by head: the rest comes with the next drain
        if rtype == _sys.PERF_RECORD_SAMPLE:
            pos += _take_samples(chunk, pos, size, cpu, payload_size, out)
        elif rtype == _sys.PERF_RECORD_LOST:
            if size < LOST_RECORD.itemsize:
                raise CaptureError(f"corrupt perf ring on CPU {cpu}: LOST record of {size} bytes")
            lost = _LOST.unpack_from(chunk.data, pos)[4]
            has_time = size >= LOST_RECORD.itemsize + LOST_SAMPLE_ID.itemsize
            when = _U64.unpack_from(chunk.data, pos + LOST_RECORD.itemsize)[0] if has_time else 0
            out.add_lost(cpu, when, lost)
            pos += size
        else:
            unknown += 1
            pos += size
    return out.build(), pos, unknown


def _take_samples(
    chunk: np.ndarray,
    pos: int,
    size: int,
    cpu: int,
    payload_size: int | None,
    out: BatchBuilder,
) -> int:
    """Take the run of samples of ``size`` bytes starting at ``pos``; bytes consumed."""
    if size < SAMPLE_RECORD.itemsize:
        raise CaptureError(f"corrupt perf ring on CPU {cpu}: sample record of {size} bytes")
    _t, _m, _s, time, sample_cpu, _res, raw_size = _SAMPLE.unpack_from(chunk.data, pos)
    if raw_size > size - SAMPLE_RECORD.itemsize:
        raise CaptureError(
            f"corrupt perf ring on CPU {cpu}: raw size {raw_size} in a {size}-byte sample"
        )
    length = kept_bytes(raw_size, payload_size)
    start = pos + SAMPLE_RECORD.itemsize
    limit = (len(chunk) - pos) // size
    if limit < 2 or _HEADER.unpack_from(chunk.data, pos + size)[::2] != (
        _sys.PERF_RECORD_SAMPLE,
        size,
    ):
        out.add_sample(sample_cpu, time, chunk[start : start + length])
        return size

    def matches(first: int, count: int) -> np.ndarray:
        headers = _records(chunk, pos + first * size, count, size)
        return (
            (headers["type"] == _sys.PERF_RECORD_SAMPLE)
            & (headers["size"] == size)
            & (headers["raw_size"] == raw_size)
        )

    count = run_length(matches, limit)
    headers = _records(chunk, pos, count, size)
    payloads = np.ndarray((count, length), np.uint8, chunk, start, (size, 1))
    out.add_run(headers["cpu"], headers["time"], payloads)
    return count * size


def kept_bytes(raw_size: int, payload_size: int | None) -> int:
    """The bytes of a raw sample to keep when events are exactly ``payload_size`` bytes.

    The kernel pads raw data so that its u32 size and the data end 8-byte
    aligned, without writing the padding (it holds stale ring bytes). A raw
    size that is ``payload_size`` padded is such an event: the padding goes.
    Any other size is kept whole. Only a caller that knows every event's size
    passes one (a built-in source, or a layout ending in padding): the raw
    size alone does not tell an event's size to the byte.
    """
    if payload_size is not None and raw_size == -(-(payload_size + 4) // 8) * 8 - 4:
        return payload_size
    return raw_size


def _records(chunk: np.ndarray, offset: int, count: int, stride: int) -> np.ndarray:
    """A strided view of ``count`` sample headers, ``stride`` bytes apart."""
    return np.ndarray((count,), SAMPLE_RECORD, chunk, offset, (stride,))
