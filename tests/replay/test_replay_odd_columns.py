"""Source columns of every type through both orders: JSON lines give back each value."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from synthetic import Collect, Synthetic, build_table, write_table

from ebcap.format.reader import CaptureReader
from ebcap.replay.player import ReplayOptions, write_replay


def odd_capture(path: Path) -> pa.Table:
    table = build_table(Synthetic(seed=61, events_per_cpu=700, syscalls=True, lost_every=9))
    n = table.num_rows
    rng = np.random.default_rng(61)
    extra = {
        "note": pa.array([["a\nb", "tab\there", None, 'q"uote\\', "é"][i % 5] for i in range(n)]),
        "neg": pa.array(rng.integers(-(10**12), 10**12, n), pa.int64()),
        "flag": pa.array([bool(i % 3) if i % 7 else None for i in range(n)]),
        "ratio": pa.array([i / 7 if i % 5 else math.nan for i in range(n)]),
        "blob": pa.array([bytes([i % 256]) * (i % 5) if i % 4 else None for i in range(n)]),
        "lab": pa.array([["x", "y", None][i % 3] for i in range(n)]).dictionary_encode(),
        "big": pa.array([2**64 - 1 - i if i % 2 else i for i in range(n)], pa.uint64()),
    }
    for name, values in extra.items():
        table = table.append_column(name, values)
    write_table(path, table, batch_rows=97)
    return table


def jsonable(row: dict) -> dict:
    """A row as JSON lines carry it: bytes as hex (a null blob as null), NaN as null."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


@pytest.mark.parametrize("order", ["arrival", "time"])
def test_json_lines_give_back_every_value(tmp_path: Path, order: str) -> None:
    path = tmp_path / "odd.arrow"
    table = odd_capture(path)
    expected = [jsonable(row) for row in table.to_pylist()]
    if order == "time":
        expected.sort(key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(order=order, fmt="jsonl", max_window_rows=300))
    assert [json.loads(line) for line in sink.lines()] == expected
