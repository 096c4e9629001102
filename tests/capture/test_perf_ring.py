"""Perf ring walking on fake rings built here, checked against a plain reference walk."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebcap.bpf import _sys
from ebcap.capture import perf_ring
from ebcap.capture.batch import BatchBuilder, EventBatch
from ebcap.capture.perf_ring import (
    LOST_RECORD,
    LOST_SAMPLE_ID,
    SAMPLE_RECORD,
    SAMPLE_TYPE,
    walk_perf_ring,
)
from ebcap.errors import CaptureError
from ebcap.format.schema import KIND_LOST_CODE, KIND_SAMPLE_CODE

FILL = 0xEE  # ring bytes outside [tail, head): never to be read


# --- building fake rings ------------------------------------------------------------
def sample(payload: bytes, *, ts: int = 0, cpu: int = 0, slack: int = 0) -> bytes:
    """A PERF_RECORD_SAMPLE as the kernel writes it: raw size padded to 8-byte records.

    ``slack`` adds unused bytes after the raw data (not counted in raw size).
    """
    raw_size = (len(payload) + 4 + 7) // 8 * 8 - 4
    size = 28 + raw_size + slack
    head = struct.pack("<IHHQIII", _sys.PERF_RECORD_SAMPLE, 0, size, ts, cpu, 0, raw_size)
    return head + payload + bytes(raw_size - len(payload) + slack)


def lost(count: int, event_id: int = 77) -> bytes:
    """A LOST record of an event without ``sample_id_all``: 24 bytes, no time."""
    return struct.pack("<IHHQQ", _sys.PERF_RECORD_LOST, 0, 24, event_id, count)


def lost_with_sample_id(count: int, *, ts: int, cpu: int, event_id: int = 77) -> bytes:
    """A LOST record as the readers' events write it (``sample_id_all`` with TIME|CPU):
    40 bytes, the struct sample_id (u64 time, u32 cpu, u32 res) after the count."""
    size = LOST_RECORD.itemsize + LOST_SAMPLE_ID.itemsize
    return struct.pack("<IHHQQQII", _sys.PERF_RECORD_LOST, 0, size, event_id, count, ts, cpu, 0)


def other(rtype: int, size: int) -> bytes:
    return struct.pack("<IHH", rtype, 0, size) + b"\xab" * (size - 8)


def fake_ring(records: list[bytes], data_size: int, tail: int) -> tuple[bytearray, int]:
    """A data area holding ``records`` from free-running position ``tail``; returns (ring, head)."""
    ring = bytearray([FILL]) * data_size
    pos = tail
    for byte in b"".join(records):
        ring[pos % data_size] = byte
        pos += 1
    return ring, pos


# --- the reference ------------------------------------------------------------------
@dataclass
class Row:
    kind: int
    cpu: int
    ts: int
    lost: int
    payload: bytes


def reference_walk(
    ring: bytes, size: int, head: int, tail: int, cpu: int, payload_size: int | None
) -> tuple[list[Row], int, int]:
    """One record at a time with struct, straight from the perf_event.h description."""

    def read(pos: int, n: int) -> bytes:
        return bytes(ring[(pos + i) % size] for i in range(n))

    rows, unknown = [], 0
    while head - tail >= 8:
        rtype, _, rsize = struct.unpack("<IHH", read(tail, 8))
        if tail + rsize > head:
            break
        body = read(tail, rsize)
        if rtype == _sys.PERF_RECORD_SAMPLE:
            ts, scpu, _res, raw_size = struct.unpack_from("<QIII", body, 8)
            keep = raw_size  # padding is trimmed only from events of payload_size
            if payload_size is not None and raw_size == payload_size + (-(payload_size + 4)) % 8:
                keep = payload_size
            rows.append(Row(KIND_SAMPLE_CODE, scpu, ts, 0, body[28 : 28 + keep]))
        elif rtype == _sys.PERF_RECORD_LOST:
            count = struct.unpack_from("<Q", body, 16)[0]
            when = struct.unpack_from("<Q", body, 24)[0] if rsize >= 40 else 0  # sample_id
            rows.append(Row(KIND_LOST_CODE, cpu, when, count, b""))
        else:
            unknown += 1
        tail += rsize
    return rows, tail, unknown


def rows_of(batch: EventBatch) -> list[Row]:
    return [
        Row(int(k), int(c), int(t), int(n), batch.payload(i))
        for i, (k, c, t, n) in enumerate(
            zip(batch.kind, batch.cpu, batch.ts_ns, batch.lost, strict=True)
        )
    ]


def check_against_reference(
    records: list[bytes],
    data_size: int,
    tail: int,
    *,
    cut: int = 0,
    cpu: int = 1,
    payload_size: int | None = None,
) -> tuple[EventBatch, int]:
    ring, head = fake_ring(records, data_size, tail)
    head -= cut
    walk = walk_perf_ring(bytes(ring), data_size, head, tail, cpu, payload_size=payload_size)
    rows, ref_tail, ref_unknown = reference_walk(ring, data_size, head, tail, cpu, payload_size)
    assert rows_of(walk.batch) == rows
    assert (walk.tail, walk.unknown) == (ref_tail, ref_unknown)
    return walk.batch, walk.tail


# --- layouts --------------------------------------------------------------------------
def test_layouts_match_perf_event_h() -> None:
    assert SAMPLE_TYPE == (1 << 2) | (1 << 7) | (1 << 10)
    assert SAMPLE_RECORD.itemsize == 28
    assert SAMPLE_RECORD.fields["time"][1] == 8
    assert SAMPLE_RECORD.fields["cpu"][1] == 16
    assert SAMPLE_RECORD.fields["raw_size"][1] == 24
    assert LOST_RECORD.itemsize == 24 and LOST_RECORD.fields["lost"][1] == 16
    assert LOST_SAMPLE_ID.itemsize == 16 and LOST_SAMPLE_ID.fields["cpu"][1] == 8


def test_raw_size_padding_of_the_fake_matches_the_kernel_rule() -> None:
    assert len(sample(bytes(24))) == 56  # a 24-byte payload arrives with raw size 28
    assert struct.unpack_from("<I", sample(bytes(24)), 24)[0] == 28


# --- fixed cases ----------------------------------------------------------------------
def test_run_of_equal_samples() -> None:
    records = [sample(bytes([i]) * 24, ts=1000 + i, cpu=1) for i in range(100)]
    batch, tail = check_against_reference(records, 8192, 0)
    assert len(batch) == 100 and tail == 5600
    assert batch.ts_ns.tolist() == list(range(1000, 1100))
    assert set(batch.cpu.tolist()) == {1}
    assert batch.payload(7) == bytes([7]) * 24 + bytes(4)  # raw bytes as delivered


def test_payload_size_trims_the_padding() -> None:
    records = [sample(bytes([i]) * 24, ts=i) for i in range(10)]
    ring, head = fake_ring(records, 1024, 0)
    walk = walk_perf_ring(ring, 1024, head, 0, 0, payload_size=24)
    fixed = walk.batch.fixed_payloads(24)
    assert fixed is not None
    assert fixed.tolist() == [[i] * 24 for i in range(10)]


def test_samples_of_another_size_than_payload_size_are_kept_whole() -> None:
    """Only the padding of an event of the layout's size goes: a longer event (a layout
    naming the first fields of a pinned map's events) keeps all its bytes."""
    payloads = [b"abcd", bytes(range(40)), bytes(range(20)), bytes(range(24))]
    ring, head = fake_ring([sample(p) for p in payloads], 1024, 0)
    walk = walk_perf_ring(ring, 1024, head, 0, 0, payload_size=24)
    assert walk.batch.payload(0) == b"abcd"  # raw size 4: nothing to trim
    assert walk.batch.payload(1) == bytes(range(40)) + bytes(4)  # raw size 44, padding kept
    assert walk.batch.payload(2) == bytes(range(20))  # raw size 20: shorter, whole
    assert walk.batch.payload(3) == bytes(range(24))  # raw size 28: the padding goes


