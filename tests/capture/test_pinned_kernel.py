"""`ebcap record --pin --layout --drops` on maps another program pinned.

The other program is ebcap's own bench producer, loaded by the test and
pinned under a bpffs directory the test makes: every event it emitted is in
the file, either as a sample whose payload decodes to the right columns or
counted in a lost row, and the counts add up to the producer's own counters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kernel_helpers import run_pinned

from ebcap.bpf.cpus import online_cpus
from ebcap.bpf.programs.bench import PAD_MAGIC
from ebcap.capture.bench_source import TEST_RUN_PACKET, BenchSource
from ebcap.format import CaptureReader

pytestmark = pytest.mark.privileged

CALLS_PER_CPU = 20_000
LAYOUT = "ts:u64,cpu:u32,seq:u32,pad:u64"
FIRST_FIELDS = "ts:u64,cpu:u32,seq:u32"
"""A layout naming only the first 16 of the event's 24 bytes: the rest is kept in data."""
WHOLE_SIZE = "ts:u64,cpu:u32,seq:u32,pad:8x"
"""Trailing padding: the layout declares the event's whole size."""


@pytest.fixture(params=["ringbuf", "perf"])
def pinned(request: pytest.FixtureRequest) -> Iterator[tuple[BenchSource, Path, str]]:
    """A loaded bench producer with its events map and counters pinned (small buffers)."""
    transport = request.param
    with ExitStack() as stack:
        source = BenchSource(24)
        kernel = source.start(transport, 64 << 10, stack)
        directory = Path(tempfile.mkdtemp(prefix="ebcap-test-", dir="/sys/fs/bpf"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        kernel.events.pin(directory / "events")
        assert source.stats is not None
        source.stats.pin(directory / "stats")
        yield source, directory, transport


def record_while(
    argv: list[object], ready: Path, produce: Callable[[], None]
) -> tuple[int, str, str]:
    """``ebcap ARGV --ready-file READY``: ``produce()`` once the rings are in place, then
    Ctrl-C; (exit code, stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebcap", *map(str, [*argv, "--ready-file", ready])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        produce()
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr


@pytest.mark.parametrize("layout", [LAYOUT, FIRST_FIELDS, WHOLE_SIZE])
def test_every_event_is_a_row_or_counted_lost(
    pinned: tuple[BenchSource, Path, str], tmp_path: Path, layout: str
) -> None:
    source, pins, transport = pinned
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    argv = ["record", "-o", out, "--pin", pins / "events", "--layout", layout]
    argv += ["--drops", f"{pins / 'stats'}:1", "-b", "16K"]
    window: list[int] = []

    def produce() -> None:
        window.append(time.monotonic_ns())
        for cpu in online_cpus():
            run_pinned(cpu, lambda: source.program.test_run(TEST_RUN_PACKET, CALLS_PER_CPU))
        window.append(time.monotonic_ns())

    code, _, stderr = record_while(argv, ready, produce)
    assert code == 0, stderr
    window_start, window_end = window
    produced, dropped = source.counters()
    assert sum(dropped) > 0, "the small buffer should have overflowed"
    with CaptureReader(out) as reader:
        table = reader.to_table()
        totals = reader.totals or {}
        buffer_size = reader.metadata["ebcap.buffer_size"]
    # The size the rings had: our 16 KiB perf rings, or the pinned ring buffer's own 64 KiB.
    assert buffer_size == (16 << 10 if transport == "perf" else 64 << 10)
    if transport == "ringbuf":
        assert "--buffer-size 16K is not used: a pinned ring buffer has its own size" in stderr
    kind = table["kind"].cast(pa.string())
    samples = table.filter(pc.equal(kind, "sample"))
    lost = table.filter(pc.equal(kind, "lost"))
    for cpu in online_cpus():
        mine = samples.filter(pc.equal(samples["cpu"], cpu))
        lost_here = pc.sum(lost.filter(pc.equal(lost["cpu"], cpu))["lost"]).as_py() or 0
        assert mine.num_rows + lost_here == produced[cpu] == CALLS_PER_CPU, (transport, cpu)
        if not mine.num_rows:  # a CPU's whole burst may meet a full ring: all of it lost
            continue
        seqs = mine["ev_seq"].to_numpy()
        assert bool(np.all(np.diff(seqs.astype(np.int64)) > 0)) and seqs.max() < CALLS_PER_CPU
        ts = mine["ts_ns"].to_numpy()
        assert window_start <= ts.min() and ts.max() <= window_end
        # Perf pads a 24-byte event's raw data to 28: trimmed only when the layout
        # declares the event's size with trailing padding; a layout ending in a field
        # may name only the first ones, so all 28 bytes are kept, as libbpf hands them.
        sizes = set(pc.binary_length(mine["data"]).to_pylist())
        assert sizes == {28 if transport == "perf" and layout != WHOLE_SIZE else 24}
        whole = b"".join(row[:24] for row in mine["data"].to_pylist())
        payload = np.frombuffer(whole, dtype="<u8").reshape(-1, 3)
        assert np.array_equal(payload[:, 0], ts)
        assert np.array_equal(payload[:, 2], ts ^ np.uint64(PAD_MAGIC))
        if layout == LAYOUT:
            assert np.array_equal(mine["pad"].to_numpy(), payload[:, 2])
    assert samples.num_rows > 0
    assert totals["events"] == samples.num_rows
    assert totals["lost"] == sum(produced) - samples.num_rows
    if transport == "ringbuf":  # no kernel count: the drops counter is the only record
        assert totals["drops_per_cpu"] == {c: n for c, n in enumerate(dropped) if n}
    assert os.path.exists(pins / "events"), "ebcap must not unpin someone else's map"


@pytest.mark.parametrize(
    ("drops", "says"),
    [
        ("events", "not a PERCPU_ARRAY"),
        ("stats:2", "no u64 number 2"),
        ("nosuch", "no BPF map"),
        ("stats:x", "must be a number"),
        ("", "is a directory"),
    ],
)
def test_a_wrong_drop_counter_is_refused(
    pinned: tuple[BenchSource, Path, str], tmp_path: Path, drops: str, says: str
) -> None:
    _, pins, _ = pinned
    out = tmp_path / "run.arrow"
    argv = ["record", "-o", out, "--pin", pins / "events", "--drops", pins / drops, "-d", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "ebcap", *map(str, argv)], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr and "--drops" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["directory", "file", "missing"])
def test_a_pin_that_is_no_map_is_one_usage_line(tmp_path: Path, where: str) -> None:
    """Before BPF_OBJ_GET, which answers EACCES for a directory or a file off bpffs."""
    path = {"directory": tmp_path, "file": tmp_path / "x.bin", "missing": tmp_path / "no"}[where]
    if where == "file":
        path.write_bytes(b"not a map")
    says = {"directory": "is a directory", "file": "not on a bpf filesystem", "missing": "no BPF"}
    argv = ["record", "-o", tmp_path / "run.arrow", "--pin", path, "-d", "0.3"]
    done = subprocess.run(
        [sys.executable, "-m", "ebcap", *map(str, argv)], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert says[where] in done.stderr and f"--pin {path}" in done.stderr
    assert not (tmp_path / "run.arrow").exists()


def test_a_pinned_ring_buffer_without_drop_counter_says_so(
    pinned: tuple[BenchSource, Path, str], tmp_path: Path
) -> None:
    _, pins, transport = pinned
    argv = ["record", "-o", tmp_path / "run.arrow", "--pin", pins / "events", "-d", "0.3"]
    done = subprocess.run(
        [sys.executable, "-m", "ebcap", *map(str, argv)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    noted = "without --drops" in done.stderr
    assert noted == (transport == "ringbuf"), done.stderr


@pytest.mark.parametrize("pinned", ["perf"], indirect=True)
def test_a_pinned_perf_map_without_drop_counter_counts_every_loss(
    pinned: tuple[BenchSource, Path, str], tmp_path: Path
) -> None:
    """Without --drops, the kernel's own count of each perf event's lost samples finds
    the losses no LOST record reported: those of a burst that ends on a full ring."""
    source, pins, _ = pinned
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    argv = ["record", "-o", out, "--pin", pins / "events", "--layout", WHOLE_SIZE, "-b", "4K"]

    def produce() -> None:
        for cpu in online_cpus():
            run_pinned(cpu, lambda: source.program.test_run(TEST_RUN_PACKET, CALLS_PER_CPU))

    code, _, stderr = record_while(argv, ready, produce)
    assert code == 0, stderr
    produced, dropped = source.counters()
    with CaptureReader(out) as reader:
        table = reader.to_table()
    kind = table["kind"].cast(pa.string())
    for cpu in online_cpus():
        here = table.filter(pc.equal(table["cpu"], cpu))
        samples = pc.sum(pc.equal(here["kind"].cast(pa.string()), "sample")).as_py()
        lost = pc.sum(
            here.filter(pc.equal(kind.filter(pc.equal(table["cpu"], cpu)), "lost"))["lost"]
        )
        assert dropped[cpu] > 0, "the 4 KiB ring should have overflowed"
        assert samples + (lost.as_py() or 0) == produced[cpu] == CALLS_PER_CPU, cpu


@pytest.mark.parametrize("pinned", ["ringbuf"], indirect=True)
def test_a_pinned_ring_buffer_without_ts_or_cpu_fields_says_what_it_stores(
    pinned: tuple[BenchSource, Path, str], tmp_path: Path
) -> None:
    """A ring buffer record carries no time and no CPU: without layout fields for them,
    ts_ns is when the drain read the event (after it was made) and cpu is 65535."""
    source, pins, _ = pinned
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    window: list[int] = []

    def produce() -> None:
        window.append(time.monotonic_ns())
        run_pinned(0, lambda: source.program.test_run(TEST_RUN_PACKET, 500))

    argv = ["record", "-o", out, "--pin", pins / "events", "--layout", "a:u64"]
    code, _, stderr = record_while(argv, ready, produce)
    ended = time.monotonic_ns()
    assert code == 0, stderr
    assert "ts_ns is when each event was read" in stderr and "cpu is 65535" in stderr
    with CaptureReader(out) as reader:
        table = reader.to_table()
    assert table.num_rows == 500
    assert set(table["cpu"].to_pylist()) == {65535}
    read = table["ts_ns"].to_numpy()
    made = np.frombuffer(b"".join(table["data"].to_pylist()), dtype="<u8").reshape(-1, 3)[:, 0]
    assert bool(np.all(made <= read)) and window[0] <= made.min() and read.max() <= ended


def test_a_pinned_map_refuses_a_source_and_notes_an_unused_transport(
    pinned: tuple[BenchSource, Path, str], tmp_path: Path
) -> None:
    _, pins, transport = pinned
    base = ["record", "-o", tmp_path / "run.arrow", "--pin", pins / "events", "-d", "0.3"]

    def ebcap(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "ebcap", *map(str, [*base, *extra])]
        return subprocess.run(argv, capture_output=True, text=True)

    refused = ebcap("-s", "tracepoint:sched:sched_switch")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--source tracepoint:sched:sched_switch does not go with it" in refused.stderr
    other = "perf" if transport == "ringbuf" else "ringbuf"
    noted = ebcap("-t", other, "--force")
    assert noted.returncode == 0, noted.stderr
    assert f"--transport {other} is not used: the pinned map is a" in noted.stderr
    assert "is not used" not in ebcap("-t", transport, "--force").stderr


def test_a_layout_longer_than_the_events_is_reported(
    pinned: tuple[BenchSource, Path, str], tmp_path: Path
) -> None:
    """Every 24-byte event is short of a 32-byte layout: kept, columns null, and said."""
    source, pins, _ = pinned
    out, ready = tmp_path / "run.arrow", tmp_path / "ready"
    argv = ["record", "-o", out, "--pin", pins / "events", "--layout", f"{LAYOUT},more:u64"]

    def produce() -> None:
        run_pinned(0, lambda: source.program.test_run(TEST_RUN_PACKET, 500))

    code, stdout, stderr = record_while([*argv, "--json"], ready, produce)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["events"] > 0 and summary["undecodable"] == summary["events"]
    assert f"{summary['events']:,} of {summary['events']:,} events were shorter" in stderr
    info = subprocess.run(
        [sys.executable, "-m", "ebcap", "info", str(out), "--json"], capture_output=True, text=True
    )
    assert json.loads(info.stdout)["undecodable"] == summary["events"]
    text = subprocess.run([sys.executable, "-m", "ebcap", "info", str(out)], capture_output=True)
    assert b"events shorter than the payload layout" in text.stdout
    with CaptureReader(out) as reader:
        table = reader.to_table()
    samples = table.filter(pc.equal(table["kind"].cast(pa.string()), "sample"))
    assert samples["more"].null_count == samples.num_rows
