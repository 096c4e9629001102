"""Source columns of every type through both orders: JSON lines give back each value."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from synthetic import Collect, Synthetic, build_table, parse, write_table

from ebcap.format.reader import CaptureReader
from ebcap.replay.player import ReplayOptions, write_replay


def odd_capture(path: Path) -> pa.Table:
    table = build_table(Synthetic(seed=61, events_per_cpu=700, syscalls=True, lost_every=9))
    n = table.num_rows
    rng = np.random.default_rng(61)
    extra = {
        "note": pa.array([["a\nb", "tab\there", None, 'q"uote\\', "é"][i % 5] for i in range(n)]),
        "neg": pa.array(rng.integers(-(10**12), 10**12, n), pa.int64()),
        "flag": pa.array([bool(i % 3) if i % 7 else None for i in range(n)]),
        "ratio": pa.array([i / 7 if i % 5 else math.nan for i in range(n)]),
        "blob": pa.array([bytes([i % 256]) * (i % 5) if i % 4 else None for i in range(n)]),
        "lab": pa.array([["x", "y", None][i % 3] for i in range(n)]).dictionary_encode(),
        "big": pa.array([2**64 - 1 - i if i % 2 else i for i in range(n)], pa.uint64()),
    }
    for name, values in extra.items():
        table = table.append_column(name, values)
    write_table(path, table, batch_rows=97)
    return table


def jsonable(row: dict) -> dict:
    """A row as JSON lines carry it: bytes as hex (a null blob as null), NaN as null."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


@pytest.mark.parametrize("order", ["arrival", "time"])
def test_json_lines_give_back_every_value(tmp_path: Path, order: str) -> None:
    path = tmp_path / "odd.arrow"
    table = odd_capture(path)
    expected = [jsonable(row) for row in table.to_pylist()]
    if order == "time":
        expected.sort(key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(order=order, fmt="jsonl", max_window_rows=300))
    assert [json.loads(line) for line in sink.lines()] == expected


@pytest.mark.parametrize("order", ["arrival", "time"])
def test_string_and_bytes_types_of_other_writers_show_like_ebcaps(
    tmp_path: Path, order: str
) -> None:
    """large_string, string_view, large_binary, binary_view and fixed_size_binary, alone
    and inside a struct (files ebcap did not write): escaped and hex like string and
    binary, never raw control characters, in either order."""
    table = build_table(Synthetic(seed=62, events_per_cpu=30, lost_every=7))
    n = table.num_rows
    texts = ["x\ny", "ok", "esc\x1b[31m"] * n
    extra = {
        "ls": pa.array(texts[:n], pa.large_string()),
        "sv": pa.array(texts[:n], pa.string_view()),
        "bv": pa.array([b"\x1b[" for _ in range(n)], pa.binary_view()),
        "lb": pa.array([b"\x1b[" for _ in range(n)], pa.large_binary()),
        "fb": pa.array([b"\x1b[" for _ in range(n)], pa.binary(2)),
        "st": pa.array([{"v": t} for t in texts[:n]], pa.struct([("v", pa.string_view())])),
    }
    for name, values in extra.items():
        table = table.append_column(name, values)
    path = write_table(tmp_path / "other.arrow", table)
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(order=order))
    lines = sink.lines()
    assert len(lines) == n and not any("\x1b" in line for line in lines)
    fields = {'ls="x\\ny"', 'sv="x\\ny"', 'ls="esc\\u001b[31m"', "bv=1b5b", "lb=1b5b", "fb=1b5b"}
    assert all(any(f in line for line in lines) for f in fields)
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(order=order, fmt="jsonl"))
    rows = [json.loads(line) for line in sink.lines()]
    assert sorted(r["ls"] for r in rows) == sorted(texts[:n])
    assert [r["sv"] for r in rows] == [r["ls"] for r in rows]
    assert {r["bv"] for r in rows} == {r["lb"] for r in rows} == {r["fb"] for r in rows} == {"1b5b"}
    assert [r["st"]["v"] for r in rows] == [r["ls"] for r in rows]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text"])
@pytest.mark.parametrize("order", ["arrival", "time"])
def test_unions_and_run_end_encoded_columns_of_other_writers(
    tmp_path: Path, order: str, fmt: str
) -> None:
    """A union column and a run-end encoded one (Arrow casts and sorts neither as such)
    come out with their values in either order."""
    table = build_table(Synthetic(seed=63, events_per_cpu=80, lost_every=7))
    n = table.num_rows
    codes = pa.array([i % 2 for i in range(n)], pa.int8())
    texts = pa.array([f"s{i}" for i in range(n)])
    union = pa.UnionArray.from_sparse(codes, [pa.array(range(n)), texts])
    ends = [*range(10, n, 10), n]
    runs = pa.RunEndEncodedArray.from_arrays(ends, pa.array(range(len(ends))))
    table = table.append_column("u", union).append_column("r", runs)
    path = write_table(tmp_path / "u.arrow", table, batch_rows=41)
    want = {
        row["seq"]: (row["u"], row["r"]) for row in table.to_pylist()
    }  # the union's value is an int or a str by row
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(order=order, fmt=fmt, max_window_rows=50))
    lines = sink.lines()
    if fmt == "jsonl":
        got = {r["seq"]: (r["u"], r["r"]) for r in map(json.loads, lines)}
    elif fmt == "csv":
        rows = list(csv.DictReader(lines))
        got = {int(r["seq"]): (r["u"], int(r["r"])) for r in rows}
        want = {seq: (str(u), r) for seq, (u, r) in want.items()}
    else:  # a loss line shows no fields
        got = {}
        for line in lines:
            fields = dict(f.split("=", 1) for f in parse(line)["body"].split() if "=" in f)
            if fields:
                got[int(parse(line)["seq"])] = (fields["u"], fields["r"])
        quoted = {
            seq: json.dumps(u) if isinstance(u, str) else str(u) for seq, (u, _) in want.items()
        }
        want = {seq: (quoted[seq], str(r)) for seq, (_, r) in want.items() if seq in got}
        assert len(got) == n - table.column("kind").to_pylist().count("lost")
    assert got == want


def test_bytes_inside_lists_and_structs_are_hex_everywhere(tmp_path: Path) -> None:
    """As in a bytes column: JSON lines and CSV had Python's b'\\x01' form."""
    table = build_table(Synthetic(seed=63, events_per_cpu=4))
    n = table.num_rows
    kind = pa.struct([("b", pa.binary()), ("s", pa.string())])
    table = table.append_column("st", pa.array([{"b": b"\x01\xff", "s": "x\n"}] * n, kind))
    table = table.append_column("lb", pa.array([[b"\x00", b"ab"]] * n, pa.list_(pa.binary())))
    path = write_table(tmp_path / "nested.arrow", table)
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(fmt="jsonl"))
    rows = [json.loads(line) for line in sink.lines()]
    assert all(r["st"] == {"b": "01ff", "s": "x\n"} and r["lb"] == ["00", "6162"] for r in rows)
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions())
    assert all('st={"b":01ff,"s":"x\\n"} lb=[00,6162]' in line for line in sink.lines())
