"""Shared pieces of the reliability tests: the CLI in-process and as a process, workloads.

In-process runs go through :func:`ebcap.cli.run`, the same function the
``ebcap`` entry point calls, so exit codes and error lines are the real ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ebcap.cli import run

ERROR_PREFIX = "ebcap: error: "

PACED_WORKLOAD = """
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(int(sys.argv[2])):
        os.getppid()
    time.sleep(float(sys.argv[3]))
"""
"""getppid() in bursts: argv = seconds to run, calls per burst, pause after each burst."""

GETPPID_NR = 110

FD_BASE = 1 << 30
"""The numbered workload's n-th call is close(FD_BASE + n): far above any real descriptor
(the kernel's nr_open limit is 2^20 by default), so each fails at once with EBADF."""

NUMBERED_WORKLOAD = f"""
import os, sys, threading, time
seconds, burst, pause, go = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.001)
end = time.monotonic() + seconds
def calls(cpu):
    os.sched_setaffinity(0, {{cpu}})
    n = 0
    while time.monotonic() < end:
        for _ in range(burst):
            n += 1
            try:
                os.close({FD_BASE} + n)
            except OSError:
                pass
        time.sleep(pause)
threads = [threading.Thread(target=calls, args=(int(c),)) for c in sys.argv[5].split(",")]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""
"""close(FD_BASE + 1), close(FD_BASE + 2), ... in bursts, in one thread pinned to each CPU
of argv[5], once the file argv[4] exists (the recorder's ready file): ground truth for what
a recording must hold. argv[1..3] = seconds to run, calls per burst, pause after each burst."""


@dataclass(frozen=True)
class Outcome:
    """What one CLI run did: exit code and what it printed."""

    code: int
    out: str
    err: str

    def describe(self) -> str:
        return f"exit {self.code}, stderr {self.err[:300]!r}"


def run_cli(capsys: pytest.CaptureFixture[str], argv: Sequence[object]) -> Outcome:
    """Run ``ebcap ARGV`` in this process and collect its output."""
    capsys.readouterr()
    code = run([str(a) for a in argv])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def run_record(capsys: pytest.CaptureFixture[str], argv: list[str | Path]) -> Outcome:
    """``ebcap record ARGV --pid P`` in this process while a child P makes the syscalls.

    An in-process recording leaves out this process's own syscalls, and a quiet
    machine may make none at all: without its own load a --count run would wait forever.
    """
    with workload(60.0, 5, 0.01) as pid:
        return run_cli(capsys, ["record", *argv, "--pid", str(pid)])


def is_one_line_error(outcome: Outcome, code: int = 2) -> bool:
    """Exit ``code`` and exactly one ``ebcap: error:`` line on stderr, no traceback."""
    lines = outcome.err.splitlines()
    return (
        outcome.code == code
        and len(lines) == 1
        and lines[0].startswith(ERROR_PREFIX)
        and "Traceback" not in outcome.err
    )


def assert_one_line_error(outcome: Outcome, code: int = 2, mentions: str = "") -> None:
    assert is_one_line_error(outcome, code), outcome.describe()
    assert mentions in outcome.err, outcome.describe()


def ebcap_process(*args: str | Path | float, **kwargs: object) -> subprocess.Popen[str]:
    """``python -m ebcap ARGS`` as a child process (the real entry point)."""
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "ebcap", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def ebcap_run(*args: str | Path | float, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ebcap", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def workload(seconds: float, burst: int = 50, pause: float = 0.001) -> Iterator[int]:
    """A child process calling getppid() in bursts; yields its pid, kills it afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PACED_WORKLOAD, str(seconds), str(burst), str(pause)]
    )
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def numbered_workload(
    go: Path, cpus: Iterable[int], seconds: float, burst: int, pause: float
) -> Iterator[int]:
    """The numbered workload (:data:`NUMBERED_WORKLOAD`); yields its pid, kills it afterwards."""
    argv = [str(seconds), str(burst), str(pause), str(go), ",".join(map(str, cpus))]
    proc = subprocess.Popen([sys.executable, "-c", NUMBERED_WORKLOAD, *argv])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def numbered_calls(table: pa.Table) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(numbers n, CPUs) of the workload's close(FD_BASE + n) calls in ``table``, per
    thread, in arrival (``seq``) order."""
    samples = samples_of(table)
    mine = samples.filter(_is_numbered_call(samples))
    tid, cpu = mine["tid"].to_numpy(), mine["cpu"].to_numpy()
    number = mine["arg0"].to_numpy().astype(np.int64) - FD_BASE
    return {int(t): (number[tid == t], cpu[tid == t]) for t in np.unique(tid)}


def _is_numbered_call(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(
        pc.and_(
            pc.equal(table["syscall"], "close"),
            pc.greater(table["arg0"], pa.scalar(FD_BASE, pa.uint64())),
        ),
        False,
    )


def assert_numbered_calls(table: pa.Table, threads: int) -> dict[int, int]:
    """Each of the workload's ``threads`` threads has its calls 1..last in the file, in order,
    each once, except where a ``lost`` row on that thread's CPU (it is pinned) says how
    many events the kernel dropped there: perf reports a loss in band, just before the
    next event it could write. Returns each thread's last number."""
    calls = numbered_calls(table)
    assert len(calls) == threads, f"calls from threads {sorted(calls)}, expected {threads}"
    is_lost = pc.equal(table["kind"].cast(pa.string()), "lost").to_numpy(zero_copy_only=False)
    is_call = _is_numbered_call(table).to_numpy()
    for tid, (numbers, cpus) in calls.items():
        assert bool(np.all(np.diff(numbers) > 0)), f"thread {tid}: calls repeat or go back"
        assert len(set(cpus.tolist())) == 1, f"thread {tid} was pinned but its calls moved"
        on_cpu = table["cpu"].to_numpy() == cpus[0]
        lost_here = np.where(is_lost & on_cpu, table["lost"].to_numpy().astype(np.int64), 0)
        mine = is_call & (table["tid"].fill_null(0).to_numpy() == tid)
        lost = np.diff(np.cumsum(lost_here)[mine], prepend=0)  # since the call before
        skipped = np.diff(numbers, prepend=0) - 1
        bad = np.flatnonzero(skipped > lost)
        assert not len(bad), (
            f"thread {tid}: call {numbers[bad[0]]} follows {numbers[bad[0]] - skipped[bad[0]] - 1}"
            f" with {lost[bad[0]]} events reported lost in between"
        )
    return {tid: int(numbers[-1]) for tid, (numbers, _) in calls.items()}


