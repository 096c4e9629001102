"""Replay orders: arrival order as written, and the exact bounded-memory time sort."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import Synthetic, build_table, lateness_by_loop, write_capture, write_table

from ebcap.errors import BadFileError
from ebcap.format.reader import CaptureReader
from ebcap.replay.order import SortReport, arrival_order, time_order


def full_sort(table: pa.Table) -> list[int]:
    """Ground truth: seqs ordered by (ts_ns, cpu, seq) with Python's sort of the whole table."""
    rows = zip(
        table.column("ts_ns").to_pylist(),
        table.column("cpu").to_pylist(),
        table.column("seq").to_pylist(),
        strict=True,
    )
    return [seq for _, _, seq in sorted(rows)]


def ground_lateness(table: pa.Table) -> dict[int, int]:
    late = lateness_by_loop(
        table.column("ts_ns").to_pylist(),
        [k == "sample" for k in table.column("kind").to_pylist()],
    )
    return dict(zip(table.column("seq").to_pylist(), late, strict=True))


def collect(batches) -> tuple[list[int], list[int]]:
    seqs: list[int] = []
    late: list[int] = []
    for batch in batches:
        seqs += batch.rows.column("seq").to_pylist()
        late += batch.late_ns.tolist()
    return seqs, late


def test_arrival_order_is_file_order_with_exact_lateness(tmp_path: Path) -> None:
    table = write_capture(tmp_path / "c.arrow", Synthetic(seed=1, lost_every=15))
    with CaptureReader(tmp_path / "c.arrow") as reader:
        seqs, late = collect(arrival_order(reader))
    assert seqs == table.column("seq").to_pylist()
    truth = ground_lateness(table)
    assert late == [truth[s] for s in seqs]
    assert sum(1 for x in late if x) > 20  # the generator's drain skew really reorders


def test_time_order_matches_full_sort_and_keeps_lateness(tmp_path: Path) -> None:
    table = write_capture(tmp_path / "c.arrow", Synthetic(seed=2, ncpus=3, lost_every=10))
    report = SortReport()
    with CaptureReader(tmp_path / "c.arrow") as reader:
        seqs, late = collect(time_order(reader, report=report))
    assert seqs == full_sort(table)
    truth = ground_lateness(table)
    assert late == [truth[s] for s in seqs]
    assert report.rows == table.num_rows
    assert report.spilled_runs == 0 and report.cpu_disorder == {} and report.notes() == []
    # The window is what reordering needs, far below the file.
    assert 0 < report.peak_window_rows < table.num_rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    ncpus=st.integers(1, 4),
    events=st.integers(1, 120),
    skew=st.integers(0, 80_000),
    batch_rows=st.integers(1, 70),
    window=st.integers(1, 400),
    disorder=st.booleans(),
    lost_every=st.sampled_from([0, 5]),
)
def test_bounded_sort_equals_full_sort(
    seed: int,
    ncpus: int,
    events: int,
    skew: int,
    batch_rows: int,
    window: int,
    disorder: bool,
    lost_every: int,
) -> None:
    spec = Synthetic(
        seed=seed,
        ncpus=ncpus,
        events_per_cpu=events,
        drain_skew_ns=skew,
        batch_rows=batch_rows,
        disorder_cpu=0 if disorder else None,
        lost_every=lost_every,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.arrow"
        table = write_capture(path, spec)
        report = SortReport()
        with CaptureReader(path) as reader:
            seqs, _ = collect(
                time_order(reader, max_window_rows=window, spill_dir=tmp, report=report)
            )
        assert seqs == full_sort(table)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["c.arrow"]  # runs cleaned up
    if report.spilled_runs:
        assert report.spilled_rows <= table.num_rows
        assert any("externally" in note for note in report.notes())


def test_cpu_out_of_order_forces_fallback_and_is_reported(tmp_path: Path) -> None:
    spec = Synthetic(seed=5, ncpus=2, events_per_cpu=300, disorder_cpu=1, disorder_swaps=2)
    table = write_capture(tmp_path / "c.arrow", spec)
    stamps = table.column("ts_ns").to_pylist()
    cpus = table.column("cpu").to_pylist()
    cpu1 = [t for t, c in zip(stamps, cpus, strict=True) if c == 1]
    expected_disorder = sum(1 for i, t in enumerate(cpu1) if i and t < max(cpu1[:i]))
    report = SortReport()
    with CaptureReader(tmp_path / "c.arrow") as reader:
        seqs, _ = collect(time_order(reader, max_window_rows=50, spill_dir=tmp_path, report=report))
    assert seqs == full_sort(table)
    assert report.cpu_disorder == {1: expected_disorder}
    assert report.spilled_runs >= 2
    notes = report.notes()
    assert notes[0].startswith("CPU 1's own stream is out of timestamp order")
    assert "temporary runs" in notes[1]


def test_stopping_early_removes_spilled_runs(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    write_capture(tmp_path / "c.arrow", Synthetic(seed=6, disorder_cpu=0, disorder_swaps=4))
    with CaptureReader(tmp_path / "c.arrow") as reader:
        report = SortReport()
        stream = time_order(reader, max_window_rows=10, spill_dir=spill, report=report)
        while report.spilled_runs == 0:
            next(stream)
        assert list(spill.iterdir())  # the runs exist while merging
        stream.close()
    assert list(spill.iterdir()) == []


def test_empty_capture_has_no_rows(tmp_path: Path) -> None:
    table = build_table(Synthetic(events_per_cpu=0))
    write_table(tmp_path / "e.arrow", table)
    with CaptureReader(tmp_path / "e.arrow") as reader:
        assert collect(time_order(reader)) == ([], [])
        assert collect(arrival_order(reader)) == ([], [])


def test_seq_going_back_is_a_bad_file(tmp_path: Path) -> None:
    table = build_table(Synthetic(seed=7, events_per_cpu=20))
    seq = np.arange(table.num_rows, dtype=np.uint64)
    seq[10], seq[11] = seq[11], seq[10]
    table = table.set_column(0, table.schema.field(0), pa.array(seq))
    write_table(tmp_path / "bad.arrow", table)
    with CaptureReader(tmp_path / "bad.arrow") as reader, pytest.raises(BadFileError, match="seq"):
        collect(arrival_order(reader))
