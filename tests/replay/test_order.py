"""Replay orders: arrival order as written, and the exact bounded-memory time sort."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import (
    Synthetic,
    build_table,
    lateness_by_loop,
    moved_ahead,
    write_capture,
    write_table,
)

from ebcap.errors import BadFileError
from ebcap.format.reader import CaptureReader
from ebcap.replay import runs, scan
from ebcap.replay.order import OrderReport, StreamShape, arrival_order, later_minimums, time_order


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


def collect_moves(batches) -> tuple[list[int], list[int], list[int]]:
    """(seqs, lateness, how many earlier-delivered rows each was moved ahead of)."""
    seqs: list[int] = []
    late: list[int] = []
    moved: list[int] = []
    for batch in batches:
        seqs += batch.rows.column("seq").to_pylist()
        late += batch.late_ns.tolist()
        moved += batch.moved.tolist()
    return seqs, late, moved


def ground_moves(table: pa.Table) -> dict[int, int]:
    keys = list(
        zip(
            table.column("ts_ns").to_pylist(),
            table.column("cpu").to_pylist(),
            table.column("seq").to_pylist(),
            strict=True,
        )
    )
    return dict(zip(table.column("seq").to_pylist(), moved_ahead(keys), strict=True))


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
    report = OrderReport()
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
    slice_rows=st.sampled_from([7, 40, 65_536]),
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
    slice_rows: int,
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
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        small_runs(patch, slice_rows)
        path = Path(tmp) / "c.arrow"
        table = write_capture(path, spec)
        report = OrderReport()
        with CaptureReader(path) as reader:
            seqs, late, moved = collect_moves(
                time_order(reader, max_window_rows=window, spill_dir=tmp, report=report)
            )
        assert seqs == full_sort(table)
        truth, moves = ground_lateness(table), ground_moves(table)
        assert late == [truth[s] for s in seqs]
        assert moved == [moves[s] for s in seqs]
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["c.arrow"]  # runs cleaned up
    if report.spilled_runs:
        assert report.spilled_rows <= table.num_rows
        assert any("externally" in note for note in report.notes())


def small_runs(patch: pytest.MonkeyPatch, slice_rows: int) -> None:
    """Slices, run blocks and the open-run limit small enough for a small file to spill,
    spill many runs and merge them."""
    patch.setattr(scan, "SLICE_ROWS", slice_rows)
    patch.setattr(runs, "RUN_BLOCK_ROWS", 3)
    patch.setattr(runs, "MAX_OPEN_RUNS", 5)
    patch.setattr(runs, "MERGE_WIDTH", 2)


def test_spilling_sort_merges_runs_and_stays_exact(tmp_path: Path) -> None:
    """An event delivered last but stamped first: everything else spills, runs get merged
    while spilling, and the output is still the full sort."""
    table = build_table(Synthetic(seed=8, ncpus=3, events_per_cpu=400, lost_every=9))
    first = int(np.argmin(table.column("ts_ns").to_numpy()))
    order = np.concatenate(([i for i in range(table.num_rows) if i != first], [first]))
    table = table.take(pa.array(order))
    table = table.set_column(
        0, table.schema.field(0), pa.array(np.arange(table.num_rows, dtype=np.uint64))
    )
    write_table(tmp_path / "late.arrow", table)
    spill = tmp_path / "spill"
    spill.mkdir()
    report = OrderReport()
    with pytest.MonkeyPatch.context() as patch, CaptureReader(tmp_path / "late.arrow") as reader:
        small_runs(patch, 50)
        seqs, late, moved = collect_moves(
            time_order(reader, max_window_rows=30, spill_dir=spill, report=report)
        )
    assert seqs == full_sort(table)
    truth, moves = ground_lateness(table), ground_moves(table)
    assert late == [truth[s] for s in seqs]
    assert moved == [moves[s] for s in seqs]
    assert seqs[0] == table.num_rows - 1 and moved[0] == table.num_rows - 1  # the late event
    assert report.spilled_runs >= 10 and report.run_merges >= 3
    assert report.peak_open_runs <= runs.MAX_OPEN_RUNS + 1
    assert report.spilled_rows >= table.num_rows - 100  # nearly everything went to disk
    assert list(spill.iterdir()) == []


def test_cpu_out_of_order_forces_fallback_and_is_reported(tmp_path: Path) -> None:
    spec = Synthetic(seed=5, ncpus=2, events_per_cpu=300, disorder_cpu=1, disorder_swaps=2)
    table = write_capture(tmp_path / "c.arrow", spec)
    stamps = table.column("ts_ns").to_pylist()
    cpus = table.column("cpu").to_pylist()
    cpu1 = [t for t, c in zip(stamps, cpus, strict=True) if c == 1]
    expected_disorder = sum(1 for i, t in enumerate(cpu1) if i and t < max(cpu1[:i]))
    report = OrderReport()
    with CaptureReader(tmp_path / "c.arrow") as reader:
        seqs, _ = collect(time_order(reader, max_window_rows=50, spill_dir=tmp_path, report=report))
    assert seqs == full_sort(table)
    assert report.cpu_disorder == {1: expected_disorder}
    assert report.spilled_runs >= 2
    notes = report.notes()
    assert notes[0].startswith("CPU 1's own stream is out of timestamp order")
    assert "temporary runs" in notes[1]


def behind_per_cpu(cpus: list[int], stamps: list[int], counted: list[bool]) -> dict[int, int]:
    """Per CPU, the counted rows stamped before an earlier counted row of that CPU."""
    newest: dict[int, int] = {}
    behind: dict[int, int] = {}
    for cpu, stamp, count in zip(cpus, stamps, counted, strict=True):
        if not count:
            continue
        if stamp < newest.get(cpu, stamp):
            behind[cpu] = behind.get(cpu, 0) + 1
        newest[cpu] = max(newest.get(cpu, stamp), stamp)
    return behind


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    lost_every=st.sampled_from([0, 2, 6]),
    spread=st.integers(1, 40),
    slice_rows=st.integers(1, 40),
)
def test_the_first_pass_tells_the_streams_order_from_the_samples_order(
    seed: int, lost_every: int, spread: int, slice_rows: int
) -> None:
    """Loss records count for the streams' shape (which mover is exact) but not for
    the disorder note; they share one pass until the first loss record."""
    spec = Synthetic(seed=seed, ncpus=3, events_per_cpu=30, lost_every=lost_every)
    table = build_table(spec)
    rng = np.random.default_rng(seed)
    stamps = rng.integers(0, spread, table.num_rows).astype(np.uint64)
    table = table.set_column(2, table.schema.field(2), pa.array(stamps))
    cpus, is_sample = (
        table.column("cpu").to_pylist(),
        [k == "sample" for k in table.column("kind").to_pylist()],
    )
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        small_runs(patch, slice_rows)
        path = write_table(Path(tmp) / "c.arrow", table, batch_rows=17)
        report, shape = OrderReport(), StreamShape()
        with CaptureReader(path) as reader:
            later_minimums(reader, report, shape)
    stamp_list = stamps.tolist()
    every_row = behind_per_cpu(cpus, stamp_list, [True] * len(cpus))
    assert shape.rows_out_of_order == sum(every_row.values())
    newest: dict[int, int] = {}
    for stamp, cpu in zip(stamp_list, cpus, strict=True):
        newest[cpu] = max(newest.get(cpu, stamp), stamp)
    assert shape.newest == newest
    assert report.cpu_disorder == behind_per_cpu(cpus, stamp_list, is_sample)


def test_stopping_early_removes_spilled_runs(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    write_capture(tmp_path / "c.arrow", Synthetic(seed=6, disorder_cpu=0, disorder_swaps=4))
    with CaptureReader(tmp_path / "c.arrow") as reader:
        report = OrderReport()
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
