"""Random events go through the writer and come back exactly, with ebcap and without it.

The expectation is the plain Python rows the test generated; every reader
(ebcap, pyarrow, pandas, polars, DuckDB) must give them back unchanged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ebcap
from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs

U64 = 2**64 - 1
EXTRA_FIELDS = [pa.field("pid", pa.uint32()), pa.field("comm", pa.string())]
META = {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test:random"}


@st.composite
def captures(draw: st.DrawFn) -> list[dict[str, object]]:
    """Rows in arrival order: increasing seq, anything else random."""
    n = draw(st.integers(0, 60))
    gaps = draw(st.lists(st.integers(1, 2**40), min_size=n, max_size=n))
    rows = []
    seq = draw(st.integers(0, 2**20))
    for gap in gaps:
        seq += gap
        kind = draw(st.sampled_from(fs.KINDS))
        rows.append(
            {
                "seq": seq,
                "cpu": draw(st.integers(0, 255)),
                "ts_ns": draw(st.integers(0, U64)),
                "kind": kind,
                "lost": draw(st.integers(0, U64)) if kind == fs.KIND_LOST else 0,
                "round": draw(st.integers(0, 2**32 - 1)),
                "data": draw(st.binary(min_size=0, max_size=512)),
                "pid": draw(st.none() | st.integers(0, 2**32 - 1)),
                "comm": draw(st.none() | st.text(max_size=16)),
            }
        )
    return rows


def _columns(rows: list[dict[str, object]]) -> dict[str, list[object]]:
    names = [f.name for f in fs.CORE_FIELDS] + [f.name for f in EXTRA_FIELDS]
    return {name: [row[name] for row in rows] for name in names}


def _write(path: Path, rows: list[dict[str, object]], chunks: list[int], flush_rows: int) -> None:
    schema = make_schema(EXTRA_FIELDS, META)
    with CaptureWriter(path, schema, flush_rows=flush_rows) as writer:
        start = 0
        for size in [*chunks, len(rows)]:
            part = rows[start : start + size]
            start += len(part)
            if part or start == 0:
                writer.write(_columns(part))
        writer.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    rows=captures(),
    chunks=st.lists(st.integers(1, 20), max_size=5),
    flush_rows=st.integers(1, 30),
)
def test_every_reader_gets_the_rows_back(
    rows: list[dict[str, object]], chunks: list[int], flush_rows: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cap.arrow"
        _write(path, rows, chunks, flush_rows)
        expected = _columns(rows)

        with ebcap.open(path) as reader:
            assert reader.num_rows == len(rows)
            assert reader.source_columns == ["pid", "comm"]
            assert reader.to_table().to_pydict() == expected
            batches = list(reader.iter_batches())
            assert all(b.num_rows <= flush_rows for b in batches)
            assert sum(b.num_rows for b in batches) == len(rows)

        with pa.ipc.open_file(path) as plain:
            assert plain.read_all().to_pydict() == expected

        frame = pd.read_feather(path)
        assert len(frame) == len(rows)
        for name in ("seq", "cpu", "ts_ns", "lost", "round", "data"):
            assert frame[name].tolist() == expected[name], name
        assert [str(k) for k in frame["kind"]] == expected["kind"]
        assert [None if pd.isna(c) else c for c in frame["comm"]] == expected["comm"]

        polars_frame = pl.read_ipc(path)
        for name in ("seq", "cpu", "ts_ns", "kind", "lost", "round", "data", "pid", "comm"):
            assert polars_frame[name].to_list() == expected[name], name

        _check_duckdb(path, rows)


def _check_duckdb(path: Path, rows: list[dict[str, object]]) -> None:
    dataset = ds.dataset(path, format="ipc")
    con = duckdb.connect()
    try:
        con.register("cap", dataset)
        got = con.execute(
            "SELECT seq, cpu, ts_ns, kind, lost, data FROM cap ORDER BY seq"
        ).fetchall()
        want = [(r["seq"], r["cpu"], r["ts_ns"], r["kind"], r["lost"], r["data"]) for r in rows]
        assert got == want
        samples = con.execute("SELECT count(*) FROM cap WHERE kind = 'sample'").fetchone()
        assert samples == (sum(r["kind"] == fs.KIND_SAMPLE for r in rows),)
    finally:
        con.close()
