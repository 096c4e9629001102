"""The time sort's window: rows held in their batches, compacted when few keep many alive."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import Synthetic, build_table, lateness_by_loop, write_capture, write_table

from ebcap.format.reader import CaptureReader
from ebcap.replay import order
from ebcap.replay.order import OrderReport, time_order


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    ncpus=st.integers(2, 4),
    skew=st.integers(20_000, 300_000),
    batch_rows=st.integers(3, 40),
)
def test_compacted_window_still_sorts_exactly(
    seed: int, ncpus: int, skew: int, batch_rows: int
) -> None:
    spec = Synthetic(
        seed=seed, ncpus=ncpus, events_per_cpu=150, drain_skew_ns=skew, batch_rows=batch_rows
    )
    compactions = []
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as tmp:
        # Tiny slices: the window's batches then outnumber its rows and get compacted.
        patch.setattr(order, "SLICE_ROWS", 2)
        real = order._Window._compact
        patch.setattr(order._Window, "_compact", lambda w: compactions.append(w.rows) or real(w))
        path = Path(tmp) / "c.arrow"
        table = write_capture(path, spec)
        with CaptureReader(path) as reader:
            batches = list(time_order(reader, report=OrderReport()))
    rows = table.to_pylist()
    late = dict(
        zip(
            (r["seq"] for r in rows),
            lateness_by_loop([r["ts_ns"] for r in rows], [r["kind"] == "sample" for r in rows]),
            strict=True,
        )
    )
    expected = [r["seq"] for r in sorted(rows, key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))]
    seqs = [s for b in batches for s in b.rows.column("seq").to_pylist()]
    assert seqs == expected
    assert [x for b in batches for x in b.late_ns.tolist()] == [late[s] for s in seqs]
    assert all(0 < b.rows.num_rows <= 2 for b in batches)  # handed out a slice at most


def test_compaction_happens_when_held_rows_keep_batches_alive(tmp_path: Path) -> None:
    spec = Synthetic(seed=9, ncpus=3, events_per_cpu=400, drain_skew_ns=250_000, batch_rows=5)
    write_capture(tmp_path / "c.arrow", spec)
    compactions: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(order, "SLICE_ROWS", 2)
        real = order._Window._compact
        patch.setattr(order._Window, "_compact", lambda w: compactions.append(w.rows) or real(w))
        with CaptureReader(tmp_path / "c.arrow") as reader:
            list(time_order(reader))
    assert compactions  # the path the hypothesis test relies on is really taken


def test_dictionary_columns_from_each_slice_keep_their_values(tmp_path: Path) -> None:
    """A column each slice codes against its own dictionary comes out with the right values."""
    spec = Synthetic(seed=12, ncpus=3, events_per_cpu=500, drain_skew_ns=90_000, batch_rows=37)
    table = write_capture(tmp_path / "c.arrow", spec)

    def label(rows: pa.RecordBatch) -> pa.RecordBatch:
        text = [None if s % 5 == 0 else f"s{s % 7}" for s in rows.column("seq").to_pylist()]
        coded = pa.array(text, pa.string()).dictionary_encode()  # dictionary order differs
        narrow = coded.cast(pa.dictionary(pa.int8(), pa.string()))  # no room to concatenate
        return rows.append_column("label", coded).append_column("narrow", narrow)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(order, "SLICE_ROWS", 11)  # many slices, each with its own dictionary
        with CaptureReader(tmp_path / "c.arrow") as reader:
            batches = list(time_order(reader, prepare=label))
    got = [
        row
        for b in batches
        for row in zip(
            *(b.rows[name].to_pylist() for name in ("seq", "label", "narrow")), strict=True
        )
    ]
    rows = sorted(table.to_pylist(), key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))
    labels = [None if r["seq"] % 5 == 0 else f"s{r['seq'] % 7}" for r in rows]
    assert got == [(r["seq"], x, x) for r, x in zip(rows, labels, strict=True)]
    kinds = [k for b in batches for k in b.rows.column("kind").to_pylist()]
    assert kinds == [r["kind"] for r in rows]


def test_a_row_held_to_the_end_keeps_only_its_own_dictionary_entries(tmp_path: Path) -> None:
    """The first row delivered is stamped after every other one: it stays in the window
    through every compaction, and the source dictionaries it is compacted with must not
    pile up (each slice brings its own, one entry per row)."""
    table = build_table(Synthetic(seed=13, ncpus=2, events_per_cpu=600))
    stamps = table.column("ts_ns").to_numpy().copy()
    stamps[0] = 2**62
    table = table.set_column(2, table.schema.field(2), pa.array(stamps))
    write_table(tmp_path / "c.arrow", table, batch_rows=50)

    def label(rows: pa.RecordBatch) -> pa.RecordBatch:
        text = pa.array([f"row {s}" for s in rows.column("seq").to_pylist()], pa.string())
        return rows.append_column("label", text.dictionary_encode())

    held: list[tuple[int, int]] = []  # (dictionary entries, rows) after each compaction
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(order, "SLICE_ROWS", 10)
        real = order._Window._compact

        def compact(window: order._Window) -> None:
            real(window)
            index = window.schema.get_field_index("label")
            entries = sum(len(b.column(index).dictionary) for b in window.batches)
            held.append((entries, window.rows))

        patch.setattr(order._Window, "_compact", compact)
        with CaptureReader(tmp_path / "c.arrow") as reader:
            batches = list(time_order(reader, prepare=label))
    assert len(held) >= 20  # compacted again and again around the held row
    assert all(entries == rows for entries, rows in held)  # each held row's own label only
    labels = [x for b in batches for x in b.rows.column("label").to_pylist()]
    assert labels[-1] == "row 0" and sorted(labels) == sorted(
        f"row {s}" for s in range(len(labels))
    )
