"""Text and JSON lines of captures whose rows repeat, as a busy syscall trace does.

Batches this large take the fast paths (bodies formatted once per distinct
row, per-width blocks for markers, fixed-width columns); every line is
compared whole with one built by plain Python from the rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from synthetic import (
    Collect,
    Synthetic,
    arrival_order,
    lateness_by_loop,
    metadata,
    moved_ahead,
    write_table,
)

from ebcap.bpf.cpus import online_cpus
from ebcap.cli import run
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay import scan
from ebcap.replay.player import ReplayOptions, write_replay

CALLS = (("getppid", 110), ("read", 0), ("futex", 202))
ARGS = (
    (0x7F0C6960A829, 0, 2**64 - 1, 16, 0, 1),
    (3, 0x7FFD3C1A, 4096, 0, 0, 0),
    (1, 2, 3, 4, 5, 6),
)
THREADS = ((4242, 4242, "sysload"), (4242, 4243, "sysload"), (77, 77, "bad\tname"), (9, 9, None))


def repetitive_capture(path: Path, *, seed: int, wide: bool = False) -> pa.Table:
    """A syscalls capture of a few threads in loops: few distinct bodies, many rows."""
    spec = Synthetic(
        seed=seed, ncpus=3, events_per_cpu=3000, lost_every=25, period_ns=400_000, batch_rows=5000
    )
    columns = arrival_order(spec)
    n = len(columns["seq"])
    rng = np.random.default_rng(seed)
    if wide:  # hours of capture, CPU numbers past 999, seq crossing powers of ten
        columns["ts_ns"] = columns["ts_ns"] * np.uint64(9_000_000)
        columns["cpu"] = columns["cpu"] * np.uint16(700)
        columns["seq"] = columns["seq"] * np.uint64(37) + np.uint64(99_990)
    call = rng.integers(0, len(CALLS), size=n)
    thread = rng.integers(0, len(THREADS), size=n)
    lost = columns["kind"] == 1
    args = np.array(ARGS, dtype=np.uint64)[call]
    kind = pa.DictionaryArray.from_arrays(
        pa.array(columns["kind"], pa.int8()), pa.array(list(fs.KINDS), pa.string())
    )
    arrays = {
        "seq": pa.array(columns["seq"]),
        "cpu": pa.array(columns["cpu"]),
        "ts_ns": pa.array(columns["ts_ns"]),
        "kind": kind,
        "lost": pa.array(columns["lost"]),
        "round": pa.array(columns["round"]),
        "data": pa.array([b"\x01\x02"] * n, pa.binary()),
        "pid": pa.array([THREADS[t][0] for t in thread], pa.uint32(), mask=lost),
        "tid": pa.array([THREADS[t][1] for t in thread], pa.uint32(), mask=lost),
        "comm": pa.array([THREADS[t][2] for t in thread], pa.string(), mask=lost),
        "syscall_nr": pa.array([CALLS[c][1] for c in call], pa.uint32(), mask=lost),
        "syscall": pa.array([CALLS[c][0] for c in call], pa.string(), mask=lost),
        **{f"arg{i}": pa.array(args[:, i], mask=lost | (call == 2) & (i == 5)) for i in range(6)},
    }
    extra = [
        pa.field(name, array.type) for name, array in arrays.items() if name not in fs.CORE_COLUMNS
    ]
    schema = fs.make_schema(extra, metadata=metadata(spec))
    table = pa.Table.from_arrays(list(arrays.values()), schema=schema)
    write_table(path, table, spec.batch_rows)
    return table


def seconds(delta: int) -> str:
    text = f"{'-' if delta < 0 else ''}{abs(delta) // 10**9}.{abs(delta) % 10**9:09d}"
    return text.rjust(14)


def us(late: int) -> str:
    tenths = (late + 50) // 100
    return f"{tenths // 10}.{tenths % 10}"


def expected_line(row: dict, origin: int, late: int, order: str, moved: int = 0) -> str:
    head = f"{seconds(row['ts_ns'] - origin)} [{row['cpu']:03d}] #{row['seq']} "
    if row["kind"] == "lost":
        body = f"*** CPU {row['cpu']} lost {row['lost']} events ***"
    else:
        args = ", ".join(hex(row[f"arg{i}"] or 0) for i in range(6))
        comm = "-" if row["comm"] is None else json.dumps(row["comm"])
        body = f"{row['syscall']}({args}) pid={row['pid']} tid={row['tid']} comm={comm}"
    if order == "arrival":
        return f"{head}{body}  << {us(late)} us late" if late else head + body
    if not moved:
        return head + body
    events = "event" if moved == 1 else "events"
    how_late = f", {us(late)} us late" if late else ""
    return f"{head}{body}  [moved ahead of {moved} {events}{how_late}]"


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("order", ["arrival", "time", "time, spilled"])
def test_every_text_line_matches_its_row(tmp_path: Path, order: str, wide: bool) -> None:
    path = tmp_path / "c.arrow"
    table = repetitive_capture(path, seed=41, wide=wide)
    kind = order.split(",")[0]
    rows, late, moved = ordered_rows(table, kind)
    origin = rows[0]["ts_ns"]
    expected = [
        expected_line(r, origin, x, kind, m) for r, x, m in zip(rows, late, moved, strict=True)
    ]
    sink = Collect()
    spill = {"max_window_rows": 30, "spill_dir": tmp_path} if "spilled" in order else {}
    with pytest.MonkeyPatch.context() as patch, CaptureReader(path) as reader:
        if spill:
            patch.setattr(scan, "SLICE_ROWS", 250)  # several slices: the window can spill
        summary = write_replay(reader, sink, ReplayOptions(order=kind, **spill))
    assert bool(summary.order.spilled_runs) == bool(spill)
    got = sink.data.decode().split("\n")
    assert got[-1] == "" and got[:-1] == expected
    assert sum(1 for x in late if x) > 1000  # the markers really are exercised


@pytest.mark.parametrize("order", ["arrival", "time"])
def test_every_json_line_matches_its_row(tmp_path: Path, order: str) -> None:
    path = tmp_path / "c.arrow"
    table = repetitive_capture(path, seed=42)
    expected = table.to_pylist()
    for row in expected:
        row["data"] = row["data"].hex()
    if order == "time":
        expected.sort(key=lambda r: (r["ts_ns"], r["cpu"], r["seq"]))
    sink = Collect()
    with CaptureReader(path) as reader:
        write_replay(reader, sink, ReplayOptions(order=order, fmt="jsonl"))
    assert [json.loads(line) for line in sink.lines()] == expected
    assert [list(json.loads(line)) for line in sink.lines()[:1]] == [table.schema.names]


COMM = "ebcaplines"
EVENTS = 200_000
WORKER = """
import os, sys
open("/proc/self/comm", "w").write(sys.argv[1])
os.sched_setaffinity(0, {int(sys.argv[2])})
while True:
    os.getppid()