def test_wrap_splits_a_header_and_a_payload() -> None:
    records = [sample(bytes([i]) * 40, ts=i) for i in range(30)]  # 72-byte records
    for tail in (1024 - 4, 1024 - 30, 3 * 1024 - 72, 7 * 1024 + 1):
        batch, new_tail = check_against_reference(records[:14], 1024, tail)
        assert len(batch) == 14 and new_tail == tail + 14 * 72
        assert [batch.payload(i)[:40] for i in range(14)] == [bytes([i]) * 40 for i in range(14)]


def test_lost_records_interleaved_take_the_ring_cpu() -> None:
    records = [sample(b"a" * 8, ts=1, cpu=2), lost(5), lost(6)]
    records += [sample(b"b" * 8, ts=2, cpu=2), sample(b"c" * 8, ts=3, cpu=2), lost(9)]
    batch, _ = check_against_reference(records, 512, 100, cpu=2)
    assert batch.kind.tolist() == [0, 1, 1, 0, 0, 1]
    assert batch.lost.tolist() == [0, 5, 6, 0, 0, 9]
    assert batch.cpu.tolist() == [2] * 6
    assert batch.offsets.tolist() == [0, 12, 12, 12, 24, 36, 36]
    assert batch.num_lost == 20


def test_lost_records_with_sample_id_carry_their_kernel_timestamp() -> None:
    """The readers open their events with sample_id_all: a real LOST record is 40 bytes."""
    assert len(lost_with_sample_id(1, ts=1, cpu=0)) == 40
    records = [sample(b"a" * 8, ts=100, cpu=3), lost_with_sample_id(5, ts=150, cpu=3)]
    records += [sample(b"b" * 8, ts=200, cpu=3), lost_with_sample_id(7, ts=250, cpu=3)]
    records += [lost(2), sample(b"c" * 8, ts=300, cpu=3)]  # an old-style LOST: no time
    for tail in (0, 512 - 20, 512 - 36, 5 * 512 - 44):  # LOST records split by the ring's end
        batch, new_tail = check_against_reference(records, 512, tail, cpu=3)
        assert new_tail == tail + sum(map(len, records))
        assert batch.kind.tolist() == [0, 1, 0, 1, 1, 0]
        assert batch.ts_ns.tolist() == [100, 150, 200, 250, 0, 300]
        assert batch.lost.tolist() == [0, 5, 0, 7, 2, 0]
        assert batch.cpu.tolist() == [3] * 6
        assert batch.lengths.tolist() == [12, 0, 12, 0, 0, 12]


