"""The bench's verdict over a recording: every event accounted for on every CPU.

Recordings are written here with the writer (no kernel), as clean as a real
bench run's, then damaged one way at a time; ``check_recording`` (the public
function `ebcap bench` ends with) must fail each of them, and say why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ebcap.bpf.programs.bench import PAD_MAGIC, bench_event_dtype
from ebcap.capture.bench import BenchReport, Production, check_recording
from ebcap.capture.bench_source import BenchSource
from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs

SIZE = 24
PRODUCED = {0: 60, 1: 40}
LOST = {0: 10, 1: 5}
"""Per CPU: the last LOST[c] of PRODUCED[c] events are lost (reported in one lost row)."""


def bench_rows() -> list[tuple[int, int, int]]:
    """(kind, cpu, seq or lost count) of a clean recording, CPU 0 then CPU 1."""
    rows = []
    for cpu, produced in PRODUCED.items():
        received = produced - LOST[cpu]
        rows += [(0, cpu, seq) for seq in range(received)]
        rows.append((1, cpu, LOST[cpu]))
    return rows


def write(path: Path, rows: list[tuple[int, int, int]], damage: int | None = None) -> Path:
    """A bench recording of ``rows``; ``damage`` flips a pad bit of that row's payload."""
    source = BenchSource(SIZE)
    schema = make_schema(
        source.arrow_fields(), {fs.META_TRANSPORT: "ringbuf", fs.META_SOURCE: source.spec}
    )
    n = len(rows)
    kind = np.array([k for k, _, _ in rows], np.int8)
    cpu = np.array([c for _, c, _ in rows], np.uint16)
    events = np.zeros(n, bench_event_dtype(SIZE))
    events["ts"] = 1_000 + np.arange(n, dtype=np.uint64)
    events["cpu"] = cpu
    events["seq"] = [v if k == 0 else 0 for k, _, v in rows]
    events["pad"] = (events["ts"] ^ np.uint64(PAD_MAGIC))[:, None]
    payloads = [e.tobytes() if k == 0 else b"" for e, k in zip(events, kind, strict=True)]
    if damage is not None:
        payloads[damage] = payloads[damage][:-1] + bytes([payloads[damage][-1] ^ 0x10])
    with CaptureWriter(path, schema, flush_rows=32) as writer:  # several batches
        writer.write(
            {
                "seq": np.arange(n, dtype=np.uint64),
                "cpu": cpu,
                "ts_ns": events["ts"],
                "kind": kind,
                "lost": np.array([v if k == 1 else 0 for k, _, v in rows], np.uint64),
                "round": np.zeros(n, np.uint32),
                "data": payloads,
                "ev_seq": events["seq"],
            }
        )
    return path


def verdict(path: Path) -> BenchReport:
    invocations = [PRODUCED[0], PRODUCED[1]]
    production = Production([0, 1], invocations, [LOST[0], LOST[1]], wall_s=1.0)
    return check_recording(path, SIZE, production, transport="ringbuf", wakeup="ringbuf:adaptive")


def test_a_clean_recording_passes(tmp_path: Path) -> None:
    report = verdict(write(tmp_path / "clean.arrow", bench_rows()))
    assert report.ok and report.problems == ""
    assert (report.produced, report.received, report.lost_reported) == (100, 85, 15)
    assert report.received_per_cpu == {0: 50, 1: 35}
    assert report.lost_per_cpu == {0: 10, 1: 5} == report.missing_per_cpu
    assert report.unaccounted_per_cpu == {0: 0, 1: 0} and report.unaccounted == 0


def test_a_corrupted_event_fails(tmp_path: Path) -> None:
    report = verdict(write(tmp_path / "flipped.arrow", bench_rows(), damage=7))
    assert not report.ok
    assert report.corrupted == 1
    # A damaged event is a row, but not one of CPU 0's events: 49 of its 60 are.
    assert report.received == 85 and report.received_per_cpu == {0: 49, 1: 35}
    assert report.unaccounted_per_cpu == {0: 1, 1: 0}
    assert report.problems == "1 corrupted, CPU 0: +1 events neither received nor reported lost"


def test_events_out_of_order_fail(tmp_path: Path) -> None:
    rows = bench_rows()
    rows[3], rows[4] = rows[4], rows[3]
    report = verdict(write(tmp_path / "swapped.arrow", rows))
    assert report.corrupted == 0 and report.unaccounted == 0  # everything is there...
    assert report.out_of_order_per_cpu == {0: 1, 1: 0}
    assert not report.ok and report.problems == "1 out of order"  # ...but not in order


def test_a_loss_reported_on_the_wrong_cpu_fails(tmp_path: Path) -> None:
    """The totals balance, but CPU 0 lost 10 and the file says 5, CPU 1 the reverse."""
    rows = [(k, c, (15 - v) if k == 1 else v) for k, c, v in bench_rows()]
    report = verdict(write(tmp_path / "misattributed.arrow", rows))
    assert report.unaccounted == 0 and report.corrupted == 0
    assert report.unaccounted_per_cpu == {0: 5, 1: -5}
    assert not report.ok
    assert report.problems == (
        "CPU 0: +5 events neither received nor reported lost, "
        "CPU 1: -5 events neither received nor reported lost"
    )


def test_holes_are_reported_per_cpu(tmp_path: Path) -> None:
    rows = [r for r in bench_rows() if not (r[0] == 0 and r[1] == 1 and r[2] in (3, 4))]
    report = verdict(write(tmp_path / "holes.arrow", rows))
    assert report.holes_per_cpu == {0: 0, 1: 2}
    assert report.unaccounted_per_cpu == {0: 0, 1: 2} and not report.ok


def test_the_file_is_what_the_check_reads(tmp_path: Path) -> None:
    path = write(tmp_path / "x.arrow", bench_rows())
    assert verdict(path).file_bytes == path.stat().st_size > 0
