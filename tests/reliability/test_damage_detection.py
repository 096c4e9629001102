"""Damage that Arrow and zstd cannot see: every command must still refuse the file.

Small batches are stored uncompressed (zstd does not pay for 32 bytes), and
metadata strings are plain text, so one flipped bit there reads back as a
different but valid value. These files are built with the writer so each test
knows exactly which bytes it damages; the fuzz tests do the same at random on
real captures.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from reliability.harness import assert_one_line_error, run_cli

from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs

MARK = 0x1122334455667788
"""ts_ns of the first row: a byte pattern found exactly once in the file."""
HOST = "host-QWERTY"
ROWS = 4


def write_small(path: Path, flush: bool = False) -> bytes:
    """ROWS rows in one batch that carries the totals too, or (``flush``) in a batch of
    their own followed by an empty one carrying the totals."""
    schema = make_schema(
        [pa.field("pid", pa.uint32())],
        {
            fs.META_TRANSPORT: "perf",
            fs.META_SOURCE: "test",
            fs.META_HOSTNAME: HOST,
            fs.META_REALTIME_OFFSET: "0",
        },
    )
    with CaptureWriter(path, schema) as writer:
        writer.write(
            {
                "seq": np.arange(ROWS, dtype=np.uint64),
                "cpu": np.zeros(ROWS, np.uint16),
                "ts_ns": MARK + np.arange(ROWS, dtype=np.uint64),
                "kind": np.zeros(ROWS, np.int8),
                "lost": np.zeros(ROWS, np.uint64),
                "round": np.zeros(ROWS, np.uint32),
                "data": [b"abcd"] * ROWS,
                "pid": np.arange(ROWS, dtype=np.uint32),
            }
        )
        if flush:
            writer.flush()
    return path.read_bytes()


def damaged(tmp_path: Path, change: bytes, at: int) -> Path:
    good = write_small(tmp_path / "good.arrow")
    assert 0 <= at <= len(good) - len(change)
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(good[:at] + change + good[at + len(change) :])
    return bad


def commands(path: Path, out_dir: Path) -> list[list[str | Path]]:
    return [
        ["info", path],
        ["replay", path],
        ["replay", "--sorted", path],
        ["reorder", path],
        ["sql", path, "SELECT sum(ts_ns) FROM events"],
        ["export", path, "-o", out_dir / "x.jsonl"],
        ["recover", path, "-o", out_dir / "fixed.arrow"],
    ]


def only_offset(data: bytes, needle: bytes) -> int:
    assert data.count(needle) == 1, f"{needle!r} occurs {data.count(needle)} times"
    return data.index(needle)


def test_flipped_bit_in_an_uncompressed_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_small(tmp_path / "probe.arrow")
    at = only_offset(good, MARK.to_bytes(8, "little"))
    bad = damaged(tmp_path, bytes([good[at] ^ 0x01]), at)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for argv in commands(bad, out_dir):
        outcome = run_cli(capsys, argv)
        if argv[0] == "recover":  # the only batch is damaged: nothing left to save
            assert_one_line_error(outcome, mentions="holds no complete batch")
        else:
            assert_one_line_error(outcome, mentions="column 'ts_ns' does not match its checksum")
    assert list(out_dir.iterdir()) == [], "a refused input left an output file"


def test_flipped_bit_in_the_footer_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_small(tmp_path / "probe.arrow")
    footer_copy = good.rindex(HOST.encode())
    assert footer_copy > good.index(HOST.encode()), "the schema is stored twice"
    bad = damaged(tmp_path, b"h" + HOST[1:].upper().encode(), footer_copy)
    outcome = run_cli(capsys, ["info", "--json", bad])
    assert_one_line_error(outcome, mentions="the schema does not match its checksum")


def test_flipped_bit_in_the_stream_schema_stops_recovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recover` reads the schema at the start of the file, which file readers never look at."""
    good = write_small(tmp_path / "probe.arrow")
    bad = damaged(tmp_path, b"H", good.index(HOST.encode()))
    outcome = run_cli(capsys, ["recover", bad, "-o", tmp_path / "fixed.arrow"])
    assert_one_line_error(outcome, mentions="nothing to recover")
    assert not (tmp_path / "fixed.arrow").exists()


def test_changed_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_small(tmp_path / "probe.arrow")
    at = only_offset(good, b'"events":4')
    bad = damaged(tmp_path, b'"events":5', at)
    outcome = run_cli(capsys, ["info", bad])
    assert_one_line_error(outcome, mentions="the totals do not match their checksum")


def test_sql_refuses_bad_offsets_instead_of_crashing(tmp_path: Path) -> None:
    """DuckDB trusts the buffers it scans: a wild offset used to crash the process."""
    good = write_small(tmp_path / "probe.arrow")
    offsets = struct.pack(f"<{ROWS + 1}i", *range(0, 4 * ROWS + 1, 4))
    at = only_offset(good, offsets) + 4 * ROWS
    bad = damaged(tmp_path, struct.pack("<i", 0x7FFFFF00), at)
    done = subprocess.run(
        [sys.executable, "-m", "ebcap", "sql", str(bad), "SELECT * FROM events"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("ebcap: error: ")


def test_batches_that_repeat_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file (here without checksums, as another tool writes it) whose seq goes back."""
    schema = make_schema(
        [], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test", fs.META_REALTIME_OFFSET: "0"}
    )
    kinds = pa.array(list(fs.KINDS), pa.string())
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([0, 1], pa.uint64()),
            pa.array([0, 0], pa.uint16()),
            pa.array([10, 11], pa.uint64()),
            pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int8()), kinds),
            pa.array([0, 0], pa.uint64()),
            pa.array([0, 0], pa.uint32()),
            pa.array([b"a", b"b"], pa.binary()),
        ],
        schema=schema,
    )
    path = tmp_path / "twice.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)
        writer.write_batch(batch)
    for argv in (["info", path], ["replay", path], ["export", path, "-o", tmp_path / "x.csv"]):
        assert_one_line_error(run_cli(capsys, argv), mentions="seq does not increase")


def rewrite_without_last_batches(source: Path, target: Path, keep: int) -> None:
    """The same file with a footer indexing only the first ``keep`` batches.

    Damage to the footer's batch count (seen by the fuzz tests) reads the same way.
    """
    with pa.ipc.open_file(str(source)) as f:
        batches = [f.get_batch_with_custom_metadata(i) for i in range(keep)]
        schema = f.schema
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as w:
        for batch, custom in batches:
            w.write_batch(batch, custom_metadata=custom)


@pytest.mark.parametrize("keep", [0, 1], ids=["no-batch", "first-batch-only"])
def test_a_footer_that_lost_the_last_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep: int
) -> None:
    good = tmp_path / "good.arrow"
    write_small(good, flush=True)
    bad = tmp_path / "bad.arrow"
    rewrite_without_last_batches(good, bad, keep)
    for argv in commands(bad, tmp_path)[:-1]:  # recover reads the stream: see below
        assert_one_line_error(run_cli(capsys, argv), mentions="totals")
