"""`ebcap sql`: DuckDB over the capture, as a table, CSV, JSON lines or JSON."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from synthetic import Synthetic, write_capture

from ebcap.cli import run

GROUP = "SELECT cpu, kind, count(*) AS n, max(ts_ns) AS last FROM events GROUP BY ALL ORDER BY 1, 2"


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "c.arrow"
    return path, write_capture(path, Synthetic(seed=81, ncpus=3, syscalls=True, lost_every=7))


def expected_groups(table: pa.Table) -> list[tuple[int, str, int, int]]:
    counts: Counter = Counter()
    last: dict = {}
    for r in table.to_pylist():
        key = (r["cpu"], r["kind"])
        counts[key] += 1
        last[key] = max(last.get(key, 0), r["ts_ns"])
    return [(c, k, counts[(c, k)], last[(c, k)]) for c, k in sorted(counts)]


def test_aligned_table(capture, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    assert run(["sql", str(path), GROUP]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["cpu", "kind", "n", "last"]
    assert set(lines[1]) <= {"-", " "}
    got = [tuple(line.split()) for line in lines[2:]]
    assert got == [(str(c), k, str(n), str(t)) for c, k, n, t in expected_groups(table)]
    widths = {len(line) for line in lines[1:]}
    assert len(widths) == 1  # every row lines up with the rule


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_machine_formats(capture, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    path, table = capture
    assert run(["sql", str(path), GROUP, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "csv":
        rows = [
            (int(r["cpu"]), r["kind"], int(r["n"]), int(r["last"]))
            for r in csv.DictReader(io.StringIO(out))
        ]
    else:
        objs = json.loads(out) if fmt == "json" else [json.loads(x) for x in out.splitlines()]
        rows = [(o["cpu"], o["kind"], o["n"], o["last"]) for o in objs]
    assert rows == expected_groups(table)


def test_bytes_come_out_as_hex_and_empty_results(
    capture, capsys: pytest.CaptureFixture[str]
) -> None:
    path, table = capture
    assert (
        run(["sql", str(path), "SELECT seq, data FROM events ORDER BY seq LIMIT 3", "-f", "jsonl"])
        == 0
    )
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert got == [{"seq": r["seq"], "data": r["data"].hex()} for r in table.to_pylist()[:3]]
    assert run(["sql", str(path), "SELECT * FROM events WHERE seq > 1e12", "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELEC 1", "Parser Error"),
        ("SELECT nope FROM events", "Binder Error"),
        ("SELECT * FROM elsewhere", "elsewhere"),
        ("   ", "empty"),
    ],
)
def test_bad_sql_is_one_line_exit_2(
    capture, capsys: pytest.CaptureFixture[str], query: str, message: str
) -> None:
    path, _ = capture
    assert run(["sql", str(path), query]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and message in err and err.startswith("ebcap: error: SQL")


def test_output_file_rules(capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    out = tmp_path / "r.csv"
    assert (
        run(["sql", str(path), "SELECT count(*) AS n FROM events", "-f", "csv", "-o", str(out)])
        == 0
    )
    assert out.read_text().splitlines() == ['"n"', str(table.num_rows)]
    assert run(["sql", str(path), "SELECT 1", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_columns_named_alike_get_numbered(
    capture, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """``SELECT *`` over a self-join names every column twice; no key may hide another."""
    path, table = capture
    query = (
        "SELECT e1.seq, e1.cpu, e2.cpu, e2.cpu + 1 AS cpu_1, [e1.cpu, e2.cpu] AS pair "
        "FROM events e1 JOIN events e2 ON e2.seq = e1.seq + 1 ORDER BY e1.seq LIMIT 4"
    )  # pair is a list: CSV holds it as JSON text
    assert run(["sql", str(path), query, "-f", fmt]) == 0
    out = capsys.readouterr().out
    rows = table.to_pylist()
    want = [(r["cpu"], n["cpu"], n["cpu"] + 1) for r, n in itertools.pairwise(rows[:5])]
    names = ["seq", "cpu", "cpu_2", "cpu_1", "pair"]
    if fmt == "table":
        assert out.splitlines()[0].split() == names
        return
    if fmt == "csv":
        got = list(csv.DictReader(io.StringIO(out)))
        assert list(got[0]) == names
        parsed = [(int(g["cpu"]), int(g["cpu_2"]), int(g["cpu_1"]), g["pair"]) for g in got]
        assert parsed == [(a, b, c, json.dumps([a, b])) for a, b, c in want]
        return
    objs = json.loads(out) if fmt == "json" else [json.loads(x) for x in out.splitlines()]
    assert [list(o) for o in objs] == [names] * 4
    assert [(o["cpu"], o["cpu_2"], o["cpu_1"], o["pair"]) for o in objs] == [
        (a, b, c, [a, b]) for a, b, c in want
    ]


def test_an_error_while_rows_stream_is_one_line_and_leaves_no_file(
    capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DuckDB raises some errors only on the row that meets them, long after the first."""
    path, _ = capture
    out = tmp_path / "late.csv"
    query = "SELECT CASE WHEN i > 200000 THEN error('late boom') ELSE i END FROM range(300000) t(i)"
    assert run(["sql", str(path), query, "-f", "csv", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "ebcap: error: SQL: Invalid Input Error: late boom\n"
    assert list(tmp_path.iterdir()) == [path]


def test_without_duckdb_sql_says_what_to_install(
    capture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "duckdb" else real(name, *a)
    )
    path, _ = capture
    assert run(["sql", str(path), "SELECT 1"]) == 1
    assert capsys.readouterr().err == (
        "ebcap: error: SQL needs duckdb, which is not installed: pip install 'ebcap[analysis]'\n"
    )


@pytest.mark.parametrize(
    ("name", "first_line"),
    [("r.csv", '"n"'), ("r.jsonl", '{"n":'), ("r.json", "["), ("r.txt", "n"), ("r.csv.zst", None)],
)
def test_the_output_name_chooses_the_format(
    capture, tmp_path: Path, name: str, first_line: str | None
) -> None:
    path, table = capture
    out = tmp_path / name
    assert run(["sql", str(path), "SELECT count(*) AS n FROM events", "-o", str(out)]) == 0
    if first_line is None:  # compressed CSV
        import zstandard

        text = zstandard.ZstdDecompressor().stream_reader(out.read_bytes()).read().decode()
        assert text.splitlines() == ['"n"', str(table.num_rows)]
        return
    assert out.read_text().splitlines()[0].strip().startswith(first_line)
    assert str(table.num_rows) in out.read_text()


SPAN = (
    "SELECT cpu, make_timestamp((max(ts_ns) // 1000)::BIGINT) "
    "- make_timestamp((min(ts_ns) // 1000)::BIGINT) AS span, "
    "INTERVAL '14 months -3 days 4 hours 0.5 seconds' AS odd, union_value(k := cpu) AS u "
    "FROM events GROUP BY cpu ORDER BY cpu"
)
"""A time difference is an interval (month_day_nano), which CSV and Arrow's casts lack."""


def span_text(table: pa.Table, cpu: int) -> str:
    stamps = [r["ts_ns"] for r in table.to_pylist() if r["cpu"] == cpu]
    micros = max(stamps) // 1000 - min(stamps) // 1000
    seconds, fraction = divmod(micros, 10**6)
    text = f"00:00:{seconds:02d}"
    return text + (f".{fraction:06d}".rstrip("0") if fraction else "")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "table"])
