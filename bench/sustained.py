#!/usr/bin/env python3
"""Sustained load: the built-in producer at full speed for a minute, on each transport.

What a long recording must keep, checked against ground truth:

- memory: VmRSS of this process (the recorder runs in it) sampled in a thread
  every 0.2 s; start, peak, end and every tenth of the run are reported, and
  the floor of the last quarter may not rise above that of the second by
  more than RSS_GROWTH_LIMIT_KIB;
- accounting: produced = recorded + lost, where *produced* is the producer's
  own per-CPU invocation counter (a BPF map), *recorded* the sample rows in
  the file and *lost* the sum of its lost rows; and per CPU, every sequence
  number the producer issued is either recorded exactly once, in order, or
  inside a reported loss (holes == lost), with every payload intact;
- the file replays: `ebcap replay FILE` exits 0 and prints one line per row.

The producer is ebcap's bench program (BPF_PROG_TEST_RUN in a pinned thread
per producer CPU, as `ebcap bench`); the recorder is pinned to the other
CPUs and allocates as `ebcap record` does (ARROW_DEFAULT_MEMORY_POOL=mimalloc
compares with pyarrow's default pool). Run as root:

    python3 bench/sustained.py [--duration 60] [--size 24] [--producers 0] [--json]

Exits 1 if any check fails. Files go to a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ebcap.bpf.cpus import online_cpus, parse_cpu_list
from ebcap.capture.bench import BenchSource, Producers, check_integrity
from ebcap.capture.recorder import Recorder, RecordOptions
from ebcap.format.reader import CaptureReader
from ebcap.replay.memory import use_streaming_pool

RSS_GROWTH_LIMIT_KIB = 32 * 1024
"""Largest rise of the VmRSS floor (the lowest sample in the last quarter of the run against
the lowest in the second quarter, after the warm-up) that still counts as flat. VmRSS swings
by tens of MiB with the size of each drain, so single samples or peaks say little; a leak
lifts the floor."""
BUFFERS = {"perf": 8 << 20, "ringbuf": 16 << 20}
"""`ebcap record`'s default ring sizes: per CPU (perf), whole ring (ring buffer)."""
SAMPLE_EVERY_S = 0.2
KIND_LOST = 1


class RssSampler:
    """VmRSS of this process, sampled in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._t0, vm_rss_kib()))
            self._stop.wait(SAMPLE_EVERY_S)


def vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Accounting:
    """What the file holds, checked event by event (one pass, batch by batch)."""

    recorded: int = 0
    lost: int = 0
    rows: int = 0
    corrupted: int = 0
    out_of_order: int = 0
    recorded_per_cpu: dict[int, int] = field(default_factory=dict)
    lost_per_cpu: dict[int, int] = field(default_factory=dict)
    holes_per_cpu: dict[int, int] = field(default_factory=dict)
    """Sequence numbers the producer issued on a CPU that are not in the file."""


def account(path: Path, size: int, produced_per_cpu: dict[int, int]) -> Accounting:
    """Every event checked by `ebcap bench`'s own integrity check, batch by batch."""
    acc = Accounting()
    with CaptureReader(path) as reader:
        integrity = check_integrity(reader.iter_batches(), size)
        for batch in reader.iter_batches(columns=["cpu", "kind", "lost"]):
            acc.rows += batch.num_rows
            lost_rows = batch.column("kind").indices.to_numpy(zero_copy_only=False) == KIND_LOST
            cpu = batch.column("cpu").to_numpy()[lost_rows].tolist()
            counts = batch.column("lost").to_numpy()[lost_rows].tolist()
            for c, n in zip(cpu, counts, strict=True):
                acc.lost_per_cpu[c] = acc.lost_per_cpu.get(c, 0) + n
    acc.recorded = integrity.received
    acc.corrupted = integrity.corrupted
    acc.out_of_order = sum(integrity.out_of_order_per_cpu.values()) + integrity.duplicates
    acc.recorded_per_cpu = dict(integrity.received_per_cpu)
    # Missing = issued by the producer, not in the file (a loss at the very end included).
    acc.holes_per_cpu = {
        c: produced - integrity.received_per_cpu.get(c, 0)
        for c, produced in produced_per_cpu.items()
    }
    acc.lost = sum(acc.lost_per_cpu.values())
    return acc


