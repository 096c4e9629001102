#!/usr/bin/env python3
"""Side-by-side: the libbpf anchor consumer vs `ebcap record`, same producer, one run.

Builds ../shared/anchors (C producer + libbpf consumer; needs clang, llvm,
libbpf-dev, bpftool, libelf-dev, make from apt) in a scratch copy, then for
each transport x event size x producer layout runs, back to back:

  1. producer (pins rb/pb/stats) + the libbpf consumer,
  2. producer + `ebcap record --pin ... --layout ...` to a real file,

and reports medians of each, and ebcap/libbpf ratios of consumed/s.
Run as root:  python3 bench/anchor_compare.py [--reps 3] [--duration 3]
Writes bench/results/anchor_compare.csv and prints a Markdown table.

`--producer-cpu 25,50,100` repeats every configuration with the producer's
threads held to that share of one CPU each (a CPU cgroup's CFS quota; 100 =
no limit). The producer then offers a bounded load whatever the consumer
does, so the table shows up to which load each consumer loses nothing.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

import ebcap

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT.parent / "shared" / "anchors"
PIN_DIR = Path("/sys/fs/bpf/ebcap-bench")
EBCAP_ARGS: list[str] = []
"""Extra `ebcap record` arguments (--ebcap-args), e.g. a zstd level."""
APT = ["clang", "llvm", "libbpf-dev", "bpftool", "libelf-dev", "make"]


def build_anchors(scratch: Path) -> Path:
    if not shutil.which("clang") or not shutil.which("bpftool"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *APT], check=True)
    work = scratch / "anchors"
    shutil.copytree(ANCHORS, work, ignore=shutil.ignore_patterns("build", "results"))
    subprocess.run(["make", "-s", "-C", str(work)], check=True)
    return work / "build"


def kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def result_line(text: str, who: str) -> dict[str, str]:
    for line in text.splitlines():
        if line.startswith(f"RESULT {who}"):
            return kv(line)
    raise RuntimeError(f"no RESULT {who} line in:\n{text}")


class ProducerBudget:
    """A CPU cgroup whose CFS quota holds the producer to a share of each of its CPUs.

    Without it the ring buffer's producer runs as fast as the consumer's wakeups
    let it: a consumer that catches up often slows it, one that does not lets it
    run free. A quota bounds the offered load the same way for both consumers.
    """

    PERIOD_US = 5000  # short periods: a throttled producer bursts at most 5 ms
    MIN_QUOTA_US = 1000  # the kernel's floor for a quota

    def __init__(self) -> None:
        self.path, self.v2 = self._cpu_cgroup_root()
        self.path = self.path / f"ebcap-anchor-{os.getpid()}"
        self.path.mkdir(exist_ok=True)

    @staticmethod
    def _cpu_cgroup_root() -> tuple[Path, bool]:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _dev, mount, fstype, options, *_ = line.split()
            controllers = Path(mount) / "cgroup.controllers"
            if fstype == "cgroup2" and "cpu" in _words(controllers):
                (Path(mount) / "cgroup.subtree_control").write_text("+cpu")
                return Path(mount), True
            if fstype == "cgroup" and "cpu" in options.split(","):
                return Path(mount), False
        raise RuntimeError("--producer-cpu needs the CPU cgroup controller (v1 or v2)")

    def limit(self, percent: int, ncpus: int) -> None:
        # The period grows where the quota would fall below the kernel's floor.
        period = max(self.PERIOD_US, -(-self.MIN_QUOTA_US * 100 // (percent * ncpus)))
        quota = period * percent * ncpus // 100 if percent < 100 else -1
        if self.v2:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {period}")
        else:
            (self.path / "cpu.cfs_quota_us").write_text("-1")  # any period may follow
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into the cgroup, so every
        producer thread starts inside."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def remove(self) -> None:
        """Move what is left inside to the parent cgroup, then remove this one."""
        try:
            for pid in _words(self.path / "cgroup.procs"):
                (self.path.parent / "cgroup.procs").write_text(pid)
            self.path.rmdir()
        except OSError as exc:
            print(f"anchor_compare: cannot remove {self.path}: {exc.strerror}", file=sys.stderr)


def _words(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


BUDGET: list[ProducerBudget] = []
"""The producer's cgroup while --producer-cpu is given (empty: no limit)."""


