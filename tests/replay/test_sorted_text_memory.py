"""Sorted text of rows with large fields: the same lines, built a bounded piece at a time.

A ``--layout`` with a ``bytes[16384]`` field shows 32 KiB of hex a row. The
time sort is handed each slice with its line bodies made in advance; for
such rows that text was the whole slice's at once (2 GiB for 65,536 rows),
and memory grew with the rows of a slice times the text of a row. Those
slices now keep their columns through the sort and their bodies are made
after it, a bounded range of rows at a time, as in arrival order, JSON lines
and CSV; slices of small rows still go through the sort as text. The lines
must not change, whichever way each slice went.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from peak_memory import PRELUDE
from synthetic import Collect, Synthetic, build_table, write_table

from ebcap.format.reader import CaptureReader
from ebcap.replay.bodies import BODY_FIELD, Bodies
from ebcap.replay.player import ReplayOptions, write_replay

FIELD = "blob"
"""A source column shown whole, as a layout's ``bytes[N]`` field is."""


def with_field(table: pa.Table, sizes: list[int]) -> pa.Table:
    """``table`` with a binary source column of the given sizes, every value distinct."""
    values = [i.to_bytes(4, "little") * (size // 4) for i, size in enumerate(sizes)]
    return table.append_column(FIELD, pa.array(values, pa.binary()))


class Writes(Collect):
    """A sink that also keeps the size of each write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.spilled_runs = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sizes.append(len(data))
        super().write(data)


def sorted_text(path: Path, **options: object) -> Writes:
    sink = Writes()
    with CaptureReader(path) as reader:
        options = ReplayOptions(order="time", **options)  # type: ignore[arg-type]
        sink.spilled_runs = write_replay(reader, sink, options).order.spilled_runs
    return sink


CHUNK = 8192
"""Bytes of values shown whole per piece of text in the test below; the real default is
64 MiB."""


@pytest.mark.parametrize("window", [1 << 18, 4])
def test_large_fields_give_the_same_sorted_lines_a_bounded_piece_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """Batches of 64 rows, every other one with 600-byte values: those pass the piece
    size and keep their columns, the rest are text before the sort, and the sort mixes
    both in one output batch (and, with a small window, in its spilled runs)."""
    spec = Synthetic(seed=31, syscalls=True, lost_every=9, events_per_cpu=300)
    table = build_table(spec)
    sizes = [600 if (i // 64) % 2 else 8 * (i % 3) for i in range(table.num_rows)]
    path = write_table(tmp_path / "f.arrow", with_field(table, sizes), batch_rows=64)
    whole = sorted_text(path, max_window_rows=window)

    kinds: list[str] = []
    prepare = Bodies.prepare

    def spied(self: Bodies, rows: pa.RecordBatch) -> pa.RecordBatch:
        prepared = prepare(self, rows)
        body = prepared.column(BODY_FIELD.name)
        kinds.append("kept" if rows.num_rows and body.null_count == rows.num_rows else "text")
        return prepared

    monkeypatch.setattr(Bodies, "prepare", spied)
    monkeypatch.setattr("ebcap.replay.lines.TEXT_CHUNK_BYTES", CHUNK)
    pieces = sorted_text(path, max_window_rows=window)
    assert {"kept", "text"} <= set(kinds)
    assert (pieces.spilled_runs > 0) == (window == 4)
    assert pieces.data == whole.data
    assert len(pieces.sizes) > sum(sizes) // CHUNK // 2  # in many pieces
    assert max(pieces.sizes) <= 2 * CHUNK + 2 * 600 + 4096  # hex of one piece and a row
    lines = whole.data.decode().splitlines()
    assert len(lines) == table.num_rows
    assert any("moved ahead of" in line and "blob=" in line for line in lines)


MEASURE = (
    PRELUDE
    + r"""
import sys
import ebcap.replay.lines
from ebcap.format.reader import CaptureReader
from ebcap.replay.memory import use_streaming_pool
from ebcap.replay.player import ReplayOptions, write_replay

class Count:
    written = 0
    def write(self, data):
        self.written += len(data)
    def flush(self):
        pass

path, chunk = sys.argv[1], int(sys.argv[2])
ebcap.replay.lines.TEXT_CHUNK_BYTES = chunk
use_streaming_pool()
with CaptureReader(path) as reader:
    before = reset_peak()
    out = Count()
    write_replay(reader, out, ReplayOptions(order="time"))
    print(grown_kib(before), out.written)
"""
)

ROW_BYTES = 16_384
PIECE_BYTES = 2 << 20
"""The piece size in the measured process: a slice of 32 MiB of values is 16 pieces."""


def test_peak_memory_of_sorted_text_with_a_large_field(tmp_path: Path) -> None:
    """2,000 rows of 16 KiB in one slice: 32 MiB of values, 64 MiB of hex. Their text made
    in one piece before the sort, then again in one piece for the output, took ~350 MiB
    over what the process held before; the rows themselves, held and copied once by the
    sort, and a piece of text at a time take about a third of that."""
    table = build_table(Synthetic(seed=32, events_per_cpu=1000, lost_every=50))
    values = table.num_rows * ROW_BYTES
    samples = int(pc.sum(pc.equal(table.column("kind"), "sample")).as_py())
    path = write_table(
        tmp_path / "big.arrow", with_field(table, [ROW_BYTES] * table.num_rows), 1 << 16
    )
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(PIECE_BYTES)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    growth_kib, written = (int(x) for x in result.stdout.split())
    assert written > 2 * ROW_BYTES * samples  # every sample's value went out, as hex
    assert growth_kib * 1024 < 5 * values, (growth_kib, values)
