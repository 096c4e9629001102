"""`ebcap sql`: DuckDB over the capture, as a table, CSV, JSON lines or JSON."""

from __future__ import annotations

import csv
import io
import json
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
