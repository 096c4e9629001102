"""`ebcap record` on the real kernel: syscall events checked against a known workload."""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left, open_fds, run_pinned

from ebcap.bpf.cpus import online_cpus
from ebcap.capture.recorder import Recorder, RecordOptions
from ebcap.capture.sources import SyscallsSource
from ebcap.format.reader import CaptureReader

pytestmark = pytest.mark.privileged

GETPPID = 110
CALLS = 2000
BUSY_LOOP = """
import os, time
end = time.monotonic() + 20
while time.monotonic() < end:
    os.getppid()
"""


def _record_workload(tmp_path: Path, transport: str) -> tuple[pa.Table, dict, int, int]:
    """Record this process's syscalls while pinned threads call getppid CALLS times per CPU."""
    cpus = online_cpus()
    tids: dict[int, int] = {}
    window: list[int] = []
    done = []

    def workload() -> None:
        window.append(time.monotonic_ns())
        for cpu in cpus:
            tids[cpu] = run_pinned(cpu, lambda: [os.getppid() for _ in range(CALLS)])
        window.append(time.monotonic_ns())
        done.append(True)

    source = SyscallsSource(pid=os.getpid(), exclude_pid=0)
    options = RecordOptions(
        output=tmp_path / f"{transport}.arrow", transport=transport, buffer_bytes=4 << 20
    )
    summary = Recorder(source, options).run(should_stop=lambda: bool(done), on_started=workload)
    with CaptureReader(summary.path) as reader:
        table = reader.to_table()
        totals = reader.totals
    return table, {"tids": tids, "summary": summary, "totals": totals}, window[0], window[1]


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_record_syscalls_matches_workload(tmp_path: Path, transport: str) -> None:
    before = ebcap_programs()
    table, info, t0, t1 = _record_workload(tmp_path, transport)
    tids = info["tids"]
    assert pc.sum(table["lost"]).as_py() in (0, None)
    seq = table["seq"].to_numpy()
    assert (seq[1:] > seq[:-1]).all(), "seq must be strictly increasing"
    assert table["pid"].to_pylist().count(os.getpid()) == table.num_rows
    for cpu, tid in tids.items():
        mine = table.filter(
            pc.and_(pc.equal(table["tid"], tid), pc.equal(table["syscall_nr"], GETPPID))
        )
        assert mine.num_rows == CALLS, f"CPU {cpu}: {mine.num_rows} getppid events of {CALLS}"
        assert set(mine["cpu"].to_pylist()) == {cpu}
        assert set(mine["syscall"].to_pylist()) == {"getppid"}
        ts = mine["ts_ns"].to_numpy()
        assert t0 <= ts.min() and ts.max() <= t1
        data = mine["data"][0].as_py()
        assert int.from_bytes(data[:8], "little") == ts[0]
    assert set(table["cpu"].to_pylist()) >= set(tids)
    assert info["totals"]["events"] == table.num_rows  # no lost rows: every row a sample
    assert info["totals"]["drops"] == 0, "events emitted before the rings were installed"
    assert ebcap_programs_left(before) == set()


def test_record_releases_every_fd(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    _record_workload(tmp_path / "first", "perf")  # warm imports and lazy fds
    before = open_fds()
    _record_workload(tmp_path / "second", "perf")
    _record_workload(tmp_path / "second", "ringbuf")
    assert open_fds() == before


def _ebcap(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ebcap", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_cli_record_excludes_itself_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "run.arrow"
    workload = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        proc = _ebcap("record", "-o", str(out), "--duration", "1", "--json")
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        workload.kill()
        workload.wait()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    with CaptureReader(out) as reader:
        table = reader.to_table()
        assert reader.metadata["ebcap.transport"] == "perf"
    samples = table.filter(pc.equal(table["kind"].cast(pa.string()), "sample"))
    assert summary["events"] == samples.num_rows > 0
    assert summary["lost"] == (pc.sum(table["lost"]).as_py() or 0)
    pids = set(table["pid"].to_pylist())
    assert proc.pid not in pids, "ebcap recorded its own syscalls"
    assert workload.pid in pids
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_sigterm_finishes_a_complete_file(tmp_path: Path) -> None:
    before = ebcap_programs()
    out = tmp_path / "term.arrow"
    proc = _ebcap("record", "-o", str(out), "--transport", "ringbuf")
    deadline = time.monotonic() + 20
    while not Path(str(out) + ".partial").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "recorded" in stderr
    with CaptureReader(out) as reader:
        assert reader.num_rows > 0
        assert reader.totals is not None
    assert not Path(str(out) + ".partial").exists()
    assert ebcap_programs_left(before) == set()


@pytest.mark.parametrize(
    ("transport", "asked", "used", "note"),
    [
        ("perf", "5000", 8192, "ebcap: note: --buffer-size 5000 rounded up to 8192 bytes per CPU"),
        ("perf", "12K", 16384, "ebcap: note: --buffer-size 12K rounded up to 16384 bytes per CPU"),
        ("perf", "8K", 8192, None),
        ("ringbuf", "64K", 65536, None),
    ],
)
def test_the_file_records_the_ring_size_used_and_rounding_is_said(
    tmp_path: Path, transport: str, asked: str, used: int, note: str | None
) -> None:
    assert mmap.PAGESIZE == 4096  # the sizes above are in 4 KiB pages
    out = tmp_path / "sized.arrow"
    proc = _ebcap("record", "-o", str(out), "-t", transport, "-b", asked, "--duration", "0.3")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    notes = [line for line in lines if line.startswith("ebcap: note:")]
    if note is None:
        assert notes == []
    else:
        assert notes == [note + " (a perf ring is a power of two of pages)"]
    assert lines[-1].startswith("recorded ")
    with CaptureReader(out) as reader:
        assert reader.metadata["ebcap.buffer_size"] == used
    info = subprocess.run(
        [sys.executable, "-m", "ebcap", "info", str(out)], capture_output=True, text=True
    )
    assert f"buffer {used // 1024}.0 KiB" in info.stdout, info.stdout


def test_a_wakeup_a_ring_buffer_does_not_use_is_noted_not_dropped(tmp_path: Path) -> None:
    out = tmp_path / "rb.arrow"
    proc = _ebcap("record", "-o", str(out), "-t", "ringbuf", "--wakeup", "8", "--duration", "0.3")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stderr.splitlines()[0] == (
        "ebcap: note: --wakeup 8 is not used: a ring buffer wakes its reader by its own rule "
        "(when the reader has caught up)"
    )
    with CaptureReader(out) as reader:
        assert reader.metadata["ebcap.wakeup"] == "ringbuf:adaptive"


def test_both_threads_fault_their_memory_in_before_events_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain's and the writer's first batches reuse pages mapped before the
    producer could start (the first batches used to fault every page in)."""
    import threading

    from ebcap.capture import recorder

    calls: list[str] = []
    real = recorder.fault_in

    def noted(*size: int) -> None:
        calls.append(threading.current_thread().name)
        real(*size)

    monkeypatch.setattr(recorder, "fault_in", noted)
    options = RecordOptions(output=tmp_path / "warm.arrow", transport="ringbuf", duration_s=0.2)
    source = SyscallsSource(pid=os.getpid(), exclude_pid=0)
    Recorder(source, options).run(on_started=lambda: calls.append("started"))
    assert calls == ["ebcap writer warm.arrow", threading.current_thread().name, "started"]
