"""BPF ring buffer walking on fake rings built here, checked against a plain reference walk."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebcap.bpf import _sys
from ebcap.capture.batch import BatchBuilder, EventBatch
from ebcap.capture.ring_walk import SpanBuffer
from ebcap.capture.ringbuf_ring import RINGBUF_RECORD_HEADER, record_span, walk_ringbuf
from ebcap.errors import CaptureError
from ebcap.format.schema import KIND_SAMPLE_CODE

FILL = 0xEE
BUSY, DISCARD = _sys.BPF_RINGBUF_BUSY_BIT, _sys.BPF_RINGBUF_DISCARD_BIT


def record(payload: bytes, flags: int = 0, pg_off: int = 3) -> bytes:
    """A ring buffer record: header, payload, padding to 8 bytes (filled, never read)."""
    pad = record_span(len(payload)) - 8 - len(payload)
    return struct.pack("<II", len(payload) | flags, pg_off) + payload + b"\xcc" * pad


def fake_ring(records: list[bytes], size: int, consumer: int) -> tuple[bytearray, int]:
    """The data area (``size`` bytes) holding ``records`` from ``consumer``; (ring, producer)."""
    ring = bytearray([FILL]) * size
    pos = consumer
    for byte in b"".join(records):
        ring[pos % size] = byte
        pos += 1
    return ring, pos


def twice(ring: bytearray) -> bytes:
    """The data area as the kernel maps it: twice in a row."""
    return bytes(ring) * 2


def reference_walk(
    ring: bytes, size: int, consumer: int, producer: int
) -> tuple[list[bytes], int, int]:
    """One record at a time, libbpf's ringbuf_process_ring() in Python."""

    def read(pos: int, n: int) -> bytes:
        return bytes(ring[(pos + i) % size] for i in range(n))

    payloads, discarded = [], 0
    while consumer < producer:
        (length,) = struct.unpack("<I", read(consumer, 4))
        if length & BUSY:
            break
        real = length & ~(BUSY | DISCARD)
        if length & DISCARD:
            discarded += 1
        else:
            payloads.append(read(consumer + 8, real))
        consumer += (real + 8 + 7) // 8 * 8
    return payloads, consumer, discarded


def payloads_of(batch: EventBatch) -> list[bytes]:
    return [batch.payload(i) for i in range(len(batch))]


def check_against_reference(
    records: list[bytes], size: int, consumer: int
) -> tuple[EventBatch, int]:
    ring, producer = fake_ring(records, size, consumer)
    ref, ref_pos, ref_discarded = reference_walk(ring, size, consumer, producer)
    for data in (bytes(ring), twice(ring)):
        walk = walk_ringbuf(data, size, consumer, producer)
        assert payloads_of(walk.batch) == ref
        assert (walk.consumer_pos, walk.discarded) == (ref_pos, ref_discarded)
        assert walk.batch.kind.tolist() == [KIND_SAMPLE_CODE] * len(ref)
        assert not walk.batch.cpu.any() and not walk.batch.ts_ns.any() and not walk.batch.lost.any()
    return walk.batch, walk.consumer_pos


def test_header_layout_matches_bpf_h() -> None:
    assert RINGBUF_RECORD_HEADER.itemsize == _sys.BPF_RINGBUF_HDR_SZ == 8
    assert (BUSY, DISCARD) == (0x80000000, 0x40000000)
    assert [record_span(n) for n in (0, 1, 8, 9, 60)] == [8, 16, 16, 24, 72]


def test_run_of_equal_records() -> None:
    records = [record(struct.pack("<Q", i) * 8) for i in range(200)]
    batch, pos = check_against_reference(records, 16384, 0)
    assert len(batch) == 200 and pos == 200 * 72
    fixed = batch.fixed_payloads(64)
    assert fixed is not None
    assert fixed.view("<u8")[:, 0].tolist() == list(range(200))


def test_busy_record_stops_the_walk_and_keeps_later_ones() -> None:
    records = [record(b"a" * 16), record(b"b" * 16), record(b"c" * 16, BUSY), record(b"d" * 16)]
    batch, pos = check_against_reference(records, 4096, 4096 - 8)
    assert payloads_of(batch) == [b"a" * 16, b"b" * 16] and pos == 4096 - 8 + 48


def test_busy_first_record_consumes_nothing() -> None:
    batch, pos = check_against_reference([record(b"x" * 8, BUSY)], 4096, 777 * 8)
    assert len(batch) == 0 and pos == 777 * 8


def test_discarded_records_are_skipped_and_counted() -> None:
    records = [record(b"a" * 8), record(b"b" * 8, DISCARD), record(b"c" * 8, DISCARD)]
    records += [record(b"d" * 8), record(b"e" * 13)]
    ring, producer = fake_ring(records, 4096, 0)
    walk = walk_ringbuf(ring, 4096, 0, producer)
    assert payloads_of(walk.batch) == [b"a" * 8, b"d" * 8, b"e" * 13]
    assert walk.discarded == 2 and walk.consumer_pos == producer
    check_against_reference(records, 4096, 0)