def wait_for(path: Path, timeout: float = 20.0) -> None:
    """Poll until ``path`` exists (a ready file, a .partial file)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    """Send ``sig``, wait for the process; returns its stderr."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return err


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def samples_of(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table["kind"].cast(pa.string()), "sample"))


def assert_syscall_rows_intact(table: pa.Table) -> None:
    """Every sample's payload decodes (by the event's one definition) to its columns.

    ``ts_ns``/``cpu`` are filled from the payload and pid, tid, syscall_nr, comm
    and arg0..arg5 are decoded from it, so any damage to a row shows here.
    """
    from ebcap.bpf.programs.syscalls import SYSCALL_EVENT

    samples = samples_of(table)
    payloads = samples["data"].to_pylist()
    assert all(len(p) == SYSCALL_EVENT.itemsize for p in payloads), "payload sizes vary"
    events = np.frombuffer(b"".join(payloads), dtype=SYSCALL_EVENT)
    columns = {
        "ts_ns": events["ts_ns"],
        "cpu": events["cpu"],
        "pid": events["pid"],
        "tid": events["tid"],
        "syscall_nr": events["nr"],
    }
    for i in range(events["args"].shape[1]):
        columns[f"arg{i}"] = events["args"][:, i]
    for name, expected in columns.items():
        got = samples[name].to_numpy()
        assert np.array_equal(got, expected.astype(got.dtype)), f"column {name} != payload"
    comms = [c.split(b"\0", 1)[0].decode("utf-8", "replace") for c in events["comm"]]
    assert samples["comm"].to_pylist() == comms, "column comm != payload"


def assert_per_cpu_time_order(table: pa.Table) -> None:
    """On each CPU, samples arrive in timestamp order (one ring per CPU is FIFO)."""
    samples = samples_of(table)
    cpu = samples["cpu"].to_numpy()
    ts = samples["ts_ns"].to_numpy()
    for c in np.unique(cpu):
        mine = ts[cpu == c]
        assert bool(np.all(mine[1:] >= mine[:-1])), f"CPU {c}: timestamps go back"
