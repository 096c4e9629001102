"""The public Python API: exactly these names, and what ebcap.open gives back."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
from synthetic import Synthetic, write_capture

import ebcap
from ebcap.capture_file import Capture


def test_exports_are_exactly_these() -> None:
    assert sorted(ebcap.__all__) == ["EbcapError", "__version__", "open"]
    for name in ebcap.__all__:
        assert hasattr(ebcap, name)


def test_open_reads_and_walks_the_events(tmp_path: Path) -> None:
    table = write_capture(tmp_path / "c.arrow", Synthetic(lost_every=50))
    assert pc.sum(table["lost"]).as_py() > 0
    samples = table.filter(pc.equal(table["kind"].cast("string"), "sample"))
    with ebcap.open(tmp_path / "c.arrow") as capture:
        assert isinstance(capture, Capture)
        assert capture.to_table().equals(table)
        arrival = list(capture.events())
        in_time = list(capture.events(sorted=True))
        seen: list[tuple[int, bytes]] = []
        losses: list[tuple[int, int]] = []
        count = capture.replay(
            lambda cpu, data: seen.append((cpu, data)),
            lost_handler=lambda c, n: losses.append((c, n)),
        )
    assert [e.seq for e in arrival] == table["seq"].to_pylist()
    keys = [(e.ts_ns, e.cpu, e.seq) for e in in_time]
    assert keys == sorted(keys) and len(keys) == table.num_rows
    assert count == samples.num_rows
    assert seen == list(zip(samples["cpu"].to_pylist(), samples["data"].to_pylist(), strict=True))
    assert sum(n for _, n in losses) == pc.sum(table["lost"]).as_py()


def test_what_the_ordering_met_is_there_to_see(tmp_path: Path) -> None:
    """A CPU whose own events are out of order: known before the first sorted event,
    and after an arrival-order walk; through events() and replay() alike."""
    write_capture(tmp_path / "d.arrow", Synthetic(seed=3, disorder_cpu=1, disorder_swaps=2))
    with ebcap.open(tmp_path / "d.arrow") as capture:
        stream = capture.events(sorted=True)
        assert stream.report is capture.order_report
        next(stream)
        assert set(stream.report.cpu_disorder) == {1}
        assert stream.report.notes()[0].startswith("CPU 1's own stream is out of timestamp order")
        stream.close()
        arrival = capture.events()
        assert arrival.report.cpu_disorder == {}  # not known until the walk is done
        list(arrival)
        assert arrival.report.cpu_disorder == stream.report.cpu_disorder
        capture.replay(lambda cpu, data: None, sorted=True)
        assert capture.order_report is not None
        assert capture.order_report.cpu_disorder == stream.report.cpu_disorder
        assert capture.order_report.rows == capture.num_rows
