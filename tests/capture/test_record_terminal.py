"""`ebcap record` on a terminal: the live progress, and the warning colour of a loss.

The command runs with stdout and stderr on a pseudo-terminal (what a person
sees), and again on pipes (what a script sees: no escape codes at all). Loss
is forced with one-page rings under a syscall storm on every CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability.harness import workload

from ebcap.bpf.cpus import online_cpus

pytestmark = pytest.mark.privileged

ROWS, COLUMNS = 50, 160
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
BOLD_YELLOW_NUMBER = re.compile(rb"\x1b\[1;33m[0-9,]*[1-9][0-9,]*\x1b\[0m")
"""How rich draws a non-zero lost count in the live table ([bold yellow])."""
YELLOW_SUMMARY = b"\x1b[33m\x1b[1mrecorded "
"""How the closing line starts when something was lost (click: yellow, bold)."""
CPU_ROW = re.compile(
    r"^\s*cpu(\d+)\s+([\d,]+)\s+([\d.]+[kMG]?)\s+([\d,]+)\s+([\d.]+ (?:B|KiB|MiB|GiB))\s*$"
)
"""A per-CPU progress row: events, events/s, lost, bytes (drops are all-CPU only)."""
LOSSY = ["-b", "4096", "--wakeup", "100000", "--duration", "3"]


def terminal_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(ROWS)}


def on_terminal(argv: list[str], timeout: float = 60) -> tuple[int, bytes]:
    """Run ``ebcap ARGV`` with stdout and stderr on a pty; returns (exit code, all bytes)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebcap", *argv],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=terminal_env(),
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        return proc.wait(timeout=max(deadline - time.monotonic(), 1)), bytes(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)


@contextlib.contextmanager
def syscall_storm(seconds: float) -> Iterator[list[int]]:
    """A getppid loop on every CPU; yields their pids."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(workload(seconds, 100_000, 0.0)) for _ in online_cpus()]


def plain_lines(output: bytes) -> list[str]:
    return ANSI.sub(b"", output).decode(errors="replace").replace("\r", "\n").splitlines()


def test_live_progress_and_a_loss_in_warning_colour(tmp_path: Path) -> None:
    with syscall_storm(30):
        code, output = on_terminal(["record", "-o", str(tmp_path / "lossy.arrow"), *LOSSY])
    assert code == 0, output[-2000:]
    lines = plain_lines(output)
    headers = [line.split() for line in lines if "events/s" in line]
    assert headers, "no live progress was drawn"
    assert headers[-1][1:] == ["events", "events/s", "lost", "drops", "bytes"]
    rows = [m for line in lines if (m := CPU_ROW.match(line))]
    assert {int(m[1]) for m in rows} >= set(online_cpus()), "a CPU has no progress row"
    assert any(m[2] != "0" and m[3] != "0" and not m[5].startswith("0 ") for m in rows)
    assert BOLD_YELLOW_NUMBER.search(output), "a non-zero loss is not in bold yellow"
    assert YELLOW_SUMMARY in output, "the closing line of a lossy capture is not in yellow"
    summary = [line for line in lines if line.startswith("recorded ")]
    assert len(summary) == 1 and " lost 0," not in summary[0]


def test_no_loss_no_warning_colour(tmp_path: Path) -> None:
    with workload(30, 5, 0.01) as pid:
        out = str(tmp_path / "calm.arrow")
        code, output = on_terminal(["record", "-o", out, "--pid", str(pid), "--duration", "1.5"])
    assert code == 0, output[-2000:]
    assert b"events/s" in ANSI.sub(b"", output)
    summary = [line for line in plain_lines(output) if line.startswith("recorded ")]
    assert len(summary) == 1 and " lost 0, drops 0," in summary[0]
    assert YELLOW_SUMMARY not in output and not BOLD_YELLOW_NUMBER.search(output)


@pytest.mark.parametrize("as_json", [False, True])
def test_no_escape_codes_off_a_terminal(tmp_path: Path, as_json: bool) -> None:
    argv = ["record", "-o", str(tmp_path / "piped.arrow"), *LOSSY, *(["--json"] * as_json)]
    with syscall_storm(30):
        done = subprocess.run(
            [sys.executable, "-m", "ebcap", *argv],
            capture_output=True,
            env=terminal_env(),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert b"\x1b" not in done.stdout and b"\x1b" not in done.stderr
    assert b"events/s" not in done.stderr  # no live progress either
    if as_json:
        assert done.stdout.startswith(b"{") and b'"lost": 0,' not in done.stdout
    else:
        assert done.stderr.startswith(b"recorded ") and b" lost 0," not in done.stderr