def test_a_lost_row_takes_the_cpu_of_its_ring() -> None:
    """One ring per CPU: the ring says where the loss was, whatever the record claims."""
    ring, head = fake_ring([lost_with_sample_id(4, ts=9, cpu=0)], 256, 0)
    walk = walk_perf_ring(ring, 256, head, 0, 1)
    assert rows_of(walk.batch) == [Row(KIND_LOST_CODE, 1, 9, 4, b"")]


def test_mixed_sizes_and_unknown_types() -> None:
    records = [sample(bytes(n), ts=n) for n in (4, 4, 4, 100, 100, 12, 4)]
    records.insert(3, other(14, 40))  # PERF_RECORD_THROTTLE-like: skipped
    records.append(other(99, 8))
    batch, _ = check_against_reference(records, 2048, 0)
    assert [len(batch.payload(i)) for i in range(len(batch))] == [4, 4, 4, 100, 100, 12, 4]


def test_equal_record_sizes_with_different_raw_sizes() -> None:
    records = [sample(bytes([1]) * 24), sample(bytes([2]) * 16, slack=8), sample(bytes([3]) * 24)]
    batch, _ = check_against_reference(records * 3, 1024, 0)
    assert [len(batch.payload(i)) for i in range(3)] == [28, 20, 28]


def test_partial_record_is_left_for_the_next_drain() -> None:
    records = [sample(bytes([i]) * 16, ts=i) for i in range(5)]  # 48-byte records
    ring, head = fake_ring(records, 512, 64)
    first = walk_perf_ring(ring, 512, head - 20, 64, 0)
    assert len(first.batch) == 4 and first.tail == 64 + 4 * 48
    header_only = walk_perf_ring(ring, 512, first.tail + 5, first.tail, 0)
    assert len(header_only.batch) == 0 and header_only.tail == first.tail
    rest = walk_perf_ring(ring, 512, head, first.tail, 0)
    assert len(rest.batch) == 1 and rest.batch.ts_ns.tolist() == [4] and rest.tail == head


def test_empty_span() -> None:
    walk = walk_perf_ring(bytes(64), 64, 40, 40, 0)
    assert len(walk.batch) == 0 and walk.tail == 40 and walk.unknown == 0


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (struct.pack("<IHH", _sys.PERF_RECORD_SAMPLE, 0, 0), "record of 0 bytes"),
        (other(_sys.PERF_RECORD_SAMPLE, 16), "sample record of 16 bytes"),
        (sample(bytes(8))[:24] + struct.pack("<I", 200) + bytes(12), "raw size 200"),
        (other(_sys.PERF_RECORD_LOST, 16), "LOST record of 16 bytes"),
    ],
)
def test_corrupt_records_raise(record: bytes, message: str) -> None:
    ring, head = fake_ring([record], 256, 0)
    with pytest.raises(CaptureError, match=message):
        walk_perf_ring(ring, 256, head, 0, 3)


def test_positions_out_of_step_raise() -> None:
    with pytest.raises(CaptureError, match="out of step"):
        walk_perf_ring(bytes(256), 256, 1000, 0, 0)


@dataclass
class _Calls:
    """What a walk handed the batch builder: one call per run or single record."""

    runs: list[int]
    singles: int = 0


