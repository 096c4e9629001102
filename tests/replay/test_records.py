"""JSON lines and CSV: every column comes back with its value (bytes as hex)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pytest
from synthetic import Collect, Synthetic, build_table, write_capture, write_table

from ebcap.format.reader import CaptureReader
from ebcap.replay.player import ReplayOptions, write_replay
from ebcap.replay.records import CsvEncoder, JsonlEncoder


def expected_rows(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    for row in rows:
        row["data"] = row["data"].hex()
    return rows


def replayed(path: Path, fmt: str, **options: object) -> str:
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(fmt=fmt, **options))  # type: ignore[arg-type]
    return sink.data.decode()


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "c.arrow"
    return path, write_capture(path, Synthetic(seed=21, syscalls=True, lost_every=9))


def test_jsonl_round_trips_every_column(capture) -> None:
    path, table = capture
    lines = replayed(path, "jsonl").splitlines()
    got = [json.loads(line) for line in lines]
    assert got == expected_rows(table)
    assert list(got[0]) == table.schema.names


def test_jsonl_in_time_order_is_a_permutation_sorted_by_key(capture) -> None:
    path, table = capture
    got = [json.loads(line) for line in replayed(path, "jsonl", order="time").splitlines()]
    keys = [(r["ts_ns"], r["cpu"], r["seq"]) for r in got]
    assert keys == sorted(keys)
    assert sorted(got, key=lambda r: r["seq"]) == expected_rows(table)


def test_csv_round_trips_every_column(capture) -> None:
    path, table = capture
    reader = csv.DictReader(io.StringIO(replayed(path, "csv")))
    assert reader.fieldnames == table.schema.names
    got = list(reader)
    expected = expected_rows(table)
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert row == {k: "" if v is None else str(v) for k, v in want.items()}


def test_json_escapes_strings_and_floats() -> None:
    batch = pa.record_batch(
        {
            "s": ['quote"', "back\\slash", "new\nline", None, "ünï"],
            "f": [1.5, float("nan"), float("inf"), None, -0.25],
            "b": [True, False, None, True, False],
        }
    )
    text = bytes(JsonlEncoder().encode(batch)).decode()
    got = [json.loads(line) for line in text.splitlines()]
    assert got == [
        {"s": 'quote"', "f": 1.5, "b": True},
        {"s": "back\\slash", "f": None, "b": False},
        {"s": "new\nline", "f": None, "b": None},
        {"s": None, "f": None, "b": True},
        {"s": "ünï", "f": -0.25, "b": False},
    ]


def test_csv_header_for_an_empty_capture(tmp_path: Path) -> None:
    table = build_table(Synthetic(events_per_cpu=0))
    write_table(tmp_path / "e.arrow", table)
    assert replayed(tmp_path / "e.arrow", "csv").splitlines() == [
        ",".join(f'"{name}"' for name in table.schema.names)
    ]
    empty = pa.RecordBatch.from_pylist([], schema=table.schema)
    assert CsvEncoder(table.schema).encode(empty) == b""


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", "Asia/Tokyo", "+09:00", "America/New_York"])
def test_json_writes_zoned_timestamps_in_utc_with_z(zone: str) -> None:
    """DuckDB results say "Etc/UTC"; other writers any zone: the instant is the same."""
    ns = [1_700_000_000_123_456_789, None]
    batch = pa.record_batch(
        {
            "zoned": pa.array(ns, pa.timestamp("ns", tz=zone)),
            "micro": pa.array([v // 1000 if v else None for v in ns], pa.timestamp("us", tz=zone)),
            "naive": pa.array(ns, pa.timestamp("ns")),
        }
    )
    text = bytes(JsonlEncoder().encode(batch)).decode()
    assert [json.loads(line) for line in text.splitlines()] == [
        {
            "zoned": "2023-11-14T22:13:20.123456789Z",
            "micro": "2023-11-14T22:13:20.123456Z",
            "naive": "2023-11-14T22:13:20.123456789",
        },
        {"zoned": None, "micro": None, "naive": None},
    ]


def odd_types() -> pa.RecordBatch:
    """Types Arrow's CSV writer and its casts to text do not take (a query's or another
    writer's), two rows each, the second null where the type has nulls."""
    interval = pa.month_day_nano_interval()
    return pa.record_batch(
        {
            "span": pa.array([pa.MonthDayNano([0, 0, 1_500_000_000]), None], interval),
            "coded": pa.array([pa.MonthDayNano([-1, 2, 0])] * 2, interval).dictionary_encode(),
            "sparse": pa.UnionArray.from_sparse(
                pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]
            ),
            "dense": pa.UnionArray.from_dense(
                pa.array([1, 0], pa.int8()),
                pa.array([0, 0], pa.int32()),
                [pa.array([7]), pa.array(["x"])],
            ),
            "runs": pa.RunEndEncodedArray.from_arrays([2], pa.array([5])),
            "views": pa.ListViewArray.from_arrays([0, 1], [2, 1], pa.array([1, 2])),
        }
    )


