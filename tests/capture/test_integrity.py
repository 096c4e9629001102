"""The bench's integrity check finds each kind of damage, across batch boundaries."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ebcap.bpf.programs.bench import PAD_MAGIC, bench_event_dtype
from ebcap.capture.bench_integrity import check_integrity, unwrap32

SIZE = 32


def events(cpu: int, seqs: list[int]) -> list[bytes]:
    out = np.zeros(len(seqs), dtype=bench_event_dtype(SIZE))
    out["ts"] = 1_000_000 + np.arange(len(seqs), dtype=np.uint64) * 7
    out["cpu"], out["seq"] = cpu, seqs
    out["pad"] = (out["ts"] ^ np.uint64(PAD_MAGIC))[:, None]
    return [row.tobytes() for row in out]


def batch(cpus: list[int], payloads: list[bytes], lost_rows: int = 0) -> pa.RecordBatch:
    kinds = ["sample"] * len(payloads) + ["lost"] * lost_rows
    return pa.RecordBatch.from_pydict(
        {
            "kind": pa.array(kinds).dictionary_encode(),
            "cpu": pa.array(cpus + [0] * lost_rows, pa.uint16()),
            "data": pa.array(payloads + [b""] * lost_rows, pa.binary()),
        }
    )


def test_clean_events_over_two_batches_pass() -> None:
    first, second = events(0, list(range(50))), events(0, list(range(50, 80)))
    report = check_integrity([batch([0] * 50, first, 3), batch([0] * 30, second)], SIZE)
    assert (report.received, report.corrupted, report.duplicates) == (80, 0, 0)
    assert report.received_per_cpu == {0: 80} and report.holes_per_cpu == {0: 0}
    assert report.out_of_order_per_cpu == {0: 0}


def test_each_kind_of_damage_is_counted() -> None:
    one = events(0, [0, 1, 2, 3, 4])
    one[1] = one[1][:-1] + bytes([one[1][-1] ^ 1])  # a flipped padding bit
    two = events(1, [0, 2, 3])
    three = [*events(0, [7, 6, 6]), b"\x00" * 8]  # a gap, out of order, a duplicate, short
    report = check_integrity(
        [batch([0] * 5, one), batch([1] * 3, two), batch([0] * 4, three)], SIZE
    )
    assert report.received == 12
    assert report.corrupted == 2  # flipped bit, short payload
    assert report.duplicates == 1
    assert report.received_per_cpu == {0: 6, 1: 3}  # distinct: 0 2 3 4 6 7; 0 2 3
    assert report.holes_per_cpu == {0: 2, 1: 1}  # 1 and 5 missing; 1 missing
    assert report.out_of_order_per_cpu == {0: 1, 1: 0}


def test_lost_rows_are_counted_per_cpu() -> None:
    good = batch([0] * 3, events(0, [0, 1, 5]))
    lost = pa.RecordBatch.from_pydict(
        {
            "kind": pa.array(["lost", "sample", "lost", "lost"]).dictionary_encode(),
            "cpu": pa.array([0, 1, 1, 0], pa.uint16()),
            "lost": pa.array([3, 0, 4, 0], pa.uint64()),
            "data": pa.array([b"", events(1, [0])[0], b"", b""], pa.binary()),
        }
    )
    report = check_integrity([good, lost], SIZE)
    assert report.lost_per_cpu == {0: 3, 1: 4}
    assert report.holes_per_cpu == {0: 3, 1: 0} and report.received == 4


def test_sequence_numbers_past_2_to_the_32_go_on_counting() -> None:
    """The event's seq is 32 bits: 2**32 - 1 is followed by 0, not by a number already seen."""
    top = 2**32
    first = events(0, [top - 3, top - 2, top - 1])
    second = events(0, [0, 1, 3, 2])
    report = check_integrity([batch([0] * 3, first), batch([0] * 4, second)], SIZE)
    assert (report.corrupted, report.duplicates) == (0, 0)
    assert report.out_of_order_per_cpu == {0: 1}  # 3 before 2, nothing else
    assert report.received_per_cpu == {0: 7}
    assert report.holes_per_cpu == {0: top - 3}  # the numbers before the first one seen
    assert unwrap32(np.array([top - 1, 0, 5], np.uint32), top - 2).tolist() == [
        top - 1, top, top + 5,
    ]  # fmt: skip
    assert unwrap32(np.array([0, 1], np.uint32), -1).tolist() == [0, 1]
