"""Rows DuckDB spills to disk during `ebcap sql` stay private and go away.

A query larger than DuckDB's memory limit spills rows to temporary files.
Left to itself DuckDB writes them to ``./.tmp`` in the current directory,
readable by everyone (0644 under the usual umask) and leaves the directory
behind; captured events can hold secrets, so the session gives DuckDB a
private directory (0700) and removes it when it closes.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import ebcap
from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs
from ebcap.replay.sql import SqlSession

ROWS = 400_000
PAYLOAD = 64
MEMORY_LIMIT = "48MB"
"""Small enough that sorting these rows spills, large enough not to run out of memory."""


@pytest.fixture
def big_capture(tmp_path: Path) -> Path:
    path = tmp_path / "big.arrow"
    schema = make_schema([], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"})
    rng = np.random.default_rng(5)
    raw = pa.py_buffer(rng.bytes(PAYLOAD * ROWS))
    payloads = pa.FixedSizeBinaryArray.from_buffers(pa.binary(PAYLOAD), ROWS, [None, raw])
    with CaptureWriter(path, schema) as writer:
        writer.write(
            {
                "seq": np.arange(ROWS, dtype=np.uint64),
                "cpu": np.zeros(ROWS, np.uint16),
                "ts_ns": rng.integers(0, 2**40, ROWS).astype(np.uint64),
                "kind": np.zeros(ROWS, np.int8),
                "lost": np.zeros(ROWS, np.uint64),
                "round": np.zeros(ROWS, np.uint32),
                "data": payloads.cast(pa.binary()),
            }
        )
    return path


def test_spilled_rows_stay_private(
    big_capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with ebcap.open(big_capture) as reader, SqlSession(reader) as session:
        session.query(f"SET memory_limit = '{MEMORY_LIMIT}'")
        result = session.query("SELECT data FROM events ORDER BY ts_ns")
        assert result is not None
        first = result.read_next_batch()
        spill_dir = session.spill_directory
        spilled = [p.name for p in spill_dir.iterdir()]
        spill_dir_mode = stat.S_IMODE(spill_dir.stat().st_mode)
        rows = first.num_rows + sum(b.num_rows for b in result)
    assert rows == ROWS
    assert any(name.endswith(".tmp") for name in spilled), "the sort did not spill: no test"
    assert spill_dir_mode == 0o700
    assert not spill_dir.exists(), "the spill directory stayed"
    assert list(cwd.iterdir()) == [], "DuckDB wrote into the current directory"
