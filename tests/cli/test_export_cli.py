"""`ebcap export`: Parquet, CSV and JSON lines with a correct wall-clock time column."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from synthetic import REALTIME_OFFSET_NS, Synthetic, build_table, write_capture, write_table
from synthetic_packets import packet_capture, packets_with_nulls

from ebcap.cli import run
from ebcap.format.pcapng import write_pcapng
from ebcap.format.reader import CaptureReader


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "c.arrow"
    return path, write_capture(path, Synthetic(seed=91, ncpus=2, syscalls=True, lost_every=8))


def iso(ts_ns: int, sep: str = "T") -> str:
    import datetime as dt

    wall = ts_ns + REALTIME_OFFSET_NS
    day = dt.datetime.fromtimestamp(wall // 10**9, dt.UTC)
    return f"{day:%Y-%m-%d}{sep}{day:%H:%M:%S}.{wall % 10**9:09d}Z"


def test_parquet_keeps_columns_and_adds_time(capture, tmp_path: Path) -> None:
    path, table = capture
    out = tmp_path / "c.parquet"
    assert run(["export", str(path), "-o", str(out)]) == 0
    got = pq.read_table(out)
    assert got.schema.names[:4] == ["seq", "cpu", "ts_ns", "time"]
    assert got.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert got.drop_columns(["time"]).to_pylist() == table.to_pylist()
    times = got.column("time").cast(pa.int64()).to_pylist()
    assert times == [t + REALTIME_OFFSET_NS for t in table.column("ts_ns").to_pylist()]
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    assert got.schema.metadata[b"ebcap.source"] == b"syscalls"
    assert os.stat(out).st_mode & 0o777 == 0o600


def test_sorted_jsonl_zst(capture, tmp_path: Path) -> None:
    path, table = capture
    out = tmp_path / "c.jsonl.zst"
    assert run(["export", str(path), "-o", str(out), "--sorted"]) == 0
    text = zstandard.ZstdDecompressor().stream_reader(out.read_bytes()).read().decode()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["seq"] for r in rows] == [
        r["seq"] for r in sorted(table.to_pylist(), key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))
    ]
    assert all(r["time"] == iso(r["ts_ns"]) for r in rows)


def test_csv_with_explicit_format(capture, tmp_path: Path) -> None:
    path, table = capture
    out = tmp_path / "c.txt"
    assert run(["export", str(path), "-o", str(out), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == table.num_rows
    for row, want in zip(rows, table.to_pylist(), strict=True):
        assert row["time"] == iso(want["ts_ns"], sep=" ")
        assert row["data"] == want["data"].hex() and int(row["seq"]) == want["seq"]


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("c.parquet.zst", [], "drop the .zst"),
        ("c.bin", [], "cannot tell the format"),
        ("c.csv", ["--format", "xls"], "--format must be one of parquet, csv, jsonl, pcapng,"),
        ("{capture}", [], "is the input"),
        ("nodir/c.csv", [], "does not exist"),
    ],
)
def test_bad_exports_are_one_line(
    capture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    extra: list[str],
    message: str,
) -> None:
    path, _ = capture
    target = name.format(capture=path) if "{" in name else str(tmp_path / name)
    assert run(["export", str(path), "-o", target, *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.arrow"]  # nothing half-written


def test_refuses_to_overwrite(capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = capture
    out = tmp_path / "c.parquet"
    out.write_bytes(b"old")
    assert run(["export", str(path), "-o", str(out)]) == 2
    assert out.read_bytes() == b"old"
    assert run(["export", str(path), "-o", str(out), "--force"]) == 0
    assert pq.read_table(out).num_rows > 0


def test_binary_parquet_is_refused_on_stdout(
    capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = capture
    assert run(["export", str(path), "-o", "-", "-f", "parquet"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "stdout" in err
    assert not Path("-").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.arrow"]


def test_text_formats_stream_to_stdout(capture, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    path, table = capture
    assert run(["export", str(path), "-o", "-", "-f", "jsonl"]) == 0
    out, err = capfdbinary.readouterr()
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["seq"] for r in rows] == table.column("seq").to_pylist()
    assert b"rows to stdout (jsonl)" in err
    assert not Path("-").exists()


def test_sorted_export_reports_what_the_sort_met(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.arrow"
    write_capture(path, Synthetic(seed=92, ncpus=2, disorder_cpu=1))
    assert run(["export", str(path), "-o", str(tmp_path / "d.csv"), "--sorted"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("ebcap: note: CPU 1's own stream is out of timestamp order")
    assert "the sort is still exact" in err


@pytest.mark.parametrize("in_order", [False, True])
def test_pcapng_streams_the_packets_in_replay_order(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes], in_order: bool
) -> None:
    """Batch by batch, in arrival or exact (ts, cpu, seq) order: the same bytes the format's
    whole-table writer gives for the table in that order, to a file or to stdout."""
    path = tmp_path / "p.arrow"
    table = packet_capture(path)
    if in_order:
        keys = zip(*(table.column(k).to_pylist() for k in ("ts_ns", "cpu", "seq")), strict=True)
        ranked = sorted(range(table.num_rows), key=list(keys).__getitem__)
        table = table.take(pa.array(ranked))
    with CaptureReader(path) as reader:
        expected = io.BytesIO()
        packets = write_pcapng(table, reader.metadata, expected)
    sorted_flag = ["--sorted"] if in_order else []
    out = tmp_path / "p.pcapng"
    assert run(["export", str(path), "-o", str(out), *sorted_flag]) == 0
    assert out.read_bytes() == expected.getvalue()
    assert f"wrote {packets} packets to {out} (pcapng)".encode() in capfdbinary.readouterr().err
    assert run(["export", str(path), "-o", "-", "-f", "pcapng", *sorted_flag]) == 0
    assert capfdbinary.readouterr().out == expected.getvalue()


def test_pcapng_of_a_capture_without_packets_opens_in_a_pcap_library(tmp_path: Path) -> None:
    """Only the loss record of the packet capture is kept: the export still names the
    interface (a reader refuses a pcapng file without an Interface Description Block)."""
    from sources.pcapng_reader import parse_pcapng, read_with_dpkt
    from synthetic import write_table

    path = tmp_path / "p.arrow"
    table = packet_capture(path)
    with CaptureReader(path) as reader:
        schema = reader.schema
    only_loss = table.filter(pa.compute.equal(table["kind"].cast(pa.string()), "lost"))
    write_table(path, only_loss.cast(schema))
    out = tmp_path / "empty.pcapng"
    assert run(["export", str(path), "-o", str(out)]) == 0
    view = read_with_dpkt(out.read_bytes())
    assert view.packets == []
    interfaces = parse_pcapng(out.read_bytes())["interfaces"]
    assert len(interfaces) == 1


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_a_source_column_named_time_keeps_its_name(tmp_path: Path, suffix: str) -> None:
    """A tracepoint may have a field ``time`` (tcp:tcp_rcvbuf_grow): the wall clock
    becomes ``wall_time``; a list column (a tracepoint's int array) goes to CSV as JSON."""
    table = build_table(Synthetic(seed=93, ncpus=2, events_per_cpu=20))
    n = table.num_rows
    table = table.append_column("time", pa.array(range(n), pa.int32()))
    pairs = [[i, -i] for i in range(n)]
    table = table.append_column("pair", pa.array(pairs, pa.list_(pa.int64(), 2)))
    path = write_table(tmp_path / "t.arrow", table)
    out = tmp_path / f"t.{suffix}"
    assert run(["export", str(path), "-o", str(out)]) == 0
    if suffix == "parquet":
        got = pq.read_table(out)
        rows = got.to_pylist()
        walls = got.column("wall_time").cast(pa.int64()).to_pylist()
    elif suffix == "csv":
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        walls = [row["wall_time"] for row in rows]
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        walls = [row["wall_time"] for row in rows]
    names = list(rows[0])
    assert names[:4] == ["seq", "cpu", "ts_ns", "wall_time"] and names[-2:] == ["time", "pair"]
    stamps = table.column("ts_ns").to_pylist()
    if suffix == "parquet":
        assert walls == [t + REALTIME_OFFSET_NS for t in stamps]
    else:
        assert walls == [iso(t, sep=" " if suffix == "csv" else "T") for t in stamps]
    assert [int(row["time"]) for row in rows] == list(range(n))
    if suffix == "csv":
        assert [json.loads(row["pair"]) for row in rows] == pairs
    else:
        assert [row["pair"] for row in rows] == pairs


@pytest.mark.parametrize("sorted_", [False, True])
def test_view_columns_of_other_writers_export(tmp_path: Path, sorted_: bool) -> None:
    """string_view and binary_view columns (pyarrow can write them; Arrow cannot take
    rows out of them) export as their large forms, values intact, in either order."""
    table = build_table(Synthetic(seed=93, events_per_cpu=40, lost_every=6))
    n = table.num_rows
    table = table.append_column("sv", pa.array([f"v{i}" for i in range(n)], pa.string_view()))
    table = table.append_column(
        "bv", pa.array([bytes([i % 256]) for i in range(n)], pa.binary_view())
    )
    path = write_table(tmp_path / "views.arrow", table)
    out = tmp_path / "views.parquet"
    assert run(["export", str(path), "-o", str(out), *(["--sorted"] if sorted_ else [])]) == 0
    got = pq.read_table(out)
    assert got.schema.field("sv").type == pa.large_string()
    want = {r["seq"]: (r["sv"], r["bv"]) for r in table.to_pylist()}
    assert {r["seq"]: (r["sv"], r["bv"]) for r in got.to_pylist()} == want


def test_times_past_the_year_2262_are_null(tmp_path: Path) -> None:
    table = build_table(Synthetic(seed=94, events_per_cpu=3))
    ts = table.column("ts_ns").to_pylist()
    ts[-1] = 2**64 - 1
    table = table.set_column(2, table.schema.field("ts_ns"), pa.array(ts, pa.uint64()))
    path = write_table(tmp_path / "big.arrow", table)
    out = tmp_path / "big.parquet"
    assert run(["export", str(path), "-o", str(out)]) == 0
    times = pq.read_table(out).column("time").cast(pa.int64()).to_pylist()
    assert times == [t + REALTIME_OFFSET_NS for t in ts[:-1]] + [None]


def test_a_column_parquet_cannot_hold_is_refused_before_any_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interval column (another writer's file) has no Parquet type: one line, exit 2,
    nothing written; CSV holds it as text."""
    table = build_table(Synthetic(seed=95, events_per_cpu=3))
    spans = [pa.MonthDayNano([0, 1, i]) for i in range(table.num_rows)]
    table = table.append_column("span", pa.array(spans, pa.month_day_nano_interval()))
    path = write_table(tmp_path / "i.arrow", table)
    for force in ([], ["--force"]):
        assert run(["export", str(path), "-o", str(tmp_path / "i.parquet"), *force]) == 2
        err = capsys.readouterr().err
        assert err == (
            "ebcap: error: column 'span' is month_day_nano_interval, which Parquet cannot "
            "hold: export to .csv or .jsonl instead\n"
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["i.arrow"]
    assert run(["export", str(path), "-o", str(tmp_path / "i.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "i.csv").read_text())))
    want = ["1 day"] + [f"1 day 00:00:00.00000000{i}" for i in range(1, table.num_rows)]
    assert [r["span"] for r in rows] == want


@pytest.mark.parametrize(
    "command", ["export-jsonl", "export-csv", "sql-jsonl", "sql-json", "sql-csv", "table"]
)
def test_large_payloads_go_out_a_bounded_piece_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Export and SQL results encode their batches in pieces too (see
    tests/replay/test_records.py), with the same output as in one piece."""
    from ebcap.replay.sink import Output

    table = build_table(Synthetic(seed=96, events_per_cpu=60))
    payloads = [bytes([i % 251]) * (900 + i % 300) for i in range(table.num_rows)]
    table = table.set_column(6, table.schema.field("data"), pa.array(payloads, pa.binary()))
    path = write_table(tmp_path / "big.arrow", table, batch_rows=table.num_rows)
    kind, _, fmt = command.partition("-")
    query = "SELECT seq, data FROM events ORDER BY seq"
    args = {
        "export": ["export", str(path), "-f", fmt],
        "sql": ["sql", str(path), query, "-f", fmt],
        "table": ["sql", str(path), query],
    }[kind]

    def output(name: str) -> bytes:
        assert run([*args, "-o", str(tmp_path / name)]) == 0
        return (tmp_path / name).read_bytes()

    whole = output("whole")
    sizes: list[int] = []
    write = Output.write

    def counted(self: Output, data: bytes | bytearray | memoryview) -> None:
        sizes.append(len(data))
        write(self, data)

    monkeypatch.setattr(Output, "write", counted)
    monkeypatch.setattr("ebcap.replay.lines.TEXT_CHUNK_BYTES", 8192, raising=False)
    pieces = output("pieces")
    if kind == "table":  # the widths come from the first piece: compare the cells
        assert [line.split() for line in pieces.splitlines()[2:]] == [
            line.split() for line in whole.splitlines()[2:]
        ]
    else:
        assert pieces == whole
    assert len(sizes) > 10 and max(sizes) <= 2 * 8192 + 2 * 1200 + 4096


def test_pcapng_leaves_out_packets_without_lengths_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.arrow"
    table, holes = packets_with_nulls(path)
    out = tmp_path / "p.pcapng"
    assert run(["export", str(path), "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "ebcap: note: 3 packet rows have no cap_len, pkt_len or ifindex: left out of the pcapng"
    )
    expected = io.BytesIO()
    kept = table.filter(pa.array([i not in holes for i in range(table.num_rows)]))
    with CaptureReader(path) as reader:
        packets = write_pcapng(kept, reader.metadata, expected)
    assert err[1:] == [f"wrote {packets} packets to {out} (pcapng)"]
    assert out.read_bytes() == expected.getvalue()


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_a_capture_without_its_realtime_offset_exports_without_wall_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    """ebcap.realtime_offset_ns is optional (FORMAT.md): every column but the wall clock."""
    table = build_table(Synthetic(seed=97, events_per_cpu=10, lost_every=4))
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"ebcap.realtime_offset_ns"}
    table = table.replace_schema_metadata(meta)
    path = write_table(tmp_path / "n.arrow", table)
    out = tmp_path / f"n.{suffix}"
    assert run(["export", str(path), "-o", str(out)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "ebcap: note: the capture has no ebcap.realtime_offset_ns: exported without a "
        "wall-clock column",
        f"wrote {table.num_rows} rows to {out} ({suffix})",
    ]
    if suffix == "parquet":
        got = pq.read_table(out)
        names, seqs = got.schema.names, got.column("seq").to_pylist()
    elif suffix == "csv":
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        names, seqs = list(rows[0]), [int(r["seq"]) for r in rows]
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        names, seqs = list(rows[0]), [r["seq"] for r in rows]
    assert names == table.schema.names
    assert seqs == table.column("seq").to_pylist()


def test_pcapng_of_a_capture_without_its_realtime_offset_says_times_are_monotonic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = packet_capture(tmp_path / "p.arrow")
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"ebcap.realtime_offset_ns"}
    path = write_table(tmp_path / "n.arrow", table.replace_schema_metadata(meta))
    out = tmp_path / "n.pcapng"
    assert run(["export", str(path), "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "ebcap: note: the capture has no ebcap.realtime_offset_ns: packet times are "
        "CLOCK_MONOTONIC (since boot), not wall-clock"
    )
    assert err[1].startswith("wrote 15 packets to")


@pytest.mark.parametrize(("fmt", "magic"), [("PCAPNG", b"\x0a\x0d\x0d\x0a"), ("Csv", b'"seq"')])
def test_the_format_option_takes_any_case(tmp_path: Path, fmt: str, magic: bytes) -> None:
    path = tmp_path / "p.arrow"
    packet_capture(path)
    out = tmp_path / "p.out"
    assert run(["export", str(path), "-f", fmt, "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)
