"""The time sort's peak memory does not grow with the file, even when it must spill it all.

One event delivered last but stamped first holds every other row back until
it arrives: nothing can go out before it, so the sort spills nearly the
whole file and merges it back. Its peak resident memory, measured in a
fresh process from a reset high-water mark (``/proc/self/clear_refs``),
must stay the same for a file four times as long.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from peak_memory import PRELUDE
from synthetic import late_first_event_capture

MEASURE = (
    PRELUDE
    + r"""
import sys
import numpy as np
from ebcap.format.reader import CaptureReader
from ebcap.replay.memory import use_streaming_pool
from ebcap.replay.order import OrderReport, time_order

path, window, spill = sys.argv[1], int(sys.argv[2]), sys.argv[3]
use_streaming_pool()
with CaptureReader(path) as reader:
    before = reset_peak()
    report = OrderReport()
    rows, last = 0, -1
    for batch in time_order(reader, max_window_rows=window, spill_dir=spill, report=report):
        ts = batch.rows.column("ts_ns").to_numpy()
        assert ts[0] >= last and bool(np.all(ts[1:] >= ts[:-1]))
        last = int(ts[-1])
        rows += batch.rows.num_rows
    print(grown_kib(before), rows, report.spilled_runs, report.run_merges)
"""
)


def peak_growth_kib(path: Path, spill: Path) -> tuple[int, int, int, int]:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), "20000", str(spill)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    growth, rows, runs, merges = (int(x) for x in result.stdout.split())
    return growth, rows, runs, merges


def test_peak_memory_of_a_spilling_sort_does_not_grow_with_the_file(tmp_path: Path) -> None:
    small, large = 250_000, 1_000_000
    late_first_event_capture(tmp_path / "small.arrow", small)
    late_first_event_capture(tmp_path / "large.arrow", large)
    spill = tmp_path / "spill"
    spill.mkdir()
    small_kib, small_rows, small_runs, _ = peak_growth_kib(tmp_path / "small.arrow", spill)
    large_kib, large_rows, large_runs, merges = peak_growth_kib(tmp_path / "large.arrow", spill)
    assert (small_rows, large_rows) == (small, large)
    assert small_runs >= 2 and large_runs >= 4 * small_runs - 4  # nearly all of it spilled
    assert merges >= 1  # and the runs were merged while spilling, not all held open
    # Holding or mapping the spilled rows would cost about 100 bytes a row: 4x the file,
    # 4x the growth. Bounded buffers keep the peak where the window puts it.
    assert large_kib <= 1.5 * small_kib, (small_kib, large_kib)
    assert list(spill.iterdir()) == []  # every run removed
