"""Replay filters, limits and pacing, checked against the generated rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from synthetic import Collect, Synthetic, parse, write_capture

from ebcap.errors import UsageError
from ebcap.format.reader import CaptureReader
from ebcap.replay import player
from ebcap.replay.player import Pacer, ReplayOptions, write_replay


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "c.arrow"
    spec = Synthetic(seed=31, ncpus=4, events_per_cpu=80, lost_every=8, batch_rows=50)
    return path, write_capture(path, spec)


def run(path: Path, pacer: Pacer | None = None, **options: object) -> tuple[list[dict], object]:
    sink = Collect()
    with CaptureReader(path) as reader:
        summary = write_replay(reader, sink, ReplayOptions(**options), pacer=pacer)  # type: ignore[arg-type]
    return [parse(line) for line in sink.lines()], summary


def test_cpu_and_kind_filters_select_exactly_those_rows(capture) -> None:
    path, table = capture
    rows = table.to_pylist()
    lines, summary = run(path, cpus={1, 3}, kind="sample", order="time")
    want = sorted(
        (r["ts_ns"], r["cpu"], r["seq"])
        for r in rows
        if r["cpu"] in (1, 3) and r["kind"] == "sample"
    )
    assert [int(line["seq"]) for line in lines] == [seq for _, _, seq in want]
    assert {int(line["cpu"]) for line in lines} == {1, 3}
    assert (summary.rows, summary.samples, summary.lost_rows) == (len(want), len(want), 0)


def test_lost_rows_are_never_dropped(capture) -> None:
    path, table = capture
    lost = [r for r in table.to_pylist() if r["kind"] == "lost"]
    assert lost
    lines, summary = run(path, kind="lost")
    assert [line["body"] for line in lines] == [
        f"*** CPU {r['cpu']} lost {r['lost']} events ***" for r in lost
    ]
    assert summary.lost_rows == len(lost)


@pytest.mark.parametrize("order", ["arrival", "time"])
@pytest.mark.parametrize("limit", [0, 1, 49, 50, 51, 10_000])
def test_limit_stops_after_n_rows(capture, order: str, limit: int) -> None:
    path, _ = capture
    full, _ = run(path, order=order)
    lines, summary = run(path, order=order, limit=limit, cpus={0, 2})
    selected = [line for line in full if int(line["cpu"]) in (0, 2)]
    assert lines == selected[:limit]
    assert summary.rows == min(limit, len(selected))


class FakeTime:
    """A clock that only moves when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("speed", [1.0, 4.0, 0.5])
def test_speed_keeps_the_original_gaps_scaled(capture, speed: float) -> None:
    path, table = capture
    fake = FakeTime()
    pacer = Pacer(speed, clock=fake.clock, sleep=fake.sleep)
    lines, _ = run(path, pacer=pacer, order="time", limit=60)
    stamps = sorted(table.column("ts_ns").to_pylist())[:60]
    # Time asleep is the span of the replayed events divided by the speed.
    assert sum(fake.sleeps) == pytest.approx((stamps[-1] - stamps[0]) / 1e9 / speed, rel=1e-6)
    assert len(lines) == 60


def test_pacer_releases_each_row_when_due() -> None:
    fake = FakeTime()
    pacer = Pacer(2.0, clock=fake.clock, sleep=fake.sleep)
    ts = np.array([0, 0, 1_000_000_000, 500_000_000, 3_000_000_000], dtype=np.uint64)
    released = []
    for start, end in pacer.groups(ts):
        released.append((start, end, fake.now - 100.0))
    # Late rows (ts going back) are due at once after the row before them.
    assert released == [(0, 2, 0.0), (2, 4, 0.5), (4, 5, 1.5)]


class Enough(Exception):
    """Ends a wait that would otherwise go on for ages."""


def test_a_tiny_speed_waits_in_steps_rather_than_overflowing_sleep() -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise Enough

    pacer = Pacer(1e-300, clock=lambda: 100.0, sleep=sleep)
    groups = pacer.groups(np.array([0, 1, 2], dtype=np.uint64))
    assert next(groups) == (0, 1)  # the first row is due at once
    with pytest.raises(Enough):
        next(groups)
    assert waits == [player.MAX_WAIT_S] * 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fmt": "xml"}, "--format"),
        ({"kind": "both"}, "--kind"),
        ({"limit": -1}, "--limit"),
        ({"speed": 0.0}, "--speed"),
        ({"speed": float("nan")}, "--speed"),
        ({"fmt": "csv", "wall": True}, "--wall"),
    ],
)
def test_bad_options_are_usage_errors(capture, options: dict, message: str) -> None:
    path, _ = capture
    with pytest.raises(UsageError, match=message):
        run(path, **options)
