"""Synthetic capture files with known reordering, for tests that need no kernel.

Each CPU produces a timestamp-monotone stream. A simulated perf reader drains
the CPUs one after the other in rounds (CPU 0 at ``round * period``, CPU 1 a
little later, ...), so an event written on CPU 0 while CPU 1 is being drained
arrives in the next round, after later events of CPU 1: the same reordering a
real perf event array shows. The arrival order is therefore known exactly, and
tests compute their expectations from it with plain loops.

Files are written with pyarrow directly (not the ebcap writer), so tests can
also build files the writer would never produce (a CPU whose own stream is out
of order, odd batch sizes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.format import schema as fs

REALTIME_OFFSET_NS = 1_764_000_000_000_000_000
"""CLOCK_REALTIME - CLOCK_MONOTONIC of every synthetic capture (late 2025)."""

SYSCALL_NAMES = ("read", "write", "openat", "close", "mmap", "futex")
COMMS = ("bash", "python3", "sshd", "kworker/0:1")


@dataclass
class Synthetic:
    """How to generate one capture; every field has a small default."""

    seed: int = 0
    ncpus: int = 2
    events_per_cpu: int = 200
    mean_gap_ns: int = 5_000
    period_ns: int = 100_000
    """Time between drain rounds."""
    drain_skew_ns: int = 30_000
    """How long after CPU c the reader drains CPU c+1 within a round."""
    lost_every: int = 0
    """Insert a lost row about every N events (0: none)."""
    disorder_cpu: int | None = None
    """Swap some neighbouring events of this CPU so its own stream is out of order."""
    disorder_swaps: int = 3
    syscalls: bool = False
    """Add the syscalls source columns (pid, comm, syscall, arg0..arg5; null on lost rows)."""
    batch_rows: int = 64
    transport: str = "perf"
    start_ns: int = 1_000_000_000
    extra_meta: dict[str, str] = field(default_factory=dict)


def arrival_order(spec: Synthetic) -> dict[str, np.ndarray]:
    """Columns seq, cpu, ts_ns, kind (0 sample / 1 lost), lost, round in arrival order."""
    rng = np.random.default_rng(spec.seed)
    streams = []
    for _ in range(spec.ncpus):
        gaps = rng.integers(1, 2 * spec.mean_gap_ns, size=spec.events_per_cpu)
        ts = spec.start_ns + np.cumsum(gaps)
        streams.append(ts.astype(np.uint64))
    rows: list[tuple[int, int, int, int, int]] = []  # cpu, ts, kind, lost, round
    position = [0] * spec.ncpus
    last_drain = [0] * spec.ncpus
    round_no = 0
    while any(position[c] < len(streams[c]) for c in range(spec.ncpus)):
        for cpu in range(spec.ncpus):
            drain_at = spec.start_ns + round_no * spec.period_ns + cpu * spec.drain_skew_ns
            ts = streams[cpu]
            end = int(np.searchsorted(ts, drain_at, side="right"))
            for i in range(position[cpu], end):
                rows.append((cpu, int(ts[i]), 0, 0, round_no))
                if spec.lost_every and rng.integers(0, spec.lost_every) == 0:
                    count = int(rng.integers(1, 50))
                    rows.append((cpu, int(ts[i]) + 1, 1, count, round_no))
            position[cpu] = end
            last_drain[cpu] = drain_at
        round_no += 1
    cpu_col = np.array([r[0] for r in rows], dtype=np.uint16)
    ts_col = np.array([r[1] for r in rows], dtype=np.uint64)
    if spec.disorder_cpu is not None:
        _disorder(ts_col, cpu_col, spec.disorder_cpu, spec.disorder_swaps, rng)
    return {
        "seq": np.arange(len(rows), dtype=np.uint64),
        "cpu": cpu_col,
        "ts_ns": ts_col,
        "kind": np.array([r[2] for r in rows], dtype=np.int8),
        "lost": np.array([r[3] for r in rows], dtype=np.uint64),
        "round": np.array([r[4] for r in rows], dtype=np.uint32),
    }


def _disorder(
    ts: np.ndarray, cpu: np.ndarray, which: int, swaps: int, rng: np.random.Generator
) -> None:
    """Swap timestamps of a few pairs of this CPU's events (far apart) in place."""
    rows = np.flatnonzero(cpu == which)
    if len(rows) < 4:
        return
    for _ in range(swaps):
        a, b = sorted(rng.choice(len(rows), size=2, replace=False))
        ts[rows[a]], ts[rows[b]] = ts[rows[b]], ts[rows[a]]


