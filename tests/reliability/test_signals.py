"""Signals: SIGKILL loses at most one flush interval plus the writes in flight,
SIGINT/SIGTERM finish the file, a second Ctrl-C aborts a slow finish at once but
leaves a recoverable file, SIGPIPE on output ends quietly.

The recordings record only a workload process (``--pid``) whose threads, each
pinned to a CPU, call close(FD_BASE + n) with n counting up: the recovered
events are checked against what the workload really did (harness.py).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left
from reliability.harness import (
    assert_numbered_calls,
    assert_per_cpu_time_order,
    assert_syscall_rows_intact,
    ebcap_process,
    ebcap_run,
    numbered_workload,
    run_cli,
    samples_of,
    wait_for,
    workload,
)

from ebcap.bpf.links import loaded_link_ids
from ebcap.format import schema as fs
from ebcap.format.reader import ARROW_MAGIC_PADDED, DAMAGE_ERRORS, CaptureReader
from ebcap.format.writer import ABORT_WAIT_S, partial_path

pytestmark = pytest.mark.privileged

CPUS = sorted(os.sched_getaffinity(0))
FLUSH_S = 0.2
LOOP_SLACK_S = 0.05
"""The recorder decides to flush between drains: a batch is handed to the writer up to one
drain round after its interval is up, and its first row waited up to one round to be
drained. At this load rounds come with the wakeups (every 64 events per CPU, a few ms
apart); the rest is room for scheduling on a shared machine."""
WRITER_KEEPS_UP_S = FLUSH_S / 2
"""At the paced load the writer keeps up: each batch is in the file within half an interval
of its newest event (compressing a few thousand events at zstd level 1 takes about 1 ms)."""
RUN_S = 2.0
PACED = (30.0, 20, 0.002)
"""Per thread: 20 numbered calls every 2 ms, about 10,000 events/s, for at most 30 s."""
BURSTS = (30.0, 20, 0.002)
"""getppid() workload: 20 calls every 2 ms, about 10,000 events/s, for at most 30 s."""
SIZE_POLL_S = 0.002


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


class SizeWatch:
    """When the bytes of a growing file arrived: its size polled every SIZE_POLL_S.

    Bytes the writer has written are in the page cache, so they are what a
    SIGKILL leaves behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start_size = self._size()
        self.changes: list[tuple[int, int]] = [(time.monotonic_ns(), self.start_size)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _poll(self) -> None:
        while not self._stop.wait(SIZE_POLL_S):
            size = self._size()
            if size != self.changes[-1][1]:
                self.changes.append((time.monotonic_ns(), size))

    def next_growth(self, timeout: float = 10.0) -> int:
        """Wait until the file grows; when it did (monotonic ns)."""
        seen, deadline = len(self.changes), time.monotonic() + timeout
        while len(self.changes) == seen:
            assert time.monotonic() < deadline, f"{self.path} stopped growing"
            time.sleep(SIZE_POLL_S)
        return self.changes[seen][0]

    def landed(self, offset: int) -> int | None:
        """When the file first reached ``offset`` bytes; None if it had before the watch."""
        if offset <= self.start_size:
            return None
        return next((when for when, size in self.changes if size >= offset), None)

    @contextmanager
    def running(self) -> Iterator[SizeWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


@dataclass(frozen=True)
class Landed:
    """One batch of a file being written: its newest event, and when it was all in the file
    (None if it was there before the watch began)."""

    newest_ns: int
    landed_ns: int | None

    @property
    def lag_s(self) -> float | None:
        """From the newest event to the batch in the file: drain, queue, compression, write."""
        return None if self.landed_ns is None else (self.landed_ns - self.newest_ns) / 1e9


def batches_landed(partial: Path, sizes: SizeWatch) -> list[Landed]:
    """The batches in ``partial`` as the killed writer left it, with their landing times."""
    found: list[Landed] = []
    with pa.memory_map(str(partial)) as mm:
        mm.seek(len(ARROW_MAGIC_PADDED))
        stream = pa.ipc.open_stream(mm)
        while True:
            try:
                batch = stream.read_next_batch()
            except (StopIteration, *DAMAGE_ERRORS):  # the end, or a batch cut by the kill
                return found
            if batch.num_rows:
                newest = int(pc.max(batch["ts_ns"]).as_py())
                found.append(Landed(newest, sizes.landed(mm.tell())))


def test_sigkill_loses_at_most_one_flush_interval_plus_the_write_in_flight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the design guarantees: every event is handed to the writer within one flush
    interval (plus a drain round or two) of its arrival, and the writer puts the batch in
    the file within its write lag. So a SIGKILL loses at most the last FLUSH_S +
    LOOP_SLACK_S + the write lag of the batch in flight.

    Measured from the file as it grows (its size polled against each batch's newest
    event): the spacing of consecutive batches (the interval part, for every moment of
    the run) and each batch's write lag; the lag of the batch in flight at the kill is
    bounded by the largest one seen. The kill comes one interval after a batch landed,
    just before the next is due: the worst moment.
    """
    programs, links = ebcap_programs(), set(loaded_link_ids())
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    partial = partial_path(out)
    with numbered_workload(ready, CPUS, *PACED) as pid:
        proc = ebcap_process(
            "record", "-o", out, "--pid", pid, "--flush-interval", FLUSH_S, "--ready-file", ready
        )
        wait_for(ready)
        with SizeWatch(partial).running() as sizes:
            time.sleep(RUN_S)
            landed_ns = sizes.next_growth()
            time.sleep(max(0.0, landed_ns / 1e9 + FLUSH_S - time.monotonic()))
            killed_ns = time.monotonic_ns()
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed capture must not look finished"
    batches = batches_landed(partial, sizes)
    fixed = tmp_path / "fixed.arrow"
    outcome = run_cli(capsys, ["recover", partial, "-o", fixed])
    assert outcome.code == 0, outcome.describe()

    spacing = [(b.newest_ns - a.newest_ns) / 1e9 for a, b in itertools.pairwise(batches)]
    lags = [b.lag_s for b in batches if b.lag_s is not None]
    assert len(lags) >= RUN_S / FLUSH_S / 2, f"only {len(lags)} of {len(batches)} seen landing"
    assert max(spacing) <= FLUSH_S + LOOP_SLACK_S, f"batches further apart: {spacing}"
    assert max(lags) <= WRITER_KEEPS_UP_S, f"the writer fell behind: lags {lags}"
    table, metadata, totals = read(fixed)
    samples = samples_of(table)
    assert int(pc.max(samples["ts_ns"]).as_py()) == batches[-1].newest_ns
    lost_s = (killed_ns - batches[-1].newest_ns) / 1e9
    assert lost_s <= FLUSH_S + LOOP_SLACK_S + max(lags), (
        f"the last {lost_s:.3f} s before the kill were lost: more than the flush interval "
        f"{FLUSH_S} + {LOOP_SLACK_S} + the largest write lag {max(lags):.3f} s"
    )
    last = assert_numbered_calls(table, threads=len(CPUS))
    assert totals["lost"] == 0, "the paced workload should lose nothing"
    assert min(last.values()) > 1000, f"too few calls recorded: {last}"
    assert table["seq"].to_pylist() == list(range(table.num_rows)), "rows missing in between"
    assert set(samples["pid"].to_pylist()) == {pid}
    assert_syscall_rows_intact(table)
    assert_per_cpu_time_order(table)
    assert fs.META_RECOVERED in metadata
    assert totals["recovered"] is True and totals["events"] == samples.num_rows
    assert ebcap_programs_left(programs) == set(), "the killed recorder's program stayed"
    assert links_left(links) == set(), "the killed recorder's link stayed"


@pytest.mark.parametrize(
    ("sig", "as_json"),
    [(signal.SIGINT, False), (signal.SIGTERM, True), (signal.SIGHUP, False)],
    ids=["int", "term", "hup"],
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


SLOW_FINISH = ["--zstd-level", "17", "-b", "1M", "--flush-interval", "30"]
"""A finish that takes seconds: zstd level 17 compresses about 30,000 events/s, far below
what the heavy workload makes, so the writer's queue (bounded by bytes, not batches) grows
by every second the recording runs, the rings (1 MiB per CPU) are full at the stop, and
the final batch waits for all of it. The flush interval is long: only the row threshold
flushes."""
BEHIND_S = 2.0
"""How long the recording runs after its first batch is in the file: the queue it leaves
takes seconds to compress even when a busy machine slows the workload down."""
HEAVY = (60.0, 100_000, 0.0)
"""One thread making numbered calls as fast as it can."""
MIN_FINISH_S = 4.0
"""A single Ctrl-C's finish must take at least this long, or the scenario shows nothing."""
ABORT_SHARE = 0.2
"""A second Ctrl-C must end the process within this share of a whole finish (and within
ABORT_S): waiting for even one queued batch at this level takes more."""
ABORT_S = ABORT_WAIT_S + 1.0
"""The abort's own wait for the batch being compressed, plus the process ending."""


def interrupted_recording(
    directory: Path, second_after: float | None
) -> tuple[subprocess.Popen[str], float, str, int]:
    """Record the heavy workload until a batch is in the file and the writer is behind;
    send SIGINT, and a second one ``second_after`` s later unless None. Returns the
    process, the seconds from the last SIGINT to its exit, its stderr, the workload pid."""
    directory.mkdir()
    out, ready = directory / "run.arrow", directory / "ready"
    with numbered_workload(ready, CPUS[:1], *HEAVY) as pid:
        proc = ebcap_process("record", "-o", out, "--pid", pid, *SLOW_FINISH, "--ready-file", ready)
        wait_for(ready)
        with SizeWatch(partial_path(out)).running() as sizes:
            sizes.next_growth(timeout=30)  # a batch is in the file: there is something to keep
        time.sleep(BEHIND_S)
        proc.send_signal(signal.SIGINT)
        if second_after is not None:
            time.sleep(second_after)
            proc.send_signal(signal.SIGINT)
        last_signal = time.monotonic()
        _, stderr = proc.communicate(timeout=300)
        took = time.monotonic() - last_signal
    return proc, took, stderr, pid


def test_second_interrupt_aborts_a_slow_finish_and_leaves_a_recoverable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same slow scenario twice: one Ctrl-C (its finish timed), then two, 0.3 s apart."""
    programs, links = ebcap_programs(), set(loaded_link_ids())
    proc, finish_s, stderr, pid = interrupted_recording(tmp_path / "one", None)
    assert proc.returncode == 0, stderr
    assert finish_s >= MIN_FINISH_S, f"the finish took only {finish_s:.2f} s: not a slow one"
    table, _, totals = read(tmp_path / "one" / "run.arrow")
    assert totals["events"] == samples_of(table).num_rows
    assert_numbered_calls(table, threads=1)

    proc, took, stderr, pid = interrupted_recording(tmp_path / "two", 0.3)
    assert took <= min(ABORT_SHARE * finish_s, ABORT_S), (
        f"the second Ctrl-C took {took:.2f} s to end the recorder; "
        f"a whole finish took {finish_s:.2f} s"
    )
    assert proc.returncode == 130, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("ebcap: interrupted: "), stderr
    out = tmp_path / "two" / "run.arrow"
    assert not out.exists(), "the finish cannot have been done"
    fixed = tmp_path / "fixed.arrow"
    outcome = run_cli(capsys, ["recover", partial_path(out), "-o", fixed])
    assert outcome.code == 0, outcome.describe()
    table, _, totals = read(fixed)
    samples = samples_of(table)
    assert samples.num_rows == totals["events"] >= 1000
    assert set(samples["pid"].to_pylist()) == {pid}
    assert_syscall_rows_intact(table)
    assert_numbered_calls(table, threads=1)
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


def test_second_interrupt_before_any_flush_does_not_claim_the_old_file(tmp_path: Path) -> None:
    """With --force over an earlier capture: the abort leaves that one as it was and says
    so, rather than calling it the capture just finished."""
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    out.write_bytes(b"the capture of before")
    with numbered_workload(ready, CPUS[:1], *HEAVY) as pid:
        # Fewer rows than one batch by the first Ctrl-C, compressed at zstd's slowest
        # level: the finish takes seconds, and the second Ctrl-C lands inside it.
        proc = ebcap_process(
            "record", "-o", out, "--force", "--pid", pid, "--zstd-level", "22",
            "--flush-interval", "30", "--ready-file", ready,
        )  # fmt: skip
        wait_for(ready)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.startswith("ebcap: interrupted: "), stderr
    assert "just been finished" not in stderr
    assert f"{out} is the file of before, untouched" in stderr
    assert out.read_bytes() == b"the capture of before"


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


@pytest.mark.parametrize("closed", ["stdout", "stderr", "stderr-pipe"])
def test_a_closed_or_broken_stream_costs_the_recording_nothing(tmp_path: Path, closed: str) -> None:
    """`ebcap record ... 2>&-`, `>&-` or `2>&1 | head -0`: the file is finished and the
    status is 0; notes (here the buffer rounding) and the summary are best effort."""
    out = tmp_path / "run.arrow"
    argv = [sys.executable, "-m", "ebcap", "record", "-o", str(out), "-b", "5000", "-d", "0.5"]
    fd = {"stdout": 1, "stderr": 2}.get(closed)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if closed == "stderr-pipe" else subprocess.DEVNULL,
        preexec_fn=(lambda: os.close(fd)) if fd is not None else None,
    )
    if proc.stderr is not None:
        proc.stderr.close()  # the reader is gone before the first note
    assert proc.wait(timeout=60) == 0
    table, _, totals = read(out)
    assert samples_of(table).num_rows == totals["events"] > 0


def test_sigterm_to_bench_removes_its_temporary_recording(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    argv = [sys.executable, "-m", "ebcap", "bench", "-t", "ringbuf", "--duration", "10"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("ebcap-bench-*/bench.arrow.partial")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "ebcap: interrupted"
    assert list(tmp_path.iterdir()) == []
