#!/usr/bin/env python3
"""Replay speed and memory: `ebcap replay` next to `perf script`, same load, one run.

1. Builds the anchors' getppid() load generator (../shared/anchors, needs
   clang, libbpf-dev, bpftool, make) in a scratch copy.
2. Records two syscall captures while it runs on every CPU:
   `ebcap record --count N` for N = 1M and --events (default 10M).
3. `perf record -e raw_syscalls:sys_enter -a` of the same load, long enough
   for about as many samples.
4. Replays, to /dev/null, --reps times, the tools interleaved so that drift
   hits all alike: `perf script`, then `ebcap replay` of each capture in
   arrival and --sorted order, text and jsonl. Wall time, CPU time (user +
   sys) and peak RSS of each run (wait4).

Prints a Markdown table: events/s and events per CPU-second (median, and
each against perf script's), peak RSS; writes every run to
bench/results/replay_bench.csv. Run as root:

    python3 bench/replay_bench.py [--events 10000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ebcap

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT.parent / "shared" / "anchors"
RESULTS = ROOT / "bench" / "results"
TRACEFS = Path("/sys/kernel/tracing")
SMALL_EVENTS = 1_000_000
PERF_SAMPLES_PER_S = 1.1e6
"""About what `perf record -a` keeps per second of this load here (sizes its run)."""
MODES = (
    ("text", []),
    ("text --sorted", ["--sorted"]),
    ("jsonl", ["--format", "jsonl"]),
    ("jsonl --sorted", ["--sorted", "--format", "jsonl"]),
)


@dataclass
class Run:
    tool: str
    mode: str
    events: int
    rep: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kb: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s


def timed(command: list[str]) -> tuple[float, os.struct_rusage]:
    """Run ``command`` (output to /dev/null); its wall time and its own resource usage."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)  # this child's usage, not all children's
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()[-400:]
            raise SystemExit(f"{' '.join(command)} failed: {message}")
    return wall, usage


def build_load(scratch: Path) -> Path:
    work = scratch / "anchors"
    shutil.copytree(ANCHORS, work, ignore=shutil.ignore_patterns("build", "results"))
    subprocess.run(["make", "-s", "-C", str(work)], check=True)
    return work / "build" / "sysload"


def cpu_list() -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def record_capture(sysload: Path, path: Path, events: int) -> dict:
    """An ebcap syscalls capture of ``events`` events of the getppid load on every CPU."""
    seconds = max(10, int(events / 200_000))
    load = subprocess.Popen(
        [str(sysload), "-d", str(seconds), "-C", cpu_list()], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        out = subprocess.run(
            ["ebcap", "record", "-o", str(path), "-f", "--count", str(events), "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        load.terminate()
        load.wait()
    return json.loads(out)


def record_perf(sysload: Path, path: Path, events: int) -> int:
    """`perf record` of the same load for about ``events`` samples; the samples kept."""
    if not TRACEFS.joinpath("events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "tracefs", str(TRACEFS)], check=True)
    seconds = max(3.0, events / PERF_SAMPLES_PER_S)
    subprocess.run(
        [
            "perf",
            "record",
            "-q",
            "-e",
            "raw_syscalls:sys_enter",
            "-a",
            "-o",
            str(path),
            "--",
            str(sysload),
            "-d",
            f"{seconds:.1f}",
            "-C",
            cpu_list(),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stats = subprocess.run(
        ["perf", "report", "-i", str(path), "--stats"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"^\s*SAMPLE events:\s+(\d+)", stats, re.MULTILINE)
    if match is None:
        raise SystemExit("perf report --stats shows no SAMPLE count")
    return int(match.group(1))


def measure(tool: str, mode: str, events: int, command: list[str], rep: int) -> Run:
    wall, usage = timed(command)
    run = Run(tool, mode, events, rep, wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss)
    print(
        f"  {tool:6s} {mode:15s} {events:>10,} #{rep}: {wall:6.2f} s "
        f"{run.events_per_s / 1e6:5.2f} M/s  {usage.ru_maxrss // 1024} MiB",
        file=sys.stderr,
    )
    return run


def rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"


def summary(runs: list[Run]) -> str:
    """Medians per tool, mode and size; ratios against perf script by wall and by CPU time."""
    perf = [r for r in runs if r.tool == "perf"]
    perf_rate = statistics.median(r.events_per_s for r in perf)
    perf_cpu_rate = statistics.median(r.events / (r.user_s + r.sys_s) for r in perf)
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.tool, run.mode, run.events), []).append(run)
    lines = [
        "| tool | mode | events | runs | events/s median [min-max] | vs perf script "
        "| events per CPU-second | vs perf script | peak RSS MiB median [min-max] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (tool, mode, events), group in groups.items():
        speeds = [r.events_per_s for r in group]
        cpu_rate = statistics.median(r.events / (r.user_s + r.sys_s) for r in group)
        rss = [r.max_rss_kb / 1024 for r in group]
        lines.append(
            f"| {tool} | {mode} | {events:,} | {len(group)} | {rate(statistics.median(speeds))} "
            f"[{rate(min(speeds))}-{rate(max(speeds))}] | "
            f"{statistics.median(speeds) / perf_rate:.2f}x | {rate(cpu_rate)} | "
            f"{cpu_rate / perf_cpu_rate:.2f}x | "
            f"{statistics.median(rss):.0f} [{min(rss):.0f}-{max(rss):.0f}] |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="Scratch directory (default: /tmp).")
    parser.add_argument("--csv", type=Path, default=RESULTS / "replay_bench.csv")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (ebcap record and perf record -a need it)")
    scratch = Path(tempfile.mkdtemp(prefix="ebcap-replay-bench-", dir=args.dir))
    runs: list[Run] = []
    load_before = os.getloadavg()
    try:
        sysload = build_load(scratch)
        captures = {}
        for events in sorted({SMALL_EVENTS, args.events}):
            path = scratch / f"syscalls-{events}.arrow"
            info = record_capture(sysload, path, events)
            print(
                f"recorded {info['events']:,} events in {info['duration_s']:.1f} s "
                f"({info['file_bytes'] / info['events']:.1f} B/event, {info['lost']:,} lost)",
                file=sys.stderr,
            )
            with ebcap.open(path) as reader:
                captures[events] = (path, reader.num_rows)  # samples and lost rows
        perf_data = scratch / "perf.data"
        samples = record_perf(sysload, perf_data, args.events)
        print(f"perf record kept {samples:,} samples", file=sys.stderr)
        perf_script = ["perf", "script", "-i", str(perf_data)]
        for rep in range(1, args.reps + 1):  # interleaved, so drift hits every tool alike
            runs.append(measure("perf", "perf script", samples, perf_script, rep))
            for _, (path, rows) in sorted(captures.items()):
                for mode, flags in MODES:
                    command = ["ebcap", "replay", *flags, str(path)]
                    runs.append(measure("ebcap", mode, rows, command, rep))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as out:
        writer = csv.DictWriter(out, [*asdict(runs[0]), "events_per_s"])
        writer.writeheader()
        for run in runs:
            writer.writerow({**asdict(run), "events_per_s": round(run.events_per_s)})
    print(summary(runs))
    print(
        f"\nload average 1 min: {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{os.cpu_count()} CPUs; kernel {os.uname().release}"
    )


if __name__ == "__main__":
    main()
