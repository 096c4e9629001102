"""Walking the records of a BPF ring buffer: pure functions over its data area.

Like :mod:`ebcap.capture.perf_ring`, no syscalls: the data area comes in as a
buffer (the kernel maps it twice in a row; either that or a single copy
works, the span is taken modulo the size) with the consumer and producer
positions. Each record is an 8-byte header (``u32 len`` with the BUSY and
DISCARD bits, ``u32 pg_off``) and ``len`` bytes, the next record at
``round_up(len + 8, 8)``. A busy record is not committed yet: the walk stops
there, since records must be consumed in order. Runs of records of one
length are taken as strided numpy columns.

Ring buffer records carry neither CPU nor time: the batch has 0 in both
columns and the recorder fills them from the payload.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import numpy as np

from ebcap.bpf import _sys
from ebcap.capture.batch import BatchBuilder, EventBatch
from ebcap.capture.ring_walk import RingData, SpanBuffer, copy_span, run_length
from ebcap.errors import CaptureError

RINGBUF_RECORD_HEADER: Final = np.dtype([("len", "<u4"), ("pg_off", "<u4")])
"""struct bpf_ringbuf_hdr; the record's bytes follow it."""

_HEADER: Final = struct.Struct("<II")
_FLAGS: Final = _sys.BPF_RINGBUF_BUSY_BIT | _sys.BPF_RINGBUF_DISCARD_BIT
_ALIGN: Final = 8


class RingbufWalk(NamedTuple):
    """What one walk of a ring buffer found."""

    batch: EventBatch
    consumer_pos: int
    """The new consumer position: just past the last committed or discarded record."""
    discarded: int
    """Records the producer discarded (skipped)."""


def record_span(length: int) -> int:
    """Bytes a record of ``length`` payload bytes takes in the ring, header included."""
    return (length + _sys.BPF_RINGBUF_HDR_SZ + _ALIGN - 1) // _ALIGN * _ALIGN


def walk_ringbuf(
    data: RingData,
    size: int,
    consumer_pos: int,
    producer_pos: int,
    into: SpanBuffer | None = None,
) -> RingbufWalk:
    """The committed records in ``[consumer_pos, producer_pos)`` of a ring of ``size`` bytes
    (copied out through ``into`` when given)."""
    if consumer_pos == producer_pos:
        return RingbufWalk(EventBatch.empty(), consumer_pos, 0)
    chunk = copy_span(data, size, consumer_pos, producer_pos, into)
    batch, used, discarded = parse_ringbuf_records(chunk)
    return RingbufWalk(batch, consumer_pos + used, discarded)


def parse_ringbuf_records(chunk: np.ndarray) -> tuple[EventBatch, int, int]:
    """Walk records laid out from the start of ``chunk`` (uint8).

    Returns the batch, the bytes consumed and the count of discarded records.
    Stops at the first busy record; raises CaptureError on a corrupt one.
    """
    out = BatchBuilder(borrowed=chunk)
    end, pos, discarded = len(chunk), 0, 0
    while end - pos >= _sys.BPF_RINGBUF_HDR_SZ:
        header = _HEADER.unpack_from(chunk.data, pos)[0]
        if header & _sys.BPF_RINGBUF_BUSY_BIT:
            break
        length = header & ~_FLAGS
        step = record_span(length)
        if pos + step > end:
            raise CaptureError(
                f"corrupt ring buffer: a {length}-byte record runs past the producer position"
            )
        if header & _sys.BPF_RINGBUF_DISCARD_BIT:
            discarded += 1
            pos += step
            continue
        pos += _take_run(chunk, pos, length, step, out)
    return out.build(), pos, discarded


def _take_run(chunk: np.ndarray, pos: int, length: int, step: int, out: BatchBuilder) -> int:
    """Take the run of committed ``length``-byte records starting at ``pos``; bytes consumed."""
    start = pos + _sys.BPF_RINGBUF_HDR_SZ
    limit = (len(chunk) - pos) // step
    if limit < 2 or _HEADER.unpack_from(chunk.data, pos + step)[0] != length:
        out.add_sample(0, 0, chunk[start : start + length])
        return step

    def matches(first: int, count: int) -> np.ndarray:
        headers = np.ndarray((count,), RINGBUF_RECORD_HEADER, chunk, pos + first * step, (step,))
        return headers["len"] == length

    count = run_length(matches, limit)
    payloads = np.ndarray((count, length), np.uint8, chunk, start, (step, 1))
    out.add_run(0, 0, payloads)
    return count * step