def test_intervals_and_unions_are_text_in_every_format(
    capture, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    path, table = capture
    assert run(["sql", str(path), SPAN, "-f", fmt]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    odd = "1 year 2 months -3 days 04:00:00.5"  # as DuckDB itself spells it
    want = [(str(cpu), span_text(table, cpu), odd, str(cpu)) for cpu in range(3)]
    if fmt == "csv":
        got = [(r["cpu"], r["span"], r["odd"], r["u"]) for r in csv.DictReader(io.StringIO(out))]
    elif fmt == "jsonl":
        objs = [json.loads(line) for line in out.splitlines()]
        got = [(str(o["cpu"]), o["span"], o["odd"], str(o["u"])) for o in objs]
    else:  # columns two spaces apart; the interval's own words one space apart
        got = [tuple(re.split(" {2,}", line.strip())) for line in out.splitlines()[2:]]
    assert got == want


def test_the_format_option_takes_any_case(capture, capsys: pytest.CaptureFixture[str]) -> None:
    path, table = capture
    assert run(["sql", str(path), "SELECT count(*) AS n FROM events", "-f", "CSV"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', str(table.num_rows)]


def test_a_column_duckdb_cannot_read_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DuckDB reads no dense union (another writer's column): one line, exit 2."""
    from synthetic import build_table, write_table

    table = build_table(Synthetic(seed=82, events_per_cpu=3))
    n = table.num_rows
    union = pa.UnionArray.from_dense(
        pa.array([0] * n, pa.int8()), pa.array(range(n), pa.int32()), [pa.array(range(n))]
    )
    path = write_table(tmp_path / "u.arrow", table.append_column("u", union))
    spills = set(Path(tempfile.gettempdir()).glob("ebcap-sql-*"))
    assert run(["sql", str(path), "SELECT count(*) FROM events"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("ebcap: error: SQL: ")
    assert "internal error" not in err and "Union" in err
    assert set(Path(tempfile.gettempdir()).glob("ebcap-sql-*")) == spills  # none left