def _count_builder_calls(monkeypatch: pytest.MonkeyPatch) -> _Calls:
    calls = _Calls(runs=[])
    real_run = BatchBuilder.add_run

    def add_run(
        self: BatchBuilder, cpu: np.ndarray | int, ts_ns: np.ndarray | int, payloads: np.ndarray
    ) -> None:
        calls.runs.append(len(payloads))
        real_run(self, cpu, ts_ns, payloads)

    def add_sample(self: BatchBuilder, cpu: int, ts_ns: int, payload: np.ndarray) -> None:
        calls.singles += 1
        real_run(self, cpu, ts_ns, payload.reshape(1, -1))

    monkeypatch.setattr(BatchBuilder, "add_run", add_run)
    monkeypatch.setattr(BatchBuilder, "add_sample", add_sample)
    return calls


class _CountingStruct:
    """A struct.Struct that counts its reads: how many times a walk looked at a header."""

    def __init__(self, inner: struct.Struct) -> None:
        self.inner, self.size, self.reads = inner, inner.size, 0

    def unpack_from(self, buffer: memoryview, offset: int = 0) -> tuple[int, ...]:
        self.reads += 1
        return self.inner.unpack_from(buffer, offset)


def test_a_full_ring_of_equal_samples_is_one_vectorised_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recorder's common case, a 16 MiB ring of 64-byte events, is taken as one
    strided run, not a Python step per record."""
    calls = _count_builder_calls(monkeypatch)
    size = 1 << 24
    n = size // 96
    ring = np.full(size, FILL, dtype=np.uint8)
    records = np.frombuffer(sample(bytes(range(64)), ts=5, cpu=1) * n, dtype=np.uint8)
    ring[: len(records)] = records
    walk = walk_perf_ring(ring, size, n * 96, 0, 1, payload_size=64)
    assert (calls.runs, calls.singles) == ([n], 0)
    assert len(walk.batch) == n and walk.tail == n * 96
    assert walk.batch.payload(n - 1) == bytes(range(64))


def test_pattern_breaking_every_record_stays_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records whose sizes alternate break every run at once: each record is then read
    a bounded number of times, never again per record after it."""
    header = _CountingStruct(perf_ring._HEADER)
    sample_header = _CountingStruct(perf_ring._SAMPLE)
    monkeypatch.setattr(perf_ring, "_HEADER", header)
    monkeypatch.setattr(perf_ring, "_SAMPLE", sample_header)
    calls = _count_builder_calls(monkeypatch)
    records = [sample(bytes(8 + 8 * (i % 2))) for i in range(4000)] + [lost(1)] * 1000
    ring, head = fake_ring(records, 1 << 18, 0)
    walk = walk_perf_ring(ring, 1 << 18, head, 0, 0)
    assert len(walk.batch) == 5000 and calls.singles == 4000
    assert header.reads + sample_header.reads <= 3 * len(records)


# --- randomized against the reference -------------------------------------------------
_record = st.one_of(
    st.tuples(
        st.just("sample"),
        st.sampled_from([0, 1, 4, 8, 20, 24, 60, 64, 100]),
        st.integers(1, 40),  # repeated this many times: runs for the fast path
        st.integers(0, 3),
    ),
    st.tuples(st.just("slack"), st.sampled_from([4, 12]), st.integers(1, 5), st.just(1)),
    st.tuples(st.just("lost"), st.integers(1, 2**40), st.integers(1, 3), st.just(0)),
    st.tuples(st.just("lost_id"), st.integers(1, 2**40), st.integers(1, 3), st.integers(0, 3)),
    st.tuples(st.just("other"), st.sampled_from([8, 16, 48]), st.integers(1, 2), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(_record, min_size=1, max_size=12),
    tail=st.integers(0, 1 << 20),
    cut=st.integers(0, 40),
    payload_size=st.one_of(st.none(), st.sampled_from([4, 24, 64])),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_rings_match_the_reference(
    specs: list[tuple[str, int, int, int]],
    tail: int,
    cut: int,
    payload_size: int | None,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    records = []
    for kind, arg, repeat, cpu in specs:
        for _ in range(repeat):
            if kind in ("sample", "slack"):
                payload = rng.integers(0, 256, arg, dtype=np.uint8).tobytes()
                ts = int(rng.integers(0, 2**63))
                records.append(sample(payload, ts=ts, cpu=cpu, slack=8 * (kind == "slack")))
            elif kind == "lost":
                records.append(lost(arg))
            elif kind == "lost_id":
                records.append(lost_with_sample_id(arg, ts=int(rng.integers(0, 2**63)), cpu=cpu))
            else:
                records.append(other(int(rng.choice([1, 3, 14])), arg))
    total = sum(map(len, records))
    data_size = 1 << max(total - 1, 1).bit_length()
    cut = min(cut, total)
    check_against_reference(records, data_size, tail, cut=cut, payload_size=payload_size)