def replay_lines(path: Path) -> tuple[int, int, float]:
    """(exit status, lines printed, seconds) of `ebcap replay FILE`, output counted here."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "ebcap", "replay", str(path)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    lines = 0
    with proc.stdout:
        while chunk := proc.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
    return proc.wait(), lines, time.monotonic() - start


@dataclass
class Run:
    transport: str
    size: int
    producers: list[int]
    duration_s: float
    produced: int
    produced_per_s: float
    recorded: int
    recorded_per_s: float
    lost: int
    loss_pct: float
    unaccounted: int
    corrupted: int
    out_of_order: int
    holes_per_cpu: dict[int, int]
    lost_per_cpu: dict[int, int]
    file_bytes: int
    bytes_per_event: float
    rss_start_mib: float
    rss_at_10pct_mib: float
    rss_peak_mib: float
    rss_end_mib: float
    rss_series_mib: list[float]
    """VmRSS at 0 %, 10 %, ..., 100 % of the run."""
    rss_floor_rise_mib: float
    arrow_pool: str
    """Arrow's allocator (ARROW_DEFAULT_MEMORY_POOL picks another): what VmRSS depends on."""
    replay_exit: int
    replay_lines: int
    rows: int
    replay_s: float
    failures: list[str]


def run_one(transport: str, size: int, cpus: list[int], duration: float, directory: Path) -> Run:
    use_streaming_pool()  # as `ebcap record` and `ebcap bench` do
    source = BenchSource(size)
    producers = Producers(source, cpus, duration)
    path = directory / f"{transport}.arrow"
    options = RecordOptions(
        output=path,
        transport=transport,
        buffer_bytes=BUFFERS[transport],
        command=["bench/sustained.py", transport],
    )
    recorder = Recorder(source, options)
    rss = RssSampler()

    def started() -> None:
        rss.start()
        producers.start()

    free = set(os.sched_getaffinity(0)) - set(cpus)
    if free:  # the recorder off the producer CPUs, as `ebcap bench` does
        os.sched_setaffinity(0, free)
    try:
        summary = recorder.run(should_stop=producers.done.is_set, on_started=started)
    finally:
        producers.stop()
        rss.stop()
    if producers.run.errors:
        raise RuntimeError(producers.run.errors[0])
    invocations, _ = source.counters()
    produced_per_cpu = {c: invocations[c] for c in cpus}
    produced = sum(produced_per_cpu.values())
    acc = account(path, size, produced_per_cpu)
    status, lines, replay_s = replay_lines(path)
    kib = [k for _, k in rss.samples]
    tenth = rss_at(rss.samples, duration / 10)
    floor_rise = rss_floor(rss.samples, 0.75 * duration, duration) - rss_floor(
        rss.samples, 0.25 * duration, 0.50 * duration
    )
    run = Run(
        transport=recorder.transport,
        size=size,
        producers=cpus,
        duration_s=round(summary.duration_s, 2),
        produced=produced,
        produced_per_s=round(produced / producers.run.wall_s),
        recorded=acc.recorded,
        recorded_per_s=round(acc.recorded / summary.duration_s),
        lost=acc.lost,
        loss_pct=round(100 * acc.lost / produced, 3) if produced else 0.0,
        unaccounted=produced - acc.recorded - acc.lost,
        corrupted=acc.corrupted,
        out_of_order=acc.out_of_order,
        holes_per_cpu=acc.holes_per_cpu,
        lost_per_cpu=acc.lost_per_cpu,
        file_bytes=summary.file_bytes,
        bytes_per_event=round(summary.file_bytes / max(acc.recorded, 1), 2),
        rss_start_mib=round(kib[0] / 1024, 1),
        rss_at_10pct_mib=round(tenth / 1024, 1),
        rss_peak_mib=round(max(kib) / 1024, 1),
        rss_end_mib=round(kib[-1] / 1024, 1),
        rss_series_mib=[round(rss_at(rss.samples, duration * i / 10) / 1024, 1) for i in range(11)],
        rss_floor_rise_mib=round(floor_rise / 1024, 1),
        arrow_pool=pa.default_memory_pool().backend_name,
        replay_exit=status,
        replay_lines=lines,
        rows=acc.rows,
        replay_s=round(replay_s, 1),
        failures=[],
    )
    run.failures = check(run, summary.events, summary.lost, floor_rise)
    path.unlink()
    return run


