"""Signals: SIGKILL loses at most one flush interval, SIGINT/SIGTERM finish the file,
a second Ctrl-C aborts but leaves a recoverable file, SIGPIPE on output ends quietly.

Each recording records only a workload process (``--pid``) that calls
getppid() in bursts the whole time, so the recovered timeline can be checked
against the moment of the kill.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left
from reliability.harness import (
    assert_per_cpu_time_order,
    assert_syscall_rows_intact,
    ebcap_process,
    ebcap_run,
    run_cli,
    samples_of,
    wait_for,
    workload,
)

from ebcap.bpf.links import loaded_link_ids
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.format.writer import partial_path

pytestmark = pytest.mark.privileged

FLUSH_S = 0.2
SLACK_S = 0.3
"""Beyond one flush interval: a poll round (0.1 s), a wakeup, and scheduling."""
RUN_S = 2.0
BURSTS = (30.0, 20, 0.002)
"""Workload: 20 getppid() every 2 ms, about 10,000 events/s, for at most 30 s."""


def links_left(before: set[int], timeout: float = 5.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = set(loaded_link_ids()) - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def read(path: Path) -> tuple[pa.Table, dict, dict]:
    with CaptureReader(path) as reader:
        return reader.to_table(), reader.metadata, reader.totals or {}


def test_sigkill_loses_at_most_one_flush_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    programs, links = ebcap_programs(), set(loaded_link_ids())
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    with workload(*BURSTS) as pid:
        proc = ebcap_process(
            "record", "-o", out, "--pid", pid, "--flush-interval", FLUSH_S, "--ready-file", ready
        )
        wait_for(ready)
        started_ns = time.monotonic_ns()
        time.sleep(RUN_S)
        killed_ns = time.monotonic_ns()
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed capture must not look finished"
    fixed = tmp_path / "fixed.arrow"
    outcome = run_cli(capsys, ["recover", partial_path(out), "-o", fixed])
    assert outcome.code == 0, outcome.describe()

    table, metadata, totals = read(fixed)
    samples = samples_of(table)
    ts = samples["ts_ns"].to_numpy()
    lost_s = (killed_ns - int(ts.max())) / 1e9
    assert lost_s <= FLUSH_S + SLACK_S, f"the last {lost_s:.3f} s before the kill were lost"
    assert (int(ts.min()) - started_ns) / 1e9 < 0.1, "the first events were not saved"
    gaps = np.diff(np.sort(ts)) / 1e9
    assert gaps.max() < FLUSH_S, f"a hole of {gaps.max():.3f} s inside the saved timeline"
    assert table["seq"].to_pylist() == list(range(table.num_rows)), "rows missing in between"
    assert set(samples["pid"].to_pylist()) == {pid}
    assert_syscall_rows_intact(table)
    assert_per_cpu_time_order(table)
    assert fs.META_RECOVERED in metadata
    assert totals["recovered"] is True and totals["events"] == samples.num_rows
    assert ebcap_programs_left(programs) == set(), "the killed recorder's program stayed"
    assert links_left(links) == set(), "the killed recorder's link stayed"


@pytest.mark.parametrize(
    ("sig", "as_json"), [(signal.SIGINT, False), (signal.SIGTERM, True)], ids=["int", "term"]
)
def test_stop_signal_finishes_the_file(tmp_path: Path, sig: int, as_json: bool) -> None:
    programs = ebcap_programs()
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    with workload(*BURSTS) as pid:
        args = ["record", "-o", out, "--pid", pid, "--ready-file", ready]
        proc = ebcap_process(*args, *(["--json"] if as_json else []))
        wait_for(ready)
        time.sleep(0.5)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    if as_json:
        summary = json.loads(stdout)
        events, stopped_by = summary["events"], summary["stopped_by"]
    else:
        line = stderr.strip().splitlines()[-1]
        assert line.startswith("recorded ") and line.endswith(str(out)), stderr
        events, stopped_by = int(line.split()[1].replace(",", "")), "signal"
    assert stopped_by == "signal"
    table, _, totals = read(out)
    samples = samples_of(table)
    assert events == samples.num_rows == totals["events"] > 1000
    assert totals.get("recovered") is None and totals["end_time"]
    assert_syscall_rows_intact(table)
    assert not partial_path(out).exists()
    assert ebcap_programs_left(programs) == set()


def test_second_interrupt_aborts_and_leaves_a_recoverable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    programs, links = ebcap_programs(), set(loaded_link_ids())
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    with workload(*BURSTS) as pid:
        proc = ebcap_process(
            "record", "-o", out, "--pid", pid, "--flush-interval", "0.1", "--ready-file", ready
        )
        wait_for(ready)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.001)
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - second
    assert took < 2.0, f"the second Ctrl-C took {took:.2f} s to end the recorder"
    assert proc.returncode == 130, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("ebcap: interrupted: "), stderr
    if out.exists():  # the finish was already renaming the file: it is complete
        table, _, totals = read(out)
        assert totals["events"] == samples_of(table).num_rows
    else:
        fixed = tmp_path / "fixed.arrow"
        outcome = run_cli(capsys, ["recover", partial_path(out), "-o", fixed])
        assert outcome.code == 0, outcome.describe()
        table, _, _ = read(fixed)
    assert samples_of(table).num_rows > 1000
    assert_syscall_rows_intact(table)
    assert ebcap_programs_left(programs) == set()
    assert links_left(links) == set()


@pytest.fixture(scope="module")
def big_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture whose replay is far larger than a pipe buffer (64 KiB)."""
    out = tmp_path_factory.mktemp("pipe") / "big.arrow"
    with workload(30.0, 1000, 0.001) as pid:
        done = ebcap_run("record", "-o", out, "--pid", str(pid), "--count", "20000")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "{f}"],
        ["replay", "--sorted", "--format", "jsonl", "{f}"],
        ["sql", "{f}", "SELECT * FROM events"],
        ["export", "{f}", "-o", "-", "--format", "csv"],
        ["info", "{f}"],
        ["record", "--list-sources"],
    ],
    ids=["replay", "sorted-jsonl", "sql", "export-stdout", "info", "list-sources"],
)
def test_closed_pipe_ends_quietly(big_capture: Path, argv: list[str]) -> None:
    """`ebcap replay run.arrow | head -1`: status 0 and nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebcap", *(a.format(f=big_capture) for a in argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout:
        first = proc.stdout.readline()
    with proc.stderr:
        stderr = proc.stderr.read()
    proc.wait(timeout=60)
    assert first, "nothing was written before the pipe closed"
    assert proc.returncode == 0, stderr
    assert stderr == b""


@pytest.mark.parametrize(
    "argv",
    [["replay", "--speed", "0.001", "{f}"], ["replay", "--sorted", "--speed", "0.001", "{f}"]],
    ids=["replay", "sorted"],
)
def test_ctrl_c_ends_a_reading_command_with_one_line(big_capture: Path, argv: list[str]) -> None:
    """A slow replay interrupted: status 130 and `ebcap: interrupted`, no traceback.

    The child starts with SIGINT at its default: run from a background job, the
    test process may have inherited it ignored, and then so would ebcap (rightly).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebcap", *(a.format(f=big_capture) for a in argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # replaying: the first event is out
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr == "ebcap: interrupted\n", stderr
