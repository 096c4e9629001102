"""Reorder analysis against plain-loop ground truth on generated captures."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import (
    Synthetic,
    build_table,
    late_first_event_capture,
    write_capture,
    write_table,
)

from ebcap.format.reader import CaptureReader
from ebcap.replay import distribution, rounds
from ebcap.replay.plot import draw
from ebcap.replay.plot_points import PLOT_POINTS, PlotPoints
from ebcap.replay.reorder import analyze
from ebcap.replay.rounds import TOP_ROUNDS


def truth(table: pa.Table) -> dict:
    """Every number of the report, computed by the definitions with plain loops."""
    rows = [r for r in table.to_pylist() if r["kind"] == "sample"]
    late, displacement, distance, pairs, per_round = [], [], Counter(), Counter(), Counter()
    per_cpu: dict[int, list[int]] = {}
    round_samples: Counter = Counter()
    round_worst: dict[int, int] = {}
    high = high_round = high_cpu = None
    for i, r in enumerate(rows):
        per_cpu.setdefault(r["cpu"], [0, 0])[0] += 1
        round_samples[r["round"]] += 1
        if high is not None and r["ts_ns"] < high:
            late.append(high - r["ts_ns"])
            displacement.append(sum(1 for q in rows[:i] if q["ts_ns"] > r["ts_ns"]))
            distance[r["round"] - high_round] += 1
            pairs[(r["cpu"], high_cpu)] += 1
            per_round[r["round"]] += 1
            round_worst[r["round"]] = max(round_worst.get(r["round"], 0), late[-1])
            per_cpu[r["cpu"]][1] += 1
        if high is None or r["ts_ns"] >= high:
            high, high_round, high_cpu = r["ts_ns"], r["round"], r["cpu"]
    return {
        "samples": len(rows),
        "late": late,
        "displacement": displacement,
        "distance": distance,
        "pairs": pairs,
        "per_cpu": per_cpu,
        "rounds": len({r["round"] for r in rows}),
        "per_round": per_round,
        "late_rounds": [
            {
                "round": k,
                "samples": round_samples[k],
                "late": per_round[k],
                "max_lateness_ns": round_worst[k],
            }
            for k in sorted(per_round)
        ],
    }


PERCENTILE_TENTHS = (("50", 500), ("99", 990), ("999", 999))


def nearest_rank(values: list[int], tenths: int) -> int:
    """The nearest-rank percentile (``tenths`` of a percent), in integer arithmetic."""
    if not values:
        return 0
    ranked = sorted(values)
    rank = max(1, -(-tenths * len(ranked) // 1000))
    return ranked[rank - 1]


def check(path: Path, table: pa.Table) -> None:
    want = truth(table)
    with CaptureReader(path) as reader:
        report = analyze(reader)
    assert report.samples == want["samples"]
    assert report.late == len(want["late"])
    assert report.lateness_ns.exact_counts() == Counter(want["late"])
    assert report.displacement.exact_counts() == Counter(want["displacement"])
    assert report.max_lateness_ns == max(want["late"], default=0)
    assert report.max_displacement == max(want["displacement"], default=0)
    assert report.round_distance == want["distance"]
    assert {k: v["count"] for k, v in report.cpu_pairs.items()} == dict(want["pairs"])
    assert {c: [v["samples"], v["late"]] for c, v in report.per_cpu.items()} == want["per_cpu"]
    assert report.rounds.rounds == want["rounds"]
    assert report.rounds.with_late == len(want["per_round"])
    assert report.rounds.max_late == max(want["per_round"].values(), default=0)
    assert list(report.late_rounds()) == want["late_rounds"]
    most = sorted(want["late_rounds"], key=lambda r: (-r["late"], r["round"]))[:TOP_ROUNDS]
    assert report.to_dict()["rounds"]["most_late"] == most
    for name in ("lateness_ns", "displacement"):
        values = want["late" if name == "lateness_ns" else "displacement"]
        for p, tenths in ((50.0, 500), (99.0, 990), (99.9, 999)):
            want_p = nearest_rank(values, tenths)
            assert getattr(report, name).percentile(p) == want_p, (name, p)
    report.close()
    data = report.to_dict()
    assert data["window"] == {"ns": report.max_lateness_ns, "events": report.max_displacement}
    if want["late"]:
        ranked = sorted(want["late"])
        p99 = ranked[int(np.ceil(0.99 * len(ranked))) - 1]
        assert data["lateness_us"]["p99"] == p99 / 1e3


def test_report_matches_definitions(tmp_path: Path) -> None:
    spec = Synthetic(seed=61, ncpus=3, events_per_cpu=300, lost_every=9, batch_rows=33)
    table = write_capture(tmp_path / "c.arrow", spec)
    check(tmp_path / "c.arrow", table)
    assert truth(table)["late"]  # the capture is really reordered


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    ncpus=st.integers(1, 4),
    events=st.integers(0, 80),
    skew=st.integers(0, 150_000),
    batch_rows=st.integers(1, 50),
    disorder=st.booleans(),
)
def test_report_matches_definitions_on_random_captures(
    seed: int, ncpus: int, events: int, skew: int, batch_rows: int, disorder: bool
) -> None:
    spec = Synthetic(
        seed=seed,
        ncpus=ncpus,
        events_per_cpu=events,
        drain_skew_ns=skew,
        batch_rows=batch_rows,
        disorder_cpu=0 if disorder else None,
        lost_every=6,
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = write_capture(Path(tmp) / "c.arrow", spec)
        check(Path(tmp) / "c.arrow", table)


def test_in_order_capture_reports_no_reordering(tmp_path: Path) -> None:
    table = build_table(Synthetic(seed=62, ncpus=2, transport="ringbuf"))
    order = np.lexsort((table.column("seq").to_numpy(), table.column("ts_ns").to_numpy()))
    table = table.take(pa.array(order))
    table = table.set_column(
        0, table.schema.field(0), pa.array(np.arange(table.num_rows, dtype=np.uint64))
    )
    write_table(tmp_path / "rb.arrow", table)
    with CaptureReader(tmp_path / "rb.arrow") as reader:
        report = analyze(reader)
    data = report.to_dict()
    assert (data["transport"], data["late"], data["window"]) == (
        "ringbuf",
        0,
        {"ns": 0, "events": 0},
    )
    assert data["samples"] == table.num_rows


def test_plot_is_a_png_with_the_points(tmp_path: Path) -> None:
    table = write_capture(tmp_path / "c.arrow", Synthetic(seed=63, events_per_cpu=400))
    with CaptureReader(tmp_path / "c.arrow") as reader:
        report = analyze(reader, keep_plot_points=True)
    assert report.plot is not None
    index, ts, cpu = report.plot.arrays()
    assert index.tolist() == list(range(800))  # small capture: every point kept
    assert ts.tolist() == table.column("ts_ns").to_pylist()
    assert cpu.tolist() == table.column("cpu").to_pylist()
    assert len(report.plot.head_ts) == 600
    with open(tmp_path / "p.png", "wb") as out:
        draw(report, out, title="c")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_points_thin_evenly_past_the_cap() -> None:
    points = PlotPoints()
    total = PLOT_POINTS * 3 + 123
    for start in range(0, total, 50_000):
        n = min(50_000, total - start)
        points.add(start, np.arange(start, start + n, dtype=np.uint64), np.zeros(n, np.uint16))
    index, ts, _ = points.arrays()
    assert points.stride == 4 and len(index) <= PLOT_POINTS
    assert index.tolist() == list(range(0, total, 4))
    assert ts.tolist() == index.tolist()


def test_percentiles_are_the_nearest_rank_values(tmp_path: Path) -> None:
    """p50 / p99 / p99.9 of lateness and displacement, checked number for number."""
    spec = Synthetic(seed=64, ncpus=4, events_per_cpu=800, drain_skew_ns=45_000, batch_rows=100)
    table = write_capture(tmp_path / "c.arrow", spec)
    want = truth(table)
    assert len(want["late"]) > 1000  # enough late events for p99.9 to differ from the max
    with CaptureReader(tmp_path / "c.arrow") as reader:
        report = analyze(reader)
    data = report.to_dict()
    late, displacement = want["late"], want["displacement"]
    assert data["lateness_us"] == {
        "max": max(late) / 1e3,
        **{f"p{p}": nearest_rank(late, tenths) / 1e3 for p, tenths in PERCENTILE_TENTHS},
    }
    assert data["displacement_events"] == {
        "max": max(displacement),
        **{f"p{p}": nearest_rank(displacement, tenths) for p, tenths in PERCENTILE_TENTHS},
    }
    assert data["percentiles"] == {"lateness": "exact", "displacement": "exact"}
    report.close()


def test_many_distinct_values_give_a_sketch_within_one_percent(tmp_path: Path) -> None:
    spec = Synthetic(seed=65, ncpus=3, events_per_cpu=1500, drain_skew_ns=60_000, batch_rows=90)
    table = write_capture(tmp_path / "c.arrow", spec)
    want = truth(table)
    with pytest.MonkeyPatch.context() as patch, CaptureReader(tmp_path / "c.arrow") as reader:
        patch.setattr(distribution, "EXACT_VALUES", 50)  # far fewer than the late events have
        report = analyze(reader)
    assert not report.lateness_ns.exact and report.lateness_ns.count == len(want["late"])
    assert report.max_lateness_ns == max(want["late"])  # the maximum stays exact
    for tenths in (10, 500, 900, 990, 999):
        exact = nearest_rank(want["late"], tenths)
        assert abs(report.lateness_ns.percentile(tenths / 10) - exact) <= 0.01 * exact
    assert "sketch" in report.to_dict()["percentiles"]["lateness"]
    report.close()


def test_one_very_late_event_costs_n_log_n_not_n_squared(tmp_path: Path) -> None:
    """The first event delivered last: displaced by every other one. Counting that by
    re-sorting the held window per chunk was quadratic; the work done now grows like
    n log n (4x the events: about 5x the work, not 16x)."""
    works = []
    for rows in (50_000, 200_000):
        path = tmp_path / f"late{rows}.arrow"
        late_first_event_capture(path, rows)
        with CaptureReader(path) as reader:
            report = analyze(reader)
        assert (report.late, report.max_displacement) == (1, rows - 1)
        assert report.displacement.percentile(50) == rows - 1
        works.append(report.work)
        report.close()
    assert works[1] <= 8 * works[0], works


def test_rounds_spill_to_a_temporary_file_and_read_back(tmp_path: Path) -> None:
    """Every round with a late event is kept on disk, a few records in memory at a time."""
    spec = Synthetic(seed=66, ncpus=3, events_per_cpu=600, lost_every=7, batch_rows=41)
    table = write_capture(tmp_path / "c.arrow", spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounds, "BUFFER_ROUNDS", 3)
        check(tmp_path / "c.arrow", table)