def rss_at(samples: list[tuple[float, int]], t: float) -> int:
    """The first sample taken at or after ``t`` seconds (the last one if none)."""
    return next((k for when, k in samples if when >= t), samples[-1][1])


def rss_floor(samples: list[tuple[float, int]], start: float, end: float) -> int:
    """The lowest VmRSS sampled between ``start`` and ``end`` seconds."""
    return min((k for when, k in samples if start <= when <= end), default=samples[-1][1])


def check(run: Run, summary_events: int, summary_lost: int, floor_rise: int) -> list[str]:
    failures = []
    if run.unaccounted:
        failures.append(f"{run.unaccounted} events unaccounted for")
    if run.corrupted or run.out_of_order:
        failures.append(f"{run.corrupted} corrupted, {run.out_of_order} duplicated or reordered")
    if run.holes_per_cpu != {c: run.lost_per_cpu.get(c, 0) for c in run.holes_per_cpu}:
        failures.append(f"missing {run.holes_per_cpu} but reported lost {run.lost_per_cpu}")
    if (summary_events, summary_lost) != (run.recorded, run.lost):
        failures.append(f"the recorder said {summary_events} + {summary_lost} lost")
    if run.replay_exit != 0 or run.replay_lines != run.rows:
        failures.append(f"replay exit {run.replay_exit}, {run.replay_lines} of {run.rows} rows")
    if floor_rise > RSS_GROWTH_LIMIT_KIB:
        failures.append(f"the RSS floor rose by {floor_rise / 1024:.0f} MiB during the run")
    return failures


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{platform.node()}: {len(online_cpus())} CPUs ({cpu}), {mem_kib / 2**20:.0f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per transport")
    parser.add_argument("--size", type=int, default=24, help="event size in bytes")
    parser.add_argument("--producers", default="0", help="producer CPUs, e.g. 0 or 0,1")
    parser.add_argument("--transports", default="perf,ringbuf")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    transports = args.transports.split(",")
    if len(transports) == 1:
        with tempfile.TemporaryDirectory(prefix="ebcap-sustained-", dir=args.dir) as directory:
            cpus = parse_cpu_list(args.producers)
            runs = [asdict(run_one(transports[0], args.size, cpus, args.duration, Path(directory)))]
    else:  # each transport in a process of its own: its memory figures are its own
        runs = [child_run(t, args) for t in transports]
    if args.json:
        print(json.dumps({"date": started, "machine": machine(), "runs": runs}))
    else:
        for run in runs:
            print_run(Run(**run))
        print(f"# {started} on {machine()}")
    return 1 if any(r["failures"] for r in runs) else 0


def child_run(transport: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--json", "--transports", transport]
    argv += ["--duration", str(args.duration), "--size", str(args.size)]
    argv += ["--producers", args.producers] + (["--dir", str(args.dir)] if args.dir else [])
    done = subprocess.run(argv, stdout=subprocess.PIPE, check=False)
    if not done.stdout:
        raise RuntimeError(f"the {transport} run failed (exit {done.returncode})")
    run: dict[str, Any] = json.loads(done.stdout)["runs"][0]
    return run


def print_run(r: Run) -> None:
    print(
        f"{r.transport}: {r.duration_s} s, {r.size} B events, producers on CPU {r.producers}\n"
        f"  produced {r.produced:,} ({r.produced_per_s:,}/s) = recorded {r.recorded:,} "
        f"({r.recorded_per_s:,}/s) + lost {r.lost:,} ({r.loss_pct}%); unaccounted "
        f"{r.unaccounted}, corrupted {r.corrupted}, out of order {r.out_of_order}\n"
        f"  per CPU missing {r.holes_per_cpu}, reported lost {r.lost_per_cpu}\n"
        f"  RSS ({r.arrow_pool}) start {r.rss_start_mib} MiB, at 10% {r.rss_at_10pct_mib}, "
        f"peak {r.rss_peak_mib}, end {r.rss_end_mib}; floor rise {r.rss_floor_rise_mib}; "
        f"every 10%: {r.rss_series_mib}\n"
        f"  file {r.file_bytes / 2**20:.1f} MiB ({r.bytes_per_event} B/event); replay exit "
        f"{r.replay_exit}, {r.replay_lines:,} lines for {r.rows:,} rows in {r.replay_s} s\n"
        f"  {'FAILED: ' + '; '.join(r.failures) if r.failures else 'ok'}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
