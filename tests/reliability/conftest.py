"""Fixtures of the reliability tests: real small captures recorded once per session."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from reliability.harness import ebcap_process, numbered_workload, wait_for, workload

from ebcap.format.reader import CaptureReader

CAPTURES = {
    # name: (record arguments, workload (seconds, burst, pause) or None)
    "perf": (["--count", "120", "--flush-interval", "0.03", "--wakeup", "4"], (10.0, 5, 0.01)),
    "ringbuf": (["-t", "ringbuf", "--count", "120", "--flush-interval", "0.03"], (10.0, 5, 0.01)),
    "tracepoint": (["-s", "tracepoint:sched:sched_switch", "--count", "40"], None),
    "getppid": (
        [
            *("-s", "tracepoint:syscalls:sys_enter_getppid", "--count", "24"),
            *("--flush-interval", "0.03", "--wakeup", "2"),
        ],
        (10.0, 2, 0.01),
    ),
}
"""Small real captures: multi-batch perf and ring buffer, tracepoints (``getppid``: few
columns and several batches, small enough to cut thousands of times). The syscalls captures
record only their workload (--pid)."""

LOST_RECORD_ARGS = ["-b", "4096", "--wakeup", "4096", "--count", "400"]
"""The ``lost`` capture: perf with lost records, from a one-page ring (about 25 events)."""

LOST_STALL_S = 0.3
"""How long the ``lost`` recorder stays stopped while its workload runs without pause."""


ALONE = ("getppid",)
"""Recorded after the others: their workloads call getppid() too."""


@pytest.fixture(scope="session")
def captures() -> Iterator[dict[str, Path]]:
    """The corpus, recorded by `ebcap record` once per session (needs root)."""
    directory = Path(tempfile.mkdtemp(prefix="ebcap-corpus-"))
    try:
        paths: dict[str, Path] = {"lost": _record_stalled(directory)}
        together = [name for name in CAPTURES if name not in ALONE]
        for group in (together, *([name] for name in ALONE)):
            paths.update(_record_together(directory, group))
        with CaptureReader(paths["lost"]) as reader:
            assert (reader.totals or {}).get("lost", 0) > 0, "the lost capture lost nothing"
        for name in ("perf", "getppid"):
            with CaptureReader(paths[name]) as reader:
                assert reader.num_batches >= 3, f"the {name} capture should span several batches"
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _record_together(directory: Path, names: list[str]) -> dict[str, Path]:
    """Record the captures ``names`` at the same time, each with its own workload."""
    with ExitStack() as stack:
        running = {}
        for name in names:
            args, load = CAPTURES[name]
            only: list[str] = []
            if load is not None:
                pid = stack.enter_context(workload(*load))
                only = [] if "-s" in args else ["--pid", str(pid)]
            path = directory / f"{name}.arrow"
            running[name] = (ebcap_process("record", "-o", path, *only, *args), path)
        for name, (proc, _) in running.items():
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"recording the {name} capture failed: {stderr}"
    return {name: path for name, (_, path) in running.items()}


def _record_stalled(directory: Path) -> Path:
    """The ``lost`` capture, with a loss that does not depend on timing: the recorder is
    stopped (SIGSTOP) once it is attached, and only then does its workload start calling
    close() without pause, far more often than a one-page ring holds."""
    path, ready, go = (directory / f"lost.{suffix}" for suffix in ("arrow", "ready", "go"))
    with numbered_workload(go, cpus=[0], seconds=10.0, burst=100_000, pause=0.0) as pid:
        proc = ebcap_process(
            "record", "-o", path, "--pid", pid, "--ready-file", ready, *LOST_RECORD_ARGS
        )
        try:
            wait_for(ready)
            proc.send_signal(signal.SIGSTOP)
            go.touch()
            time.sleep(LOST_STALL_S)
            proc.send_signal(signal.SIGCONT)
            _, stderr = proc.communicate(timeout=120)
        except BaseException:
            proc.kill()  # stopped or not: no recorder outlives the fixture
            proc.wait()
            raise
    assert proc.returncode == 0, f"recording the lost capture failed: {stderr}"
    return path


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A scratch directory in memory: thousands of small files cost nothing to write."""
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    directory = Path(tempfile.mkdtemp(prefix="ebcap-fuzz-", dir=root))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
