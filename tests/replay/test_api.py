"""The Python replay API: Event objects and libbpf-style callbacks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from synthetic import Synthetic, write_capture

from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.api import Event, iter_events, replay_callbacks
from ebcap.replay.order import OrderReport


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, pa.Table]:
    path = tmp_path / "c.arrow"
    return path, write_capture(path, Synthetic(seed=41, syscalls=True, lost_every=7))


def as_event(row: dict) -> Event:
    core = {name: row[name] for name in fs.CORE_COLUMNS}
    fields = {k: v for k, v in row.items() if k not in fs.CORE_COLUMNS}
    return Event(**core, fields=fields)


def test_iter_events_in_arrival_order_from_a_path(capture) -> None:
    path, table = capture
    events = list(iter_events(path))
    assert events == [as_event(row) for row in table.to_pylist()]
    assert [e.is_lost for e in events] == [k == "lost" for k in table.column("kind").to_pylist()]


def test_iter_events_sorted_from_an_open_reader(capture) -> None:
    path, table = capture
    with CaptureReader(path) as reader:
        events = list(iter_events(reader, sorted=True))
        assert reader.num_rows == table.num_rows  # still open: the caller owns it
    expected = sorted(table.to_pylist(), key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))
    assert events == [as_event(row) for row in expected]


@pytest.mark.parametrize("in_order", [False, True])
def test_callbacks_see_samples_and_losses_like_libbpf(capture, in_order: bool) -> None:
    path, table = capture
    rows = table.to_pylist()
    if in_order:
        rows.sort(key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))
    calls: list[tuple] = []
    count = replay_callbacks(
        path,
        lambda cpu, data: calls.append(("sample", cpu, data)),
        sorted=in_order,
        lost_handler=lambda cpu, n: calls.append(("lost", cpu, n)),
    )
    expected = [
        ("sample", r["cpu"], r["data"]) if r["kind"] == "sample" else ("lost", r["cpu"], r["lost"])
        for r in rows
    ]
    assert calls == expected
    assert count == sum(1 for r in rows if r["kind"] == "sample")
    assert any(c[0] == "lost" for c in calls)


def test_callbacks_without_lost_handler_skip_losses(capture) -> None:
    path, table = capture
    seen: list[int] = []
    count = replay_callbacks(path, lambda cpu, data: seen.append(cpu))
    samples = [r["cpu"] for r in table.to_pylist() if r["kind"] == "sample"]
    assert seen == samples and count == len(samples)


def test_package_exports_exactly_the_public_api() -> None:
    import ebcap.replay

    assert ebcap.replay.__all__ == sorted(ebcap.replay.__all__)
    for name in ebcap.replay.__all__:
        assert getattr(ebcap.replay, name).__name__ == name


def test_the_ordering_report_comes_with_the_events(tmp_path: Path) -> None:
    path = tmp_path / "d.arrow"
    write_capture(path, Synthetic(seed=43, disorder_cpu=0, disorder_swaps=3))
    events = iter_events(path, sorted=True)
    first = next(events)
    assert events.report.scanned and set(events.report.cpu_disorder) == {0}
    walked = [first, *events]
    assert walked == sorted(walked, key=lambda e: (e.ts_ns, e.cpu, e.seq))
    report = OrderReport()
    replay_callbacks(path, lambda cpu, data: None, report=report)
    assert report.cpu_disorder == events.report.cpu_disorder and not report.sorted