"""


def ordered_rows(table: pa.Table, order: str) -> tuple[list[dict], list[int], list[int]]:
    """Rows in replay order, with each one's lateness and how far the sort moved it."""
    rows = table.to_pylist()
    late = lateness_by_loop([r["ts_ns"] for r in rows], [r["kind"] == "sample" for r in rows])
    keys = [(r["ts_ns"], r["cpu"], r["seq"]) for r in rows]
    moved = moved_ahead(keys) if order == "time" else [0] * len(rows)
    if order == "time":
        ranked = sorted(range(len(rows)), key=keys.__getitem__)
        rows, late = [rows[i] for i in ranked], [late[i] for i in ranked]
        moved = [moved[i] for i in ranked]
    return rows, late, moved


@pytest.mark.privileged
def test_a_real_capture_replays_line_for_line(tmp_path: Path) -> None:
    """Two threads in getppid loops on two CPUs, recorded through the perf buffer."""
    path = tmp_path / "real.arrow"
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, COMM, str(cpu)])
        for cpu in online_cpus()[:2]
    ]
    try:
        time.sleep(0.5)  # the workers name themselves before the first syscall we count
        # 200,000 calls keep both CPUs busy at once for a few hundred milliseconds: enough
        # drain rounds for the perf buffer to reorder even when other load slows one worker
        # (80,000 once came out with no late event at all on a busy machine).
        assert run(["record", "-o", str(path), "--comm", COMM, "--count", str(EVENTS)]) == 0
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    with CaptureReader(path) as reader:
        table = reader.to_table()
    assert table.filter(pa.compute.equal(table["kind"], "sample")).num_rows == EVENTS
    for order, flags in (("arrival", []), ("time", ["--sorted"])):
        out = tmp_path / f"{order}.txt"
        assert run(["replay", *flags, str(path), "-o", str(out)]) == 0
        rows, late, moved = ordered_rows(table, order)
        origin = rows[0]["ts_ns"]
        expected = [
            expected_line(r, origin, x, order, m) for r, x, m in zip(rows, late, moved, strict=True)
        ]
        assert out.read_text().split("\n") == [*expected, ""]
        assert sum(1 for x in late if x) > 100  # the perf buffer really reordered
        out = tmp_path / f"{order}.jsonl"
        assert run(["replay", *flags, str(path), "-o", str(out)]) == 0
        for row in rows:
            row["data"] = (
                bytes(row["data"]).hex() if isinstance(row["data"], bytes) else row["data"]
            )
        assert [json.loads(line) for line in out.read_text().splitlines()] == rows
