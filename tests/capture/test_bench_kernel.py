"""The built-in producer recorded end to end: every event accounted for, losses included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebcap.capture.bench import BenchSource, run_bench
from ebcap.capture.recorder import RecordOptions
from ebcap.format.reader import CaptureReader

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
@pytest.mark.parametrize("size", [24, 256])
def test_bench_accounts_for_every_event(tmp_path: Path, transport: str, size: int) -> None:
    options = RecordOptions(output=tmp_path / "b.arrow", transport=transport, buffer_bytes=4 << 20)
    cpus_before = os.sched_getaffinity(0)
    report = run_bench(BenchSource(size), [0], 0.3, options)
    assert os.sched_getaffinity(0) == cpus_before, "the bench left this thread pinned"
    assert report.produced > 10_000
    assert report.ok, report
    assert report.received + report.lost_reported == report.produced
    assert sum(report.missing_per_cpu.values()) == report.lost_reported


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_overflowing_a_tiny_buffer_records_the_losses(tmp_path: Path, transport: str) -> None:
    """A 4 KiB buffer cannot keep up: losses appear as rows and add up exactly."""
    options = RecordOptions(
        output=tmp_path / "tiny.arrow",
        transport=transport,
        buffer_bytes=4096,
        wakeup_events=1 << 20,
    )
    report = run_bench(BenchSource(64), [0], 0.3, options)
    assert report.lost_reported > 0, "a 4 KiB buffer should overflow"
    assert report.unaccounted == 0 and report.corrupted == 0 and report.duplicates == 0
    if transport == "ringbuf":  # drops counted by the program are the lost rows
        assert report.drops_in_bpf == report.lost_reported
    with CaptureReader(options.output) as reader:
        totals = reader.totals
        table = reader.to_table()
    assert totals is not None
    assert totals["lost"] == report.lost_reported == sum(table["lost"].to_pylist())
    lost_rows = [
        r for r in table.select(["kind", "cpu", "ts_ns"]).to_pylist() if r["kind"] == "lost"
    ]
    assert lost_rows and all(r["cpu"] == 0 and r["ts_ns"] > 0 for r in lost_rows)
