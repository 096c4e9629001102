"""The built-in producer recorded end to end: every event accounted for, losses included."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from reliability.harness import is_one_line_error, run_cli

from ebcap.bpf.cpus import online_cpus
from ebcap.capture import recorder
from ebcap.capture.batch import EventBatch
from ebcap.capture.bench import BenchSource, run_bench
from ebcap.capture.readers import Reader, open_reader
from ebcap.capture.recorder import RecordOptions
from ebcap.format.reader import CaptureReader
from ebcap.format.schema import KIND_SAMPLE_CODE

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


class FlipsOneBit:
    """A reader that damages the first event it hands over (as a fault in the ring
    would): the last byte of its last pad word changes."""

    def __init__(self, reader: Reader, size: int) -> None:
        self._reader = reader
        self._size = size
        self.flipped = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._reader, name)

    def read(self) -> EventBatch:
        batch = self._reader.read()
        samples = np.flatnonzero(batch.kind == KIND_SAMPLE_CODE)
        if not self.flipped and len(samples):
            batch.values[batch.offsets[samples[0]] + self._size - 1] ^= 0x01
            self.flipped = True
        return batch


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_bench_command_exits_1_on_a_damaged_event(
    transport: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readers: list[FlipsOneBit] = []

    def damaging_reader(*args: object, **kwargs: object) -> FlipsOneBit:
        readers.append(FlipsOneBit(open_reader(*args, **kwargs), 24))  # type: ignore[arg-type]
        return readers[-1]

    monkeypatch.setattr(recorder, "open_reader", damaging_reader)
    argv = ["bench", "-t", transport, "--size", "24", "-d", "0.3", "-o", tmp_path / "b.arrow"]
    outcome = run_cli(capsys, argv)
    assert readers and readers[0].flipped
    assert is_one_line_error(outcome, code=1), outcome.describe()
    assert outcome.err == (
        "ebcap: error: integrity check failed: 1 corrupted, "
        "CPU 0: +1 events neither received nor reported lost\n"
    )
    assert "integrity: 1 corrupted" in outcome.out
    table = outcome.out.splitlines()[1:]
    assert table[0].split() == [
        *("cpu", "produced", "received", "lost", "holes", "out", "of", "order", "unaccounted")
    ]
    assert table[1].split()[0] == "cpu0" and table[1].split()[-1] == "1"


def test_bench_command_reports_each_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cpus = online_cpus()
    producers = ",".join(map(str, cpus))
    argv = ["bench", "-t", "perf", "-b", "8K", "-d", "0.3", "--producers", producers]
    outcome = run_cli(capsys, [*argv, "-o", tmp_path / "b.arrow"])
    assert outcome.code == 0, outcome.describe()
    rows = [line.split() for line in outcome.out.splitlines()[2:]]
    assert [row[0] for row in rows] == [f"cpu{c}" for c in cpus]
    for row in rows:
        produced, received, lost, holes, disorder, unaccounted = (
            int(v.replace(",", "")) for v in row[1:]
        )
        assert produced == received + lost and lost > 0  # 8 KiB rings overflow
        assert holes <= lost and disorder == 0 and unaccounted == 0