def payloads(columns: dict[str, np.ndarray], rng: np.random.Generator) -> list[bytes]:
    """Each payload starts with u64 ts_ns and u32 cpu, then 0..40 random bytes."""
    out = []
    for ts, cpu, kind in zip(columns["ts_ns"], columns["cpu"], columns["kind"], strict=True):
        if kind:
            out.append(b"")
            continue
        tail = rng.integers(0, 256, size=int(rng.integers(0, 41)), dtype=np.uint8).tobytes()
        out.append(int(ts).to_bytes(8, "little") + int(cpu).to_bytes(4, "little") + tail)
    return out


def syscall_columns(n: int, rng: np.random.Generator) -> dict[str, pa.Array]:
    nr = rng.integers(0, len(SYSCALL_NAMES), size=n)
    pid = rng.integers(1, 5000, size=n).astype(np.uint32)
    return {
        "pid": pa.array(pid),
        "tid": pa.array(pid),
        "comm": pa.array([COMMS[i % len(COMMS)] for i in pid], pa.string()),
        "syscall_nr": pa.array(nr.astype(np.uint32)),
        "syscall": pa.array([SYSCALL_NAMES[i] for i in nr], pa.string()),
        **{
            f"arg{i}": pa.array(rng.integers(0, 1 << 63, size=n, dtype=np.uint64)) for i in range(6)
        },
    }


def build_table(spec: Synthetic) -> pa.Table:
    """The whole capture as a table in arrival order, with the file's schema."""
    rng = np.random.default_rng(spec.seed + 1_000_003)
    columns = arrival_order(spec)
    n = len(columns["seq"])
    kind = pa.DictionaryArray.from_arrays(
        pa.array(columns["kind"], pa.int8()), pa.array(list(fs.KINDS), pa.string())
    )
    arrays: dict[str, pa.Array] = {
        "seq": pa.array(columns["seq"]),
        "cpu": pa.array(columns["cpu"]),
        "ts_ns": pa.array(columns["ts_ns"]),
        "kind": kind,
        "lost": pa.array(columns["lost"]),
        "round": pa.array(columns["round"]),
        "data": pa.array(payloads(columns, rng), pa.binary()),
    }
    extra: list[pa.Field] = []
    if spec.syscalls:
        lost_rows = pa.array(columns["kind"] == 1)
        for name, values in syscall_columns(n, rng).items():
            values = pc.if_else(lost_rows, pa.scalar(None, values.type), values)
            arrays[name] = values
            extra.append(pa.field(name, values.type))
    schema = fs.make_schema(extra, metadata=metadata(spec))
    return pa.Table.from_arrays(list(arrays.values()), schema=schema)


def metadata(spec: Synthetic) -> dict[str, str]:
    values = {
        fs.META_TRANSPORT: spec.transport,
        fs.META_SOURCE: "syscalls" if spec.syscalls else "synthetic",
        fs.META_NCPUS: spec.ncpus,
        fs.META_CLOCK: "CLOCK_MONOTONIC",
        fs.META_REALTIME_OFFSET: REALTIME_OFFSET_NS,
        fs.META_START_TIME: "2025-11-24T16:00:01.000000Z",
        fs.META_CPUS: list(range(spec.ncpus)),
    }
    return {**fs.encode_metadata(values), **spec.extra_meta}


def write_table(path: Path, table: pa.Table, batch_rows: int = 64) -> Path:
    """Write ``table`` as an ebcap file (zstd Arrow IPC) in batches of ``batch_rows``."""
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with (
        pa.OSFile(str(path), "wb") as sink,
        pa.ipc.new_file(sink, table.schema, options=options) as writer,
    ):
        for batch in table.to_batches(max_chunksize=max(1, batch_rows)):
            writer.write_batch(batch)
    return path


def write_capture(path: Path, spec: Synthetic | None = None) -> pa.Table:
    """Generate a capture into ``path``; returns the table written (the ground truth)."""
    spec = spec or Synthetic()
    table = build_table(spec)
    write_table(path, table, spec.batch_rows)
    return table