def test_wrap_splits_headers_and_payloads() -> None:
    records = [record(bytes([i]) * 20) for i in range(40)]  # 32 bytes each
    for consumer in (4096 - 8, 4096 - 16, 4096 - 24, 9 * 4096 - 32):
        batch, pos = check_against_reference(records, 4096, consumer)
        assert payloads_of(batch) == [bytes([i]) * 20 for i in range(40)]
        assert pos == consumer + 40 * 32


def test_mixed_lengths() -> None:
    lengths = [8, 8, 8, 100, 3, 3, 3, 3, 0, 64, 64]
    records = [record(bytes([n]) * n) for n in lengths]
    batch, _ = check_against_reference(records, 4096, 0)
    assert [len(p) for p in payloads_of(batch)] == lengths


def test_empty_span() -> None:
    walk = walk_ringbuf(bytes(4096), 4096, 512, 512)
    assert len(walk.batch) == 0 and walk.consumer_pos == 512


def test_record_past_the_producer_raises() -> None:
    ring, producer = fake_ring([record(bytes(64))], 4096, 0)
    with pytest.raises(CaptureError, match="64-byte record runs past the producer"):
        walk_ringbuf(ring, 4096, 0, producer - 8)


def test_a_full_ring_of_equal_records_is_one_vectorised_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recorder's common case, a 16 MiB ring of 64-byte events, is taken as one
    strided run, not a Python step per record."""
    runs: list[int] = []
    singles: list[int] = []
    real_run = BatchBuilder.add_run

    def add_run(self: BatchBuilder, cpu: int, ts_ns: int, payloads: np.ndarray) -> None:
        runs.append(len(payloads))
        real_run(self, cpu, ts_ns, payloads)

    monkeypatch.setattr(BatchBuilder, "add_run", add_run)
    monkeypatch.setattr(BatchBuilder, "add_sample", lambda *args: singles.append(1))
    size = 1 << 24
    one = record(bytes(range(64)))
    n = size // len(one)
    ring = np.full(size, FILL, dtype=np.uint8)
    ring[: n * len(one)] = np.frombuffer(one * n, dtype=np.uint8)
    walk = walk_ringbuf(ring, size, 0, n * len(one))
    assert (runs, singles) == ([n], [])
    assert len(walk.batch) == n and walk.consumer_pos == n * len(one)
    assert walk.batch.payload(n - 1) == bytes(range(64))


_record = st.tuples(
    st.sampled_from([0, 1, 7, 8, 16, 24, 60, 64, 200]),
    st.integers(1, 40),
    st.sampled_from([0, 0, 0, DISCARD, BUSY]),
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(_record, min_size=1, max_size=10),
    consumer=st.integers(0, 1 << 16).map(lambda n: n * 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_rings_match_the_reference(
    specs: list[tuple[int, int, int]], consumer: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    records = [
        record(rng.integers(0, 256, length, dtype=np.uint8).tobytes(), flags)
        for length, repeat, flags in specs
        for _ in range(repeat)
    ]
    total = sum(map(len, records))
    size = max(4096, 1 << (total - 1).bit_length())
    check_against_reference(records, size, consumer)


@pytest.mark.parametrize(
    "records",
    [
        [b"first-1!"],  # one record: a view of the span buffer until the batch copies it
        [b"first-1!", b"first-2!"],  # a run of equal records
        [b"first-1!", b"longer-first-3!!"],  # records of two lengths
    ],
    ids=["one", "run", "mixed"],
)
def test_a_reused_span_buffer_never_changes_an_earlier_batch(records: list[bytes]) -> None:
    """The readers copy every drain's span into the same memory; what a walk returned
    must own its bytes, or the next drain would rewrite the rows the writer still holds."""
    into = SpanBuffer(64)
    ring, producer = fake_ring([record(r) for r in records], 1024, 0)
    first = walk_ringbuf(bytes(ring), 1024, 0, producer, into)
    assert payloads_of(first.batch) == records
    other, other_producer = fake_ring([record(b"X" * len(r)) for r in records], 1024, 0)
    second = walk_ringbuf(bytes(other), 1024, 0, other_producer, into)
    assert payloads_of(second.batch) == [b"X" * len(r) for r in records]
    assert payloads_of(first.batch) == records


def test_the_span_buffer_is_reused_and_grown_in_memory_already_touched() -> None:
    into = SpanBuffer(16)
    a = into.take(16)
    assert np.shares_memory(a, into.take(8))  # reused
    big = into.take(1 << 20)  # grown: a new array, every page written once
    assert len(big) == 1 << 20 and not np.shares_memory(a, big)
    assert not big.any()
