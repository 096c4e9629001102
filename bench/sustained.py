#!/usr/bin/env python3
"""Sustained load: the built-in producer at full speed for a minute, on each transport.

What a long recording must keep, checked against ground truth:

- memory: VmRSS of this process (the recorder runs in it) sampled in a thread
  every 0.2 s; start, peak, end, every tenth of the run and the peak and floor
  of each third of the producers' run (the finish after it is not steady
  state) are reported. Flat means, over the whole trajectory: the last third's
  peak at most RSS_GROWTH_LIMIT_KIB above the first third's, and the last
  third's floor at most that above the middle third's (the first third's floor
  is the start, before the rings are mapped);
- accounting, per CPU, from the producer's own counters (a BPF map it updates
  on every run): *produced* (runs) = *recorded* (distinct sequence numbers in
  the file) + *dropped* (runs whose event did not fit in the ring), exactly;
  and *lost* (what the file's lost rows report) = *dropped*: the file reports
  every event it misses, and the recorder's own drop totals agree. Every
  payload intact, no sequence number twice or out of order;
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ebcap.bpf.cpus import online_cpus, parse_cpu_list
from ebcap.capture.bench_integrity import check_integrity
from ebcap.capture.bench_producers import Producers
from ebcap.capture.bench_source import BenchSource
from ebcap.capture.recorder import Recorder, RecordOptions, RecordSummary
from ebcap.format.reader import CaptureReader
from ebcap.replay.memory import use_streaming_pool

RSS_GROWTH_LIMIT_KIB = 32 * 1024
"""Largest rise that still counts as flat, of the VmRSS peak (last third of the run against
the first) and of its floor (last third against the middle one, after the warm-up). VmRSS
swings by tens of MiB with the size of each drain, so single samples say little; a leak
lifts both the peaks and the floor of the later thirds."""
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
class CpuAccount:
    """One CPU's events: the producer's counters against the file."""

    produced: int
    """Runs of the program on this CPU (its invocation counter)."""
    dropped: int
    """Runs whose event did not fit in the ring (the program's drop counter)."""
    recorded: int = 0
    """Distinct sequence numbers of this CPU in the file."""
    lost: int = 0
    """Events the file's lost rows for this CPU report."""

    @property
    def unaccounted(self) -> int:
        """Produced but neither in the file nor dropped (must be 0)."""
        return self.produced - self.recorded - self.dropped


@dataclass
class Accounting:
    """What the file holds, checked event by event (one pass, batch by batch)."""

    per_cpu: dict[int, CpuAccount]
    rows: int = 0
    samples: int = 0
    """Sample rows in the file (duplicates included)."""
    corrupted: int = 0
    out_of_order: int = 0


def account(path: Path, size: int, invocations: list[int], drops: list[int]) -> Accounting:
    """Every event checked by `ebcap bench`'s own integrity check, batch by batch, and
    each CPU's counts in the file set against the producer's counters."""
    acc = Accounting({c: CpuAccount(n, drops[c]) for c, n in enumerate(invocations)})
    with CaptureReader(path) as reader:
        integrity = check_integrity(reader.iter_batches(), size)
        for batch in reader.iter_batches(columns=["cpu", "kind", "lost"]):
            acc.rows += batch.num_rows
            lost_rows = batch.column("kind").indices.to_numpy(zero_copy_only=False) == KIND_LOST
            cpu = batch.column("cpu").to_numpy()[lost_rows].tolist()
            counts = batch.column("lost").to_numpy()[lost_rows].tolist()
            for c, n in zip(cpu, counts, strict=True):
                acc.per_cpu.setdefault(c, CpuAccount(0, 0)).lost += n
    for c, received in integrity.received_per_cpu.items():
        acc.per_cpu.setdefault(c, CpuAccount(0, 0)).recorded = received
    acc.samples = integrity.received
    acc.corrupted = integrity.corrupted
    acc.out_of_order = sum(integrity.out_of_order_per_cpu.values()) + integrity.duplicates
    acc.per_cpu = {c: a for c, a in acc.per_cpu.items() if a != CpuAccount(0, 0)}
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
    dropped: int
    lost: int
    loss_pct: float
    unaccounted: int
    corrupted: int
    out_of_order: int
    per_cpu: dict[int, dict[str, int]]
    """Per CPU: produced, dropped, recorded, lost, unaccounted."""
    file_bytes: int
    bytes_per_event: float
    rss_start_mib: float
    rss_peak_mib: float
    rss_end_mib: float
    rss_series_mib: list[float]
    """VmRSS at 0 %, 10 %, ..., 100 % of the run."""
    rss_third_peaks_mib: list[float]
    """Peak of VmRSS in each third of the producers' run (the finish after it left out)."""
    rss_third_floors_mib: list[float]
    rss_peak_rise_mib: float
    """Peak of the last third minus peak of the first."""
    rss_floor_rise_mib: float
    """Floor of the last third minus floor of the middle one."""
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
    invocations, drops = source.counters()
    acc = account(path, size, invocations, drops)
    status, lines, replay_s = replay_lines(path)
    kib = [k for _, k in rss.samples]
    peaks, floors = rss_thirds(rss.samples, producers.run.wall_s)
    produced = sum(a.produced for a in acc.per_cpu.values())
    dropped = sum(a.dropped for a in acc.per_cpu.values())
    lost = sum(a.lost for a in acc.per_cpu.values())
    run = Run(
        transport=recorder.transport,
        size=size,
        producers=cpus,
        duration_s=round(summary.duration_s, 2),
        produced=produced,
        produced_per_s=round(produced / producers.run.wall_s),
        recorded=acc.samples,
        recorded_per_s=round(acc.samples / summary.duration_s),
        dropped=dropped,
        lost=lost,
        loss_pct=round(100 * dropped / produced, 3) if produced else 0.0,
        unaccounted=sum(a.unaccounted for a in acc.per_cpu.values()),
        corrupted=acc.corrupted,
        out_of_order=acc.out_of_order,
        per_cpu={c: {**asdict(a), "unaccounted": a.unaccounted} for c, a in acc.per_cpu.items()},
        file_bytes=summary.file_bytes,
        bytes_per_event=round(summary.file_bytes / max(acc.samples, 1), 2),
        rss_start_mib=mib(kib[0]),
        rss_peak_mib=mib(max(kib)),
        rss_end_mib=mib(kib[-1]),
        rss_series_mib=[mib(rss_at(rss.samples, summary.duration_s * i / 10)) for i in range(11)],
        rss_third_peaks_mib=[mib(k) for k in peaks],
        rss_third_floors_mib=[mib(k) for k in floors],
        rss_peak_rise_mib=mib(peaks[2] - peaks[0]),
        rss_floor_rise_mib=mib(floors[2] - floors[1]),
        arrow_pool=pa.default_memory_pool().backend_name,
        replay_exit=status,
        replay_lines=lines,
        rows=acc.rows,
        replay_s=round(replay_s, 1),
        failures=[],
    )
    run.failures = check(run, summary)
    path.unlink()
    return run


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def rss_at(samples: list[tuple[float, int]], t: float) -> int:
    """The first sample taken at or after ``t`` seconds (the last one if none)."""
    return next((k for when, k in samples if when >= t), samples[-1][1])


def rss_thirds(samples: list[tuple[float, int]], duration: float) -> tuple[list[int], list[int]]:
    """The peak and the floor of VmRSS in each third of the first ``duration`` seconds (the
    producers' run: the finish after it, final drain and last batch, is not steady state)."""
    peaks, floors = [], []
    for i in range(3):
        start, end = duration * i / 3, duration * (i + 1) / 3
        third = [k for when, k in samples if start <= when <= end] or [samples[-1][1]]
        peaks.append(max(third))
        floors.append(min(third))
    return peaks, floors


def check(run: Run, summary: RecordSummary) -> list[str]:
    failures = []
    for c, a in run.per_cpu.items():
        if a["unaccounted"]:
            failures.append(
                f"CPU {c}: produced {a['produced']} != recorded {a['recorded']} "
                f"+ dropped {a['dropped']}"
            )
        if a["lost"] != a["dropped"]:
            failures.append(f"CPU {c}: the file reports {a['lost']} lost, {a['dropped']} dropped")
        if summary.drops_per_cpu.get(c, 0) != a["dropped"]:
            failures.append(
                f"CPU {c}: the recorder counted {summary.drops_per_cpu.get(c, 0)} drops, "
                f"the producer {a['dropped']}"
            )
    if run.corrupted or run.out_of_order:
        failures.append(f"{run.corrupted} corrupted, {run.out_of_order} duplicated or reordered")
    if (summary.events, summary.lost) != (run.recorded, run.lost):
        failures.append(f"the recorder said {summary.events} + {summary.lost} lost")
    if run.replay_exit != 0 or run.replay_lines != run.rows:
        failures.append(f"replay exit {run.replay_exit}, {run.replay_lines} of {run.rows} rows")
    limit = RSS_GROWTH_LIMIT_KIB / 1024
    if run.rss_peak_rise_mib > limit:
        failures.append(f"the RSS peak rose by {run.rss_peak_rise_mib} MiB (first to last third)")
    if run.rss_floor_rise_mib > limit:
        failures.append(f"the RSS floor rose by {run.rss_floor_rise_mib} MiB (middle to last)")
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
    per_cpu = "".join(
        f"\n    CPU {c}: produced {a['produced']:,} = recorded {a['recorded']:,} + dropped "
        f"{a['dropped']:,} (unaccounted {a['unaccounted']}); the file reports {a['lost']:,} lost"
        for c, a in sorted(r.per_cpu.items())
    )
    print(
        f"{r.transport}: {r.duration_s} s, {r.size} B events, producers on CPU {r.producers}\n"
        f"  produced {r.produced:,} ({r.produced_per_s:,}/s) = recorded {r.recorded:,} "
        f"({r.recorded_per_s:,}/s) + dropped {r.dropped:,} ({r.loss_pct}%); the file reports "
        f"{r.lost:,} lost; unaccounted {r.unaccounted}, corrupted {r.corrupted}, "
        f"out of order {r.out_of_order}{per_cpu}\n"
        f"  RSS ({r.arrow_pool}) start {r.rss_start_mib} MiB, peak {r.rss_peak_mib}, "
        f"end {r.rss_end_mib}; every 10%: {r.rss_series_mib}\n"
        f"  RSS per third: peaks {r.rss_third_peaks_mib}, floors {r.rss_third_floors_mib}; "
        f"peak rise {r.rss_peak_rise_mib}, floor rise {r.rss_floor_rise_mib} MiB\n"
        f"  file {r.file_bytes / 2**20:.1f} MiB ({r.bytes_per_event} B/event); replay exit "
        f"{r.replay_exit}, {r.replay_lines:,} lines for {r.rows:,} rows in {r.replay_s} s\n"
        f"  {'FAILED: ' + '; '.join(r.failures) if r.failures else 'ok'}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
