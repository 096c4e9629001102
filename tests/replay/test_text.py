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
    metadata,
    moved_ahead,
    parse,
    seconds,
    us,
    write_capture,
    write_table,
)

from ebcap.errors import UsageError
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.display import plain_text
from ebcap.replay.player import ReplayOptions, write_replay
from ebcap.replay.text import TextFormatter

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(path: Path, **options: object) -> list[str]:
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(**options))  # type: ignore[arg-type]
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
    marked = lost_marked = 0
    for line, seq in zip(lines, table.column("seq").to_pylist(), strict=True):
        got, row = parse(line), rows[seq]
        assert int(got["seq"]) == seq and int(got["cpu"]) == row["cpu"]
        assert got["time"] == seconds(row["ts_ns"] - origin)
        assert got["late"] == (us(late[seq]) if late[seq] else None)
        marked += bool(late[seq])
        if row["kind"] == "lost":
            assert got["body"] == f"*** CPU {row['cpu']} lost {row['lost']} events ***"
            lost_marked += bool(late[seq])
            continue
        args = ", ".join(hex(row[f"arg{i}"]) for i in range(6))
        assert (
            got["body"]
            == f'{row["syscall"]}({args}) pid={row["pid"]} tid={row["tid"]} comm="{row["comm"]}"'
        )
    assert marked == sum(1 for v in late.values() if v) > 10
    assert lost_marked > 0  # a loss record delivered after later samples is marked too


def test_sorted_lines_are_time_ordered_and_mark_moved_events(syscalls) -> None:
    path, table = syscalls
    lines = run(path, order="time", wall=True)
    rows, late = rows_by_seq(table), lateness(table)
    keys = [(r["ts_ns"], r["cpu"], r["seq"]) for r in table.to_pylist()]
    moved = dict(zip(table.column("seq").to_pylist(), moved_ahead(keys), strict=True))
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
        if moved[seq]:
            assert got["moved"] == str(moved[seq])
            assert got["mlate"] == (us(late[seq]) if late[seq] else None)
        else:
            assert got["moved"] is None and not late[seq]  # late rows always move
    assert sum(1 for m in moved.values() if m) > 10


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


def test_timestamps_past_2_63_keep_their_distance_and_have_no_wall_time(tmp_path: Path) -> None:
    """Garbage timestamps (a layout's ts field pointing at the wrong bytes) near 2**64:
    seconds from the first row computed without wrapping, and no made-up date."""
    table = build_table(Synthetic(seed=14, events_per_cpu=3))
    ts = table.column("ts_ns").to_pylist()
    ts[-2:] = [2**64 - 1, 2**63 + 5]
    table = table.set_column(2, table.schema.field("ts_ns"), pa.array(ts, pa.uint64()))
    path = write_table(tmp_path / "big.arrow", table)
    lines = run(path, wall=True)
    for line, stamp in zip(lines, ts, strict=True):
        offset = stamp - ts[0]
        sign = "-" if offset < 0 else ""
        assert line.split()[0] == f"{sign}{abs(offset) // 10**9}.{abs(offset) % 10**9:09d}"
        wall = line.split()[1]
        assert (wall == "????-??-??") == (stamp >= 2**63 - REALTIME_OFFSET_NS)


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
        'note="a\\nb"',
        'note="tab\\there"',
        'note="plain"',
        'note="bell\\u0007"',
    ]


def test_c1_controls_del_and_line_separators_are_escaped_too(tmp_path: Path) -> None:
    """Who runs a traced process picks its comm and paths: U+009B acts as ESC [ on xterm,
    and U+2028 ends a line for some readers."""
    table = build_table(Synthetic(seed=15, events_per_cpu=3))
    notes = ["csi\u009b31m", "del\x7f", "line\u2028sep", "nel\u0085x", "ok \u00e9", "p\u2029"]
    table = table.append_column("note", pa.array(notes, pa.string()))
    write_table(tmp_path / "n.arrow", table)
    lines = run(tmp_path / "n.arrow")
    assert [parse(line)["body"] for line in lines] == [
        'note="csi\\u009b31m"',
        'note="del\\u007f"',
        'note="line\\u2028sep"',
        'note="nel\\u0085x"',
        'note="ok \u00e9"',
        'note="p\\u2029"',
    ]
    out = "\n".join(lines)
    assert not any(c in out for c in "\x7f\u009b\u0085\u2028\u2029")
    assert plain_text(pa.array(notes)).to_pylist() == [
        "csi?31m", "del?", "line?sep", "nel?x", "ok \u00e9", "p?",
    ]  # fmt: skip


def handmade(path: Path, rows: list[tuple[int, int, str, int]]) -> pa.Table:
    """A capture of the given (cpu, ts_ns, kind, lost) rows, seq 0.. in that order."""
    n = len(rows)
    kind = pa.DictionaryArray.from_arrays(
        pa.array([fs.KINDS.index(r[2]) for r in rows], pa.int8()),
        pa.array(list(fs.KINDS), pa.string()),
    )
    table = pa.Table.from_arrays(
        [
            pa.array(range(n), pa.uint64()),
            pa.array([r[0] for r in rows], pa.uint16()),
            pa.array([r[1] for r in rows], pa.uint64()),
            kind,
            pa.array([r[3] for r in rows], pa.uint64()),
            pa.array([0] * n, pa.uint32()),
            pa.array([b"\x01" if r[2] == "sample" else b"" for r in rows], pa.binary()),
        ],
        schema=fs.make_schema([], metadata=metadata(Synthetic())),
    )
    write_table(path, table)
    return table


def test_ties_are_broken_by_cpu_then_seq_and_every_moved_row_is_marked(tmp_path: Path) -> None:
    """Equal timestamps sort by CPU, then by arrival; the row a tie moves is marked, and so
    is a loss record stamped before the samples delivered ahead of it."""
    handmade(
        tmp_path / "tie.arrow",
        [
            (1, 1000, "sample", 0),  # #0
            (0, 1000, "sample", 0),  # #1: same time, lower CPU: goes before #0
            (0, 900, "lost", 5),  # #2: a loss stamped before both: first, 100 ns late
            (1, 1000, "sample", 0),  # #3: same time and CPU as #0, delivered later: after it
            (0, 950, "sample", 0),  # #4: late: after #2, before the others
        ],
    )
    lines = [parse(line) for line in run(tmp_path / "tie.arrow", order="time")]
    assert [int(got["seq"]) for got in lines] == [2, 4, 1, 0, 3]
    assert [(got["moved"], got["mlate"]) for got in lines] == [
        ("2", "0.1"),  # ahead of #0 and #1, delivered before it
        ("3", "0.1"),  # ahead of #0, #1 and #3 (#2 is before it in time too)
        ("1", None),  # the tie: moved ahead of #0, not late
        (None, None),
        (None, None),
    ]
    assert lines[0]["body"] == "*** CPU 0 lost 5 events ***"
    assert run(tmp_path / "tie.arrow", order="time")[2].endswith("  [moved ahead of 1 event]")
    arrival = [parse(line) for line in run(tmp_path / "tie.arrow")]
    assert [got["late"] for got in arrival] == [None, None, "0.1", None, "0.1"]