ODD_VALUES = [
    {"span": "00:00:01.5", "coded": "-1 month 2 days", "sparse": 1, "dense": "x", "runs": 5,
     "views": [1, 2]},
    {"span": None, "coded": "-1 month 2 days", "sparse": "b", "dense": 7, "runs": 5,
     "views": [2]},
]  # fmt: skip


def test_csv_writes_intervals_unions_and_other_types_as_text() -> None:
    batch = odd_types()
    encoder = CsvEncoder(batch.schema)
    text = (encoder.header() + encoder.encode(batch)).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    want = [
        {
            k: "" if v is None else json.dumps(v) if isinstance(v, list) else str(v)
            for k, v in r.items()
        }
        for r in ODD_VALUES
    ]
    assert rows == want


def test_json_writes_intervals_as_text() -> None:
    text = bytes(JsonlEncoder().encode(odd_types())).decode()
    assert [json.loads(line) for line in text.splitlines()] == ODD_VALUES


class Writes(Collect):
    """A sink that also keeps the size of each write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sizes.append(len(data))
        super().write(data)


CHUNK = 8192
"""Bytes of payload per piece in the test below; the real default is 64 MiB."""


@pytest.mark.parametrize(
    ("fmt", "order"),
    # sorted text lines hold no payload: their short preview is made before the sort
    [
        ("jsonl", "arrival"),
        ("jsonl", "time"),
        ("csv", "arrival"),
        ("csv", "time"),
        ("text", "arrival"),
    ],
)
def test_large_payloads_are_written_a_bounded_piece_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, order: str
) -> None:
    """65,536 payloads of 16 KiB in one batch were 2 GiB of hex in one string (past what
    Arrow holds) and ~9.5 GB of memory; pieces of bounded size give the same lines."""
    table = build_table(Synthetic(seed=22, events_per_cpu=150, lost_every=9))
    n = table.num_rows
    payloads = [bytes([i % 251]) * (1000 + i % 700) if i % 11 else b"" for i in range(n)]
    table = table.set_column(6, table.schema.field("data"), pa.array(payloads, pa.binary()))
    write_table(tmp_path / "big.arrow", table, batch_rows=n)  # one batch
    whole = replayed(tmp_path / "big.arrow", fmt, order=order)
    monkeypatch.setattr("ebcap.replay.lines.TEXT_CHUNK_BYTES", CHUNK, raising=False)
    sink = Writes()
    with CaptureReader(tmp_path / "big.arrow") as reader:
        write_replay(reader, sink, ReplayOptions(fmt=fmt, order=order))
    assert sink.data.decode() == whole
    assert len(sink.sizes) > n * 1350 // CHUNK // 2  # in many pieces
    assert max(sink.sizes) <= 2 * CHUNK + 2 * 1700 + 4096  # hex of one piece and a row
    if fmt == "jsonl":
        rows = [json.loads(line) for line in whole.splitlines()]
        assert sorted(r["data"] for r in rows) == sorted(p.hex() for p in payloads)
