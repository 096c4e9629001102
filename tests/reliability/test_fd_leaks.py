"""The Python API gives back every file descriptor and file mapping, on every path.

Each scenario runs once to warm up (pyarrow opens a few descriptors of its
own on first use), then many times; the process's descriptors and its
mappings of the capture file must be exactly what they were. Recording's own
descriptors are checked in tests/capture/test_record_kernel.py.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from kernel_helpers import open_fds

import ebcap
from ebcap.errors import BadFileError, EbcapError
from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs
from ebcap.format.recovery import recover
from ebcap.replay import iter_events, replay_callbacks
from ebcap.replay.sql import SqlSession

ROUNDS = 100
ROWS = 5000
KINDS = (np.random.default_rng(3).random(ROWS) < 0.01).astype(np.int8)
"""1 (lost) for about one row in a hundred, 0 (sample) for the others."""
LOST_ROWS = int(KINDS.sum())
LOST_EACH = 7


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture of several batches, with lost rows, written by the writer."""
    path = tmp_path_factory.mktemp("fds") / "run.arrow"
    schema = make_schema(
        [pa.field("pid", pa.uint32())], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"}
    )
    rng = np.random.default_rng(4)
    with CaptureWriter(path, schema, flush_rows=1000) as writer:
        kind = KINDS
        writer.write(
            {
                "seq": np.arange(ROWS, dtype=np.uint64),
                "cpu": rng.integers(0, 4, ROWS).astype(np.uint16),
                "ts_ns": np.sort(rng.integers(0, 10**9, ROWS)).astype(np.uint64),
                "kind": kind,
                "lost": kind.astype(np.uint64) * LOST_EACH,
                "round": (np.arange(ROWS) // 100).astype(np.uint32),
                "data": [b"" if k else b"0123456789abcdef" for k in kind],
                "pid": rng.integers(1, 5, ROWS).astype(np.uint32),
            }
        )
    return path


def mappings_of(path: Path) -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(str(path)))


def leaves_nothing(path: Path, scenario: Callable[[], object], rounds: int = ROUNDS) -> None:
    scenario()
    gc.collect()
    fds = open_fds()
    for _ in range(rounds):
        scenario()
    gc.collect()
    assert open_fds() == fds, "file descriptors leaked"
    assert mappings_of(path) == 0, "the capture is still mapped"


def test_open_and_close(capture: Path) -> None:
    def scenario() -> None:
        reader = ebcap.open(capture)
        assert reader.num_batches == 6 and mappings_of(capture) == 1
        reader.close()
        assert mappings_of(capture) == 0, "close() must unmap now, not when collected"
        reader.close()  # idempotent

    leaves_nothing(capture, scenario)


def test_open_iterate_and_leave_early(capture: Path) -> None:
    def scenario() -> None:
        with ebcap.open(capture) as reader:
            for batch in reader.iter_batches():
                assert batch.num_rows == 1000
                break
            assert reader.totals is not None and reader.totals["events"] == ROWS - LOST_ROWS

    leaves_nothing(capture, scenario)


def test_opening_bad_files(tmp_path: Path, capture: Path) -> None:
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(capture.read_bytes()[:3000])
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"ARROW1\0\0" + bytes(5000))

    def scenario() -> None:
        for bad in (cut, junk, tmp_path):
            with pytest.raises(BadFileError):
                ebcap.open(bad)

    leaves_nothing(cut, scenario)
    assert mappings_of(junk) == 0


@pytest.mark.parametrize("in_time_order", [False, True], ids=["arrival", "sorted"])
def test_iter_events(capture: Path, in_time_order: bool) -> None:
    def whole() -> None:
        events = list(iter_events(capture, sorted=in_time_order))
        assert len(events) == ROWS
        if in_time_order:
            ts = [e.ts_ns for e in events]
            assert ts == sorted(ts)
        else:
            assert [e.seq for e in events] == list(range(ROWS))

    def abandoned() -> None:
        events = iter_events(capture, sorted=in_time_order)
        assert next(events).seq >= 0
        events.close()

    leaves_nothing(capture, whole, rounds=10)
    leaves_nothing(capture, abandoned)


@pytest.mark.parametrize("in_time_order", [False, True], ids=["arrival", "sorted"])
def test_replay_callbacks(capture: Path, in_time_order: bool) -> None:
    seen: list[int] = []

    def counted() -> None:
        seen.clear()
        lost: list[int] = []
        n = replay_callbacks(
            capture, lambda cpu, data: seen.append(cpu), in_time_order, lambda c, k: lost.append(k)
        )
        assert n == len(seen) == ROWS - LOST_ROWS and sum(lost) == LOST_EACH * LOST_ROWS

    class Stop(Exception):
        pass

    def raising() -> None:
        def handler(cpu: int, data: bytes) -> None:
            raise Stop

        with pytest.raises(Stop):
            replay_callbacks(capture, handler, in_time_order)

    leaves_nothing(capture, counted, rounds=10)
    leaves_nothing(capture, raising)


def test_sql_sessions(capture: Path) -> None:
    def scenario() -> None:
        with ebcap.open(capture) as reader, SqlSession(reader) as session:
            result = session.query("SELECT count(*) AS n FROM events WHERE kind = 'lost'")
            assert result is not None and result.read_all()["n"].to_pylist() == [LOST_ROWS]

    leaves_nothing(capture, scenario, rounds=20)


def test_recover_and_writer_abort(tmp_path: Path, capture: Path) -> None:
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(capture.read_bytes()[: capture.stat().st_size * 2 // 3])
    out = tmp_path / "fixed.arrow"

    def scenario() -> None:
        report = recover(cut, out, force=True)
        assert 0 < report.rows_saved < ROWS
        with pytest.raises(EbcapError):
            recover(tmp_path / "missing.arrow", out, force=True)
        schema = make_schema([], {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "test"})
        CaptureWriter(tmp_path / "aborted.arrow", schema).abort()

    leaves_nothing(cut, scenario, rounds=30)
    assert mappings_of(out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.arrow", "fixed.arrow"]