def late_first_event_capture(path: Path, rows: int) -> None:
    """Two CPUs in timestamp order, except the first event, delivered after all others."""
    rng = np.random.default_rng(rows)
    ts = 1_000_000_000 + np.cumsum(rng.integers(1, 10_000, rows)).astype(np.uint64)
    cpu = (np.arange(rows) % 2).astype(np.uint16)
    order = np.concatenate((np.arange(1, rows), [0]))
    kind = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(rows, np.int8)), pa.array(list(fs.KINDS), pa.string())
    )
    comm = np.array(["bash", "python3", "kworker/0:1", "sshd"])[rng.integers(0, 4, rows)]
    schema = fs.make_schema([pa.field("comm", pa.string())], metadata=metadata(Synthetic()))
    columns = [
        pa.array(np.arange(rows, dtype=np.uint64)),
        pa.array(cpu[order]),
        pa.array(ts[order]),
        kind,
        pa.array(np.zeros(rows, np.uint64)),
        pa.array((np.arange(rows) // 100).astype(np.uint32)),
        pa.array([b"0123456789abcdef"] * rows, pa.binary()),
        pa.array(comm, pa.string()),
    ]
    write_table(path, pa.Table.from_arrays(columns, schema=schema), batch_rows=65_536)


def lateness_by_loop(ts: list[int], is_sample: list[bool]) -> list[int]:
    """Ground truth: lateness of each row (0 if not late) against the samples before it, by a
    plain loop; a lost row can be late but does not raise the maximum."""
    out = []
    high: int | None = None
    for t, sample in zip(ts, is_sample, strict=True):
        out.append(high - t if high is not None and t < high else 0)
        if sample:
            high = t if high is None else max(high, t)
    return out


def moved_ahead(keys: list[tuple[int, int, int]]) -> list[int]:
    """Ground truth for the sorted replay's marker: for rows given in arrival order by their
    sort key (ts_ns, cpu, seq), how many rows delivered before each sort after it; listed in
    arrival order. Plain loops over a Fenwick tree of arrival positions."""
    n = len(keys)
    tree = [0] * (n + 1)
    out = [0] * n
    for position in sorted(range(n), key=keys.__getitem__):
        done, i = 0, position  # rows delivered before this one that are already out
        while i > 0:
            done += tree[i]
            i -= i & -i
        out[position] = position - done
        i = position + 1
        while i <= n:
            tree[i] += 1
            i += i & -i
    return out


# Reading replay output back, for tests of the text format.


class Collect:
    """A replay sink that keeps everything written (and counts flushes)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.flushes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += bytes(data)

    def flush(self) -> None:
        self.flushes += 1

    def lines(self) -> list[str]:
        return self.data.decode().splitlines()


LINE = re.compile(
    r"^\s*(?P<time>-?\d+\.\d{9})(?: (?P<wall>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}))?"
    r" \[(?P<cpu>\d{3,})\] #(?P<seq>\d+) (?P<body>.*?)"
    r"(?:  << (?P<late>\d+\.\d) us late"
    r"|  \[moved ahead of (?P<moved>\d+) events?(?:, (?P<mlate>\d+\.\d) us late)?\])?$"
)


def parse(line: str) -> dict[str, str | None]:
    match = LINE.match(line)
    if match is None:
        raise AssertionError(f"line does not parse: {line!r}")
    return match.groupdict()


def us(late_ns: int) -> str:
    """Lateness as the text output rounds it (one decimal, half up)."""
    tenths = (late_ns + 50) // 100
    return f"{tenths // 10}.{tenths % 10}"


def seconds(delta_ns: int) -> str:
    sign = "-" if delta_ns < 0 else ""
    value = abs(delta_ns)
    return f"{sign}{value // 1_000_000_000}.{value % 1_000_000_000:09d}"


# Rows as the capture writer takes them, for the writer's own tests.

WRITER_SCHEMA = fs.make_schema(
    [pa.field("pid", pa.uint32())], {fs.META_TRANSPORT: "ringbuf", fs.META_SOURCE: "test"}
)


def writer_rows(start: int, n: int, *, cpus: int = 4, payload: int = 24) -> dict[str, object]:
    """n rows with seq start..start+n-1; every 7th row a lost record of (seq % 5 + 1) events."""
    seq = np.arange(start, start + n, dtype=np.uint64)
    lost = seq % 7 == 0
    return {
        "seq": seq,
        "cpu": (seq % cpus).astype(np.uint16),
        "ts_ns": 1_000_000 + seq * 1000,
        "kind": lost.astype(np.int8),
        "lost": np.where(lost, seq % 5 + 1, 0),
        "round": (seq // 10).astype(np.uint32),
        "data": [bytes([int(s) % 256]) * payload for s in seq],
        "pid": (seq + 1000).astype(np.uint32),
    }


def batches_on_disk(path: Path) -> list[int]:
    """Row counts of the record batches fully on disk in a footer-less .partial.

    Reads the IPC stream after the 8-byte magic with pyarrow alone, so the
    test does not depend on ebcap's own recovery code.
    """
    data = path.read_bytes()
    if len(data) <= 8:
        return []
    counts = []
    try:
        stream = pa.ipc.open_stream(pa.BufferReader(data[8:]))
        for batch in stream:
            counts.append(batch.num_rows)
    except pa.ArrowInvalid:
        pass  # a batch cut short at the end: the ones before it are what is on disk
    return counts
