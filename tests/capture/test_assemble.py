"""Rows from drained batches: numbering, ts/cpu from the payload, decoded columns, gaps."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from ebcap.capture.assemble import RowAssembler
from ebcap.capture.batch import EventBatch
from ebcap.capture.layout import parse_layout
from ebcap.capture.sources import PinnedSource
from ebcap.format import schema as fs
from ebcap.format.counts import CpuCounts
from ebcap.format.schema import KIND_LOST_CODE, KIND_SAMPLE_CODE, make_schema

LAYOUT = "ts:u64,cpu:u32,seq:u32,pad:8x"
EVENT = struct.Struct("<QII8x")


def assembler() -> RowAssembler:
    source = PinnedSource("/sys/fs/bpf/none", parse_layout(LAYOUT))
    schema = make_schema(source.arrow_fields(), {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "t"})
    return RowAssembler(source, schema, CpuCounts())


def event_batch(rows: list[tuple[str, bytes | int]]) -> EventBatch:
    """("sample", payload) or ("lost", count) rows; the reader's cpu/ts are 7 and 1000+i."""
    payloads = [p if kind == "sample" else b"" for kind, p in rows]
    lengths = [len(p) for p in payloads]  # type: ignore[arg-type]
    return EventBatch(
        cpu=np.full(len(rows), 7, dtype=np.uint16),
        ts_ns=np.arange(1000, 1000 + len(rows), dtype=np.uint64),
        kind=np.array(
            [KIND_SAMPLE_CODE if k == "sample" else KIND_LOST_CODE for k, _ in rows], np.int8
        ),
        lost=np.array([p if k == "lost" else 0 for k, p in rows], dtype=np.uint64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        values=np.frombuffer(b"".join(payloads), dtype=np.uint8),  # type: ignore[arg-type]
    )


def event(i: int, extra: bytes = b"") -> bytes:
    return EVENT.pack(5_000_000 + i * 17, i % 2, i) + extra


@pytest.mark.parametrize(
    "pattern",
    [
        "all samples of one size",
        "lost rows between equal samples",
        "payloads of different lengths",
        "short payloads among them",
    ],
)
def test_rows_carry_what_the_payloads_say(pattern: str) -> None:
    rows: list[tuple[str, bytes | int]] = []
    expected: list[tuple[int, int, int | None]] = []  # ts, cpu, decoded seq (None: not decoded)
    for i in range(300):
        if pattern == "lost rows between equal samples" and i % 7 == 3:
            rows.append(("lost", i))
            expected.append((1000 + len(rows) - 1, 7, None))
            continue
        if pattern == "short payloads among them" and i % 11 == 5:
            rows.append(("sample", b"\x01" * 10))
            expected.append((1000 + len(rows) - 1, 7, None))
            continue
        extra = b"\xee" * (i % 5 * 8) if pattern == "payloads of different lengths" else b""
        rows.append(("sample", event(i, extra)))
        expected.append((5_000_000 + i * 17, i % 2, i))
    rows_out = assembler()
    first = rows_out.assemble(event_batch(rows[:120]), round_no=1)
    second = rows_out.assemble(event_batch(rows[120:]), round_no=2)
    assert first is not None and second is not None
    table = pa.Table.from_batches([first, second])
    assert table["seq"].to_pylist() == list(range(len(rows)))
    columns = (table[name].to_pylist() for name in ("ts_ns", "cpu", "ev_seq"))
    got = list(zip(*columns, strict=True))
    # ts of reader-stamped rows restarts at 1000 in the second batch
    want = [
        (ts if dec is not None else 1000 + (i if i < 120 else i - 120), cpu, dec)
        for i, (ts, cpu, dec) in enumerate(expected)
    ]
    assert got == want
    assert table["data"].to_pylist() == [p if k == "sample" else b"" for k, p in rows]
    assert table["round"].to_pylist() == [1] * 120 + [2] * (len(rows) - 120)
    short = pattern == "short payloads among them"
    assert rows_out.undecodable == (sum(1 for i in range(300) if i % 11 == 5) if short else 0)


def test_the_last_drain_time_is_that_of_events_not_of_loss_rows_alone() -> None:
    """The final drop counts come after the last drain: consumed/s must not count them."""
    rows = assembler()
    assert rows.assemble(event_batch([("sample", event(0))]), 0) is not None
    after_events = rows.last_drain_ns
    assert after_events > 0
    assert rows.assemble(event_batch([("lost", 3)]), 1) is not None
    assert rows.drop_rows({0: 5}, 2000, 2) is not None
    assert rows.last_drain_ns == after_events


@pytest.mark.parametrize(("spec", "code"), [("u32", "I"), ("i32", "i"), ("u64", "Q")])
def test_a_cpu_field_beyond_uint16_is_65535_not_a_real_cpu(spec: str, code: str) -> None:
    """65536 would wrap to CPU 0 and -1 to 65535: out-of-range values all become 65535."""
    layout = parse_layout(f"ts:u64,cpu:{spec},seq:u32")
    source = PinnedSource("/sys/fs/bpf/none", layout)
    schema = make_schema(source.arrow_fields(), {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "t"})
    values = [0, 1, 65535, 65536, 70001] + ([-1] if code == "i" else [2**32 - 1])
    packed = struct.Struct(f"<Q{code}I")
    rows = [
        ("sample", packed.pack(1000 + i, v, i).ljust(layout.size, b"\0"))
        for i, v in enumerate(values)
    ]
    batch = RowAssembler(source, schema, CpuCounts()).assemble(event_batch(rows), round_no=0)
    assert batch is not None
    assert batch.column("cpu").to_pylist() == [0, 1, 65535, 65535, 65535, 65535]
