"""Text replay lines checked field by field against the generated capture."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pytest
from synthetic import (
    REALTIME_OFFSET_NS,
    Collect,
    Synthetic,
    build_table,
    lateness_by_loop,
    parse,
    seconds,
    us,
    write_capture,
    write_table,
)

from ebcap.errors import UsageError
from ebcap.format.reader import CaptureReader
from ebcap.replay.player import ReplayOptions, replay
from ebcap.replay.text import TextFormatter

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(path: Path, **options: object) -> list[str]:
    sink = Collect()
    with CaptureReader(path) as reader:
        replay(reader, sink, ReplayOptions(**options))  # type: ignore[arg-type]
    return sink.lines()


def rows_by_seq(table: pa.Table) -> dict[int, dict]:
    return {row["seq"]: row for row in table.to_pylist()}


def lateness(table: pa.Table) -> dict[int, int]:
    late = lateness_by_loop(
        table.column("ts_ns").to_pylist(), [k == "sample" for k in table.column("kind").to_pylist()]
    )
    return dict(zip(table.column("seq").to_pylist(), late, strict=True))


@pytest.fixture
def syscalls(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "sys.arrow"
    return path, write_capture(path, Synthetic(seed=11, syscalls=True, lost_every=12))


def test_arrival_lines_carry_time_cpu_seq_call_and_lateness(syscalls) -> None:
    path, table = syscalls
    lines = run(path)
    rows, late = rows_by_seq(table), lateness(table)
    assert len(lines) == table.num_rows
    origin = table.column("ts_ns")[0].as_py()
    marked = 0
    for line, seq in zip(lines, table.column("seq").to_pylist(), strict=True):
        got, row = parse(line), rows[seq]
        assert int(got["seq"]) == seq and int(got["cpu"]) == row["cpu"]
        assert got["time"] == seconds(row["ts_ns"] - origin)
        if row["kind"] == "lost":
            assert got["body"] == f"*** CPU {row['cpu']} lost {row['lost']} events ***"
            assert got["late"] is None
            continue
        args = ", ".join(hex(row[f"arg{i}"]) for i in range(6))
        assert (
            got["body"]
            == f"{row['syscall']}({args}) pid={row['pid']} tid={row['tid']} comm={row['comm']}"
        )
        assert got["late"] == (us(late[seq]) if late[seq] else None)
        marked += bool(late[seq])
    assert marked == sum(1 for v in late.values() if v) > 10


def test_sorted_lines_are_time_ordered_and_mark_moved_events(syscalls) -> None:
    path, table = syscalls
    lines = run(path, order="time", wall=True)
    rows, late = rows_by_seq(table), lateness(table)
    parsed = [parse(line) for line in lines]
    seqs = [int(p["seq"]) for p in parsed]
    assert sorted(seqs) == sorted(rows)
    keys = [(rows[s]["ts_ns"], rows[s]["cpu"], s) for s in seqs]
    assert keys == sorted(keys)
    origin = keys[0][0]
    for got, seq in zip(parsed, seqs, strict=True):
        ts = rows[seq]["ts_ns"]
        assert got["time"] == seconds(ts - origin)
        wall = dt.datetime.fromtimestamp((ts + REALTIME_OFFSET_NS) // 10**9, dt.UTC)
        assert got["wall"] == f"{wall:%Y-%m-%d %H:%M:%S}.{(ts + REALTIME_OFFSET_NS) % 10**9:09d}"
        assert got["late"] is None
        if late[seq]:
            assert (got["moved"], got["mlate"]) == (str(seq), us(late[seq]))
        else:
            assert got["moved"] is None


def test_payload_preview_without_source_columns(tmp_path: Path) -> None:
    path = tmp_path / "raw.arrow"
    table = write_capture(path, Synthetic(seed=12))
    rows = rows_by_seq(table)
    for line in run(path):
        got = parse(line)
        data = rows[int(got["seq"])]["data"]
        more = ".." if len(data) > 16 else ""
        assert got["body"] == f"{len(data)}B {data[:16].hex()}{more}"


def test_colour_only_when_asked(syscalls) -> None:
    path, _ = syscalls
    plain = run(path, limit=40)
    coloured = run(path, limit=40, colour=True)
    assert not any("\x1b" in line for line in plain)
    assert all("\x1b[" in line for line in coloured)
    assert [ANSI.sub("", line) for line in coloured] == plain


def test_wall_needs_the_realtime_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.arrow"
    table = write_capture(path, Synthetic(seed=13, events_per_cpu=5))
    with CaptureReader(path) as reader:
        meta = {k: v for k, v in reader.metadata.items() if k != "ebcap.realtime_offset_ns"}
        with pytest.raises(UsageError, match="realtime offset"):
            TextFormatter(table.schema, meta, wall=True)


def test_control_characters_in_strings_cannot_break_lines(tmp_path: Path) -> None:
    table = build_table(Synthetic(seed=14, events_per_cpu=2))
    notes = ["a\nb", "tab\there", "plain", "bell\x07"]
    table = table.append_column("note", pa.array(notes, pa.string()))
    write_table(tmp_path / "n.arrow", table)
    lines = run(tmp_path / "n.arrow")
    assert [parse(line)["body"] for line in lines] == [
        "note=a?b",
        "note=tab?here",
        "note=plain",
        "note=bell?",
    ]