def start_producer(
    build: Path, transport: str, size: int, cpus: str, duration: float, ready: Path
) -> subprocess.Popen[str]:
    subprocess.run([str(build / "producer"), "-X"], check=False, capture_output=True)
    ready.unlink(missing_ok=True)
    argv = [
        str(build / "producer"),
        "-t",
        transport,
        "-s",
        str(size),
        "-C",
        cpus,
        "-d",
        str(duration),
        "-W",
        str(ready),
    ]
    proc = subprocess.Popen(
        BUDGET[0].wrap(argv) if BUDGET else argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not (PIN_DIR / "stats").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            stop(proc)
            raise RuntimeError(f"producer did not pin its maps: {proc.communicate()[0]}")
        time.sleep(0.01)
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs (a run that failed half way), and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def run_libbpf(
    build: Path, transport: str, size: int, cpus: str, duration: float, wakeup: int, tmp: Path
) -> dict[str, float]:
    ready = tmp / "ready"
    args = [str(build / "consumer"), "-t", transport, "-s", str(size), "-c", "1", "-R", str(ready)]
    if transport == "pb" and wakeup > 1:
        args += ["-w", str(wakeup)]
    producer = start_producer(build, transport, size, cpus, duration, ready)
    try:
        consumer = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
        p_out = producer.communicate(timeout=60)[0]
    finally:
        stop(producer)
    c = result_line(consumer.stdout, "consumer")
    p = result_line(p_out, "producer")
    return {
        "produced_per_s": float(p["produced_per_s"]),
        "consumed_per_s": float(c["consumed_per_s"]),
        "loss_pct": float(c["loss_pct"]),
        "unaccounted": float(c["unaccounted"]),
    }


def run_ebcap(
    build: Path, transport: str, size: int, cpus: str, duration: float, wakeup: int, tmp: Path
) -> dict[str, float]:
    ready = tmp / "ready"
    out = tmp / "ebcap.arrow"
    producer = start_producer(build, transport, size, cpus, duration, ready)
    layout = "ts:u64,cpu:u32,seq:u32" + (f",pad:{size - 16}x" if size > 16 else "")
    pin = PIN_DIR / ("rb" if transport == "rb" else "pb")
    cmd = [
        sys.executable,
        "-P",  # not the source tree's ebcap/ from the current directory
        "-m",
        "ebcap",
        "record",
        "-o",
        str(out),
        "--force",
        "--json",
        "--pin",
        str(pin),
        "--layout",
        layout,
        "--ready-file",
        str(ready),
        "--wakeup",
        str(wakeup),
        # struct bench_stats {invocations, rb_drops, pb_fail, ...}: the failures become lost rows
        "--drops",
        f"{PIN_DIR / 'stats'}:{1 if transport == 'rb' else 2}",
        *EBCAP_ARGS,
    ]
    try:
        # Consumer on CPU1 like the anchor's `-c 1`.
        recorder = subprocess.Popen(
            ["taskset", "-c", "1", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            p_out = producer.communicate(timeout=duration + 60)[0]
            time.sleep(0.5)  # the anchor consumer stops after 500 ms idle; give ebcap the same
            recorder.send_signal(signal.SIGINT)
            r_out, r_err = recorder.communicate(timeout=120)
        finally:
            stop(recorder)
    finally:
        stop(producer)
    if recorder.returncode != 0:
        raise RuntimeError(f"ebcap record failed: {r_err}")
    summary = json.loads(r_out)
    p = result_line(p_out, "producer")
    produced = int(p["produced"])
    with ebcap.open(out) as reader:
        table = reader.to_table().select(["ts_ns", "kind", "lost"])
        last_drain_ns = int((reader.totals or {})["last_drain_ns"])
    samples = table.filter(pc.equal(table["kind"].cast(pa.string()), "sample"))
    first_ts = int(pc.min(samples["ts_ns"]).as_py())
    received = samples.num_rows
    lost_in_file = int(pc.sum(table["lost"]).as_py() or 0)
    return {
        "produced_per_s": float(p["produced_per_s"]),
        "consumed_per_s": received / ((last_drain_ns - first_ts) / 1e9),
        "loss_pct": 100.0 * (produced - received) / produced,
        "unaccounted": produced - received - lost_in_file,  # every loss must be a row
        "bytes_per_event": summary["bytes_per_event"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--sizes", default="24,256")
    parser.add_argument("--transports", default="rb,pb")
    parser.add_argument("--layouts", default="1P,2P")
    parser.add_argument("--wakeup", type=int, default=64, help="perf wakeup_events for both")
    parser.add_argument(
        "--producer-cpu",
        default="100",
        help="share of one CPU per producer thread, in %%, a list (100 = no limit)",
    )
    parser.add_argument("--ebcap-args", default="", help="more `ebcap record` arguments")
    parser.add_argument("--csv", default="anchor_compare.csv", help="file in bench/results/")
    args = parser.parse_args()
    EBCAP_ARGS[:] = args.ebcap_args.split()
    budgets = [int(b) for b in args.producer_cpu.split(",")]
    if not all(0 < b <= 100 for b in budgets):
        print("anchor_compare: --producer-cpu takes percentages 1..100", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("anchor_compare: run as root", file=sys.stderr)
        return 2
    subprocess.run(
        ["sh", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"], check=True
    )
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    if budgets != [100]:
        BUDGET.append(ProducerBudget())
    try:
        rows = run_all(args, budgets)
    finally:
        if BUDGET:
            BUDGET.pop().remove()
    with open(results_dir / args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    print(summarize(rows, args.wakeup))
    return 0


def run_all(args: argparse.Namespace, budgets: list[int]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ebcap-anchor-") as scratch:
        build = build_anchors(Path(scratch))
        tmp = Path(scratch)
        configs = itertools.product(
            budgets,
            args.transports.split(","),
            (int(size) for size in args.sizes.split(",")),
            args.layouts.split(","),
        )
        for budget, transport, size, layout in configs:
            cpus = "0" if layout == "1P" else "0,1"
            if BUDGET:
                BUDGET[0].limit(budget, len(cpus.split(",")))
            for rep in range(args.reps):
                for who, fn in (("libbpf", run_libbpf), ("ebcap", run_ebcap)):
                    r = fn(build, transport, size, cpus, args.duration, args.wakeup, tmp)
                    row = {
                        "who": who,
                        "producer_cpu": budget,
                        "transport": transport,
                        "size": size,
                        "layout": layout,
                        "rep": rep,
                        **r,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        subprocess.run([str(build / "producer"), "-X"], check=False, capture_output=True)
    return rows


def summarize(rows: list[dict[str, object]], wakeup: int) -> str:
    lines = [
        f"perf wakeup_events = {wakeup} for both consumers; medians of each configuration",
        "",
        "| producer CPU % | transport | size | layout | libbpf produced/s | libbpf consumed/s "
        "| ebcap produced/s | ebcap consumed/s | ratio | libbpf loss % | ebcap loss % "
        "| ebcap unaccounted | ebcap B/event |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    Config = tuple[int, str, int, str]
    configs = sorted(
        {
            (int(str(r.get("producer_cpu", 100))), str(r["transport"]), int(str(r["size"])),
             str(r["layout"]))
            for r in rows
        }
    )  # fmt: skip
    for config in configs:

        def med(who: str, key: str, config: Config = config) -> float:
            values = [
                float(str(r[key]))
                for r in rows
                if r["who"] == who
                and (int(str(r.get("producer_cpu", 100))), r["transport"], r["size"], r["layout"])
                == config
            ]
            return statistics.median(values) if values else float("nan")

        libbpf, ebcap = med("libbpf", "consumed_per_s"), med("ebcap", "consumed_per_s")
        budget, t, s, lay = config
        lines.append(
            f"| {budget} | {t} | {s} | {lay} | {med('libbpf', 'produced_per_s') / 1e6:.2f}M "
            f"| {libbpf / 1e6:.2f}M | {med('ebcap', 'produced_per_s') / 1e6:.2f}M "
            f"| {ebcap / 1e6:.2f}M | {ebcap / libbpf:.2f} | {med('libbpf', 'loss_pct'):.2f} "
            f"| {med('ebcap', 'loss_pct'):.2f} | {med('ebcap', 'unaccounted'):.0f} "
            f"| {med('ebcap', 'bytes_per_event'):.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
