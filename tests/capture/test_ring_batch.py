"""EventBatch: the columns a ring reader hands over, and their conversions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ebcap.capture.batch import (
    BatchBuilder,
    EventBatch,
    fixed_rows,
)
from ebcap.capture.ring_walk import RingPosition, copy_span, run_length
from ebcap.errors import CaptureError
from ebcap.format.schema import KIND_LOST, KIND_LOST_CODE, KIND_SAMPLE, KIND_SAMPLE_CODE, KINDS


def make_batch(rows: list[tuple[int, int, bytes | int]]) -> EventBatch:
    """Rows of (cpu, ts, payload) for samples or (cpu, ts, lost count) for lost rows."""
    out = BatchBuilder()
    for cpu, ts, item in rows:
        if isinstance(item, int):
            out.add_lost(cpu, ts, item)
        else:
            out.add_sample(cpu, ts, np.frombuffer(item, dtype=np.uint8))
    return out.build()


ROWS: list[tuple[int, int, bytes | int]] = [
    (0, 10, b"abcd"),
    (1, 11, b""),
    (1, 0, 7),
    (0, 12, b"xyz0123"),
    (3, 13, b"Q"),
]


def test_kind_codes_follow_the_file_dictionary() -> None:
    assert KINDS[KIND_SAMPLE_CODE] == KIND_SAMPLE
    assert KINDS[KIND_LOST_CODE] == KIND_LOST


def test_builder_columns_and_payloads() -> None:
    batch = make_batch(ROWS)
    assert len(batch) == 5
    assert batch.cpu.dtype == np.uint16 and batch.cpu.tolist() == [0, 1, 1, 0, 3]
    assert batch.ts_ns.dtype == np.uint64 and batch.ts_ns.tolist() == [10, 11, 0, 12, 13]
    assert batch.kind.dtype == np.int8 and batch.kind.tolist() == [0, 0, 1, 0, 0]
    assert batch.lost.dtype == np.uint64 and batch.lost.tolist() == [0, 0, 7, 0, 0]
    assert batch.offsets.dtype == np.int64 and batch.offsets.tolist() == [0, 4, 4, 4, 11, 12]
    assert batch.values.dtype == np.uint8
    assert [batch.payload(i) for i in range(5)] == [b"abcd", b"", b"", b"xyz0123", b"Q"]
    assert batch.num_samples == 4 and batch.num_lost == 7


def test_empty() -> None:
    empty = EventBatch.empty()
    assert len(empty) == 0 and empty.offsets.tolist() == [0]
    assert len(empty.to_arrow_binary()) == 0
    assert empty.fixed_payloads(8) is not None and empty.fixed_payloads(8).shape == (0, 8)
    assert len(BatchBuilder().build()) == 0


def test_concat_keeps_order_and_rebases_offsets() -> None:
    a, b = make_batch(ROWS[:2]), make_batch(ROWS[2:])
    whole = EventBatch.concat([EventBatch.empty(), a, EventBatch.empty(), b])
    ref = make_batch(ROWS)
    for name in ("cpu", "ts_ns", "kind", "lost", "offsets", "values"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(ref, name), err_msg=name)
    assert len(EventBatch.concat([])) == 0


def test_concat_of_taken_slices() -> None:
    batch = make_batch(ROWS)
    tail = batch.take([3, 4])
    both = EventBatch.concat([tail, batch.take([0])])
    assert [both.payload(i) for i in range(3)] == [b"xyz0123", b"Q", b"abcd"]
    assert both.cpu.tolist() == [0, 3, 0]


def test_take_contiguous_and_scattered_rows() -> None:
    batch = make_batch(ROWS)
    head = batch.take(np.arange(3))
    assert [head.payload(i) for i in range(3)] == [b"abcd", b"", b""]
    assert head.kind.tolist() == [0, 0, 1] and head.lost.tolist() == [0, 0, 7]
    picked = batch.take([4, 0, 3, 0])
    assert [picked.payload(i) for i in range(4)] == [b"Q", b"abcd", b"xyz0123", b"abcd"]
    assert picked.ts_ns.tolist() == [13, 10, 12, 10]
    assert picked.offsets.tolist() == [0, 1, 5, 12, 16]
    none = batch.take(np.zeros(0, dtype=np.int64))
    assert len(none) == 0 and none.offsets.tolist() == [0]


def test_arrow_binary_matches_payloads_and_shares_values() -> None:
    batch = make_batch(ROWS)
    arr = batch.to_arrow_binary()
    assert arr.type == pa.binary()
    assert arr.to_pylist() == [b"abcd", b"", b"", b"xyz0123", b"Q"]
    assert arr.buffers()[2].address == batch.values.ctypes.data  # no payload copy


def test_arrow_binary_of_a_batch_whose_offsets_do_not_start_at_zero() -> None:
    base = make_batch(ROWS)
    shifted = EventBatch(
        cpu=base.cpu[3:],
        ts_ns=base.ts_ns[3:],
        kind=base.kind[3:],
        lost=base.lost[3:],
        offsets=base.offsets[3:],
        values=base.values,
    )
    assert shifted.to_arrow_binary().to_pylist() == [b"xyz0123", b"Q"]
    assert shifted.payload(0) == b"xyz0123"
    assert shifted.fixed_payloads(1) is None  # lengths 7 and 1


def test_fixed_payloads_is_a_view_when_lengths_agree() -> None:
    payloads = np.arange(5 * 12, dtype=np.uint8).reshape(5, 12)
    out = BatchBuilder()
    out.add_run(np.arange(5), np.arange(5) * 100, payloads)
    batch = out.build()
    full = batch.fixed_payloads(12)
    assert full is not None and full.shape == (5, 12)
    np.testing.assert_array_equal(full, payloads)
    assert np.shares_memory(full, batch.values)
    prefix = batch.fixed_payloads(8)  # longer payloads: their first 8 bytes, still a view
    assert prefix is not None and prefix.shape == (5, 8)
    np.testing.assert_array_equal(prefix, payloads[:, :8])
    assert np.shares_memory(prefix, batch.values)
    assert batch.fixed_payloads(13) is None


def test_fixed_payloads_none_with_lost_rows_or_mixed_lengths() -> None:
    assert make_batch([(0, 1, b"abcd"), (0, 0, 3)]).fixed_payloads(4) is None
    assert make_batch([(0, 1, b"abcd"), (0, 2, b"abcdef")]).fixed_payloads(4) is None
    same = make_batch([(0, 1, b"abcd"), (1, 2, b"efgh")]).fixed_payloads(4)
    assert same is not None and same.tobytes() == b"abcdefgh"


def test_copy_span_wraps_the_ring_end() -> None:
    ring = bytes(range(16))
    assert copy_span(ring, 16, 12, 20).tobytes() == bytes([12, 13, 14, 15, 0, 1, 2, 3])
    assert copy_span(ring, 16, 16 * 5 + 3, 16 * 5 + 7).tobytes() == bytes([3, 4, 5, 6])
    assert copy_span(ring, 16, 7, 7 + 16).tobytes() == ring[7:] + ring[:7]
    assert copy_span(ring, 16, 9, 9).tobytes() == b""


@pytest.mark.parametrize(
    ("size", "start", "end", "message"),
    [(12, 0, 4, "power of two"), (16, 10, 4, "out of step"), (16, 0, 17, "out of step")],
)
def test_copy_span_rejects_impossible_positions(
    size: int, start: int, end: int, message: str
) -> None:
    with pytest.raises(CaptureError, match=message):
        copy_span(bytes(16), size, start, end)


def test_ring_position_reads_and_stores_the_whole_word_in_place() -> None:
    area = bytearray(64)
    position = RingPosition(area, 8)
    position.store(0x0102030405060708)
    assert area[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1]) and not any(area[:8] + area[16:])
    area[8:16] = (2**64 - 8).to_bytes(8, "little")
    assert position.load() == 2**64 - 8
    position.release()
    position.release()
    with pytest.raises(CaptureError, match="released"):
        position.load()
    with pytest.raises(ValueError, match="aligned"):
        RingPosition(area, 12)


@pytest.mark.parametrize("limit", [0, 1, 31, 32, 33, 100, 5000])
@pytest.mark.parametrize("breaks_at", [0, 1, 31, 32, 64, 1000, None])
def test_run_length_finds_the_first_break(limit: int, breaks_at: int | None) -> None:
    seen: list[tuple[int, int]] = []

    def matches(first: int, count: int) -> np.ndarray:
        seen.append((first, count))
        index = np.arange(first, first + count)
        return index != breaks_at

    expected = limit if breaks_at is None or breaks_at >= limit else breaks_at
    assert run_length(matches, limit) == expected
    checked = sum(count for _, count in seen)
    assert checked <= max(2 * expected, 32) + 32  # windows double: linear, never quadratic


@pytest.mark.parametrize(
    "starts",
    [[], [5], [0, 40, 80, 120], [0, 40, 40, 80], [3, 50, 51, 200, 120]],
    ids=["none", "one", "equal steps", "repeated start", "any order"],
)
def test_fixed_rows_are_the_bytes_at_each_start(starts: list[int]) -> None:
    values = np.random.default_rng(len(starts)).integers(0, 256, 300, dtype=np.uint8)
    want = np.array([values[s : s + 32] for s in starts], dtype=np.uint8).reshape(-1, 32)
    got = fixed_rows(values, np.array(starts, dtype=np.int64), 32)
    assert got.flags.c_contiguous and np.array_equal(got, want)
