"""Bad command-line values: one error line, exit 2, and no file left behind.

Every case runs in a directory of its own holding one valid capture; after
the run the directory must hold exactly what it held before (no output, no
``.partial``, no temporary file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from reliability.harness import assert_one_line_error, files_in, run_cli

from ebcap.format import CaptureWriter, make_schema
from ebcap.format import schema as fs

IN = "in.arrow"
"""The capture each case may read; {in} / {dir} in a case stand for it and its directory."""

READING = {
    "replay unknown format": ["replay", "{in}", "--format", "xml"],
    "replay bad cpu list": ["replay", "{in}", "--cpu", "1-x"],
    "replay cpu beyond any": ["replay", "{in}", "--cpu", "99999999999999999999"],
    "replay unknown kind": ["replay", "{in}", "--kind", "dropped"],
    "replay negative limit": ["replay", "{in}", "--limit", "-1"],
    "replay zero speed": ["replay", "{in}", "--speed", "0"],
    "replay output is the input": ["replay", "{in}", "-o", "{in}"],
    "replay into parquet": ["replay", "{in}", "-o", "{dir}/x.parquet"],
    "replay output in a missing directory": ["replay", "{in}", "-o", "{dir}/no/such/x.jsonl"],
    "replay output name without format": ["replay", "{in}", "-o", "{dir}/x.xyz"],
    "sql syntax error": ["sql", "{in}", "SELEC cpu FROM events"],
    "sql unknown table": ["sql", "{in}", "SELECT * FROM nosuch"],
    "sql unknown column": ["sql", "{in}", "SELECT nosuch FROM events"],
    "sql empty query": ["sql", "{in}", "  "],
    "sql unknown format": ["sql", "{in}", "SELECT 1", "--format", "xml"],
    "sql output is the input": ["sql", "{in}", "SELECT 1", "-o", "{in}"],
    "sql output in a missing directory": ["sql", "{in}", "SELECT 1", "-o", "{dir}/no/x.csv"],
    "export unknown format": ["export", "{in}", "-o", "{dir}/x.out", "--format", "xml"],
    "export output name without format": ["export", "{in}", "-o", "{dir}/x.xyz"],
    "export output is the input": ["export", "{in}", "-o", "{in}", "--format", "csv"],
    "export output in a missing directory": ["export", "{in}", "-o", "{dir}/no/x.parquet"],
    "export output is a directory": ["export", "{in}", "-o", "{dir}", "--format", "csv"],
    "export pcapng of a syscalls capture": ["export", "{in}", "-o", "{dir}/x.pcapng"],
    "reorder plot is the input": ["reorder", "{in}", "--plot", "{in}"],
    "reorder plot in a missing directory": ["reorder", "{in}", "--plot", "{dir}/no/x.png"],
    "recover onto itself": ["recover", "{in}", "-o", "{in}"],
    "recover into a missing directory": ["recover", "{in}", "-o", "{dir}/no/x.arrow"],
    "info of a missing file": ["info", "{dir}/missing.arrow"],
    "info of a directory": ["info", "{dir}"],
    "replay empty input name": ["replay", ""],
    "replay empty output name": ["replay", "{in}", "-o", ""],
    "sql empty input name": ["sql", "", "SELECT 1"],
    "sql empty output name": ["sql", "{in}", "SELECT 1", "-o", ""],
    "export empty input name": ["export", "", "-o", "{dir}/x.csv"],
    "export empty output name": ["export", "{in}", "-o", "", "--format", "csv"],
    "reorder empty input name": ["reorder", ""],
    "reorder empty plot name": ["reorder", "{in}", "--plot", ""],
    "recover empty input name": ["recover", "", "-o", "{dir}/x.arrow"],
    "recover empty output name": ["recover", "{in}", "-o", ""],
    "recover to stdout": ["recover", "{in}", "-o", "-"],
    "recover onto a device": ["recover", "{in}", "-o", "/dev/null", "--force"],
    "unknown option": ["info", "--nosuch", "{in}"],
    "unknown command": ["nosuch", "{in}"],
}


def write_capture(path: Path) -> None:
    schema = make_schema(
        [pa.field("syscall", pa.string())],
        {fs.META_TRANSPORT: "perf", fs.META_SOURCE: "syscalls", fs.META_REALTIME_OFFSET: "0"},
    )
    n = 8
    with CaptureWriter(path, schema) as writer:
        writer.write(
            {
                "seq": np.arange(n, dtype=np.uint64),
                "cpu": np.arange(n, dtype=np.uint16) % 2,
                "ts_ns": 1000 + np.arange(n, dtype=np.uint64),
                "kind": np.zeros(n, np.int8),
                "lost": np.zeros(n, np.uint64),
                "round": np.zeros(n, np.uint32),
                "data": [b"x" * 12] * n,
                "syscall": ["read"] * n,
            }
        )


def expand(argv: list[str], directory: Path) -> list[str]:
    return [a.format(**{"in": directory / IN, "dir": directory}) for a in argv]


def check_refused(
    capsys: pytest.CaptureFixture[str], directory: Path, argv: list[str], mentions: str = ""
) -> None:
    before = files_in(directory)
    outcome = run_cli(capsys, expand(argv, directory))
    assert_one_line_error(outcome, code=2, mentions=mentions)
    assert files_in(directory) == before, "a refused command left a file behind"


@pytest.mark.parametrize("case", sorted(READING))
def test_reading_commands(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_capture(tmp_path / IN)
    check_refused(capsys, tmp_path, READING[case])


RECORDING = {
    "unknown source": (["-s", "nosuch"], "unknown source"),
    "output is a device": (["-o", "/dev/null", "--force"], "not a regular file"),
    "unknown transport": (["-t", "carrier-pigeon"], "unknown transport"),
    "buffer size not a size": (["-b", "12Q"], "--buffer-size"),
    "buffer size zero": (["-b", "0"], "--buffer-size"),
    "ring buffer not a power of two": (["-t", "ringbuf", "-b", "12288"], "power of two"),
    "wakeup zero": (["--wakeup", "0"], "--wakeup"),
    "wakeup not a number": (["--wakeup", "soon"], "--wakeup"),
    "layout without a pin": (["--layout", "ts:u64"], "--layout"),
    "drops without a pin": (["--drops", "/sys/fs/bpf/counters"], "--drops"),
    "bad layout": (["--pin", "/sys/fs/bpf", "--layout", "ts:u65"], "bad layout"),
    "layout without fields": (["--pin", "/sys/fs/bpf", "--layout", "4x"], "bad layout"),
    "pin that does not exist": (["--pin", "/sys/fs/bpf/ebcap-nosuch"], "ebcap-nosuch"),
    "unknown tracepoint": (["-s", "tracepoint:nosuch:thing"], "nosuch:thing"),
    "malformed tracepoint": (["-s", "tracepoint:sched"], "tracepoint"),
    "ftrace's own event": (["-s", "tracepoint:ftrace:function"], "takes no BPF program"),
    "unknown interface": (["-s", "xdp:ebcapnosuch0"], "ebcapnosuch0"),
    "tc without direction word": (["-s", "tc:lo:sideways"], "sideways"),
    "snaplen for syscalls": (["--snaplen", "100"], "--snaplen"),
    "pid for a tracepoint": (["-s", "tracepoint:sched:sched_switch", "--pid", "1"], "--pid"),
    "comm for xdp": (["-s", "xdp:lo", "--comm", "bash"], "--comm"),
    "comm too long": (["--comm", "a-command-name-too-long"], "--comm"),
    "cpu that is not online": (["--cpus", "4096"], "--cpus"),
    "empty cpu list": (["--cpus", ""], "--cpus: empty CPU list"),
    "bad cpu list": (["--cpus", "0-x"], "--cpus: bad CPU list"),
    "negative pid": (["--pid", "-1"], "--pid -1 is not a process id"),
    "pid above pid_max": (["--pid", "99999999"], "--pid 99999999 is not a process id: use 1.."),
    "cpus with a ring buffer": (["-t", "ringbuf", "--cpus", "0"], "--cpus"),
    "negative duration": (["--duration", "-1"], "--duration"),
    "zero count": (["--count", "0"], "--count"),
    "zero flush interval": (["--flush-interval", "0"], "--flush-interval"),
    "zstd level too high": (["--zstd-level", "23"], "--zstd-level"),
    "no output": ([], "--output"),
    "output in a missing directory": (["-o", "{dir}/no/such/run.arrow"], "does not exist"),
    "output is a directory": (["-o", "{dir}"], "directory"),
    "output exists": (["-o", "{in}"], "exists"),
    "empty output name": (["-o", ""], "-o/--output: the file name is empty"),
    "output to stdout": (["-o", "-"], "cannot go to stdout"),
    "buffer size below a page": (["-b", "3"], "--buffer-size 3: "),
    "ring buffer below a page": (["-t", "ringbuf", "-b", "3"], "--buffer-size 3: "),
    "perf buffer over the kernel's limit": (["-b", "64G"], "--buffer-size 64G: "),
    "ring buffer of 4G": (["-t", "ringbuf", "-b", "4G"], "--buffer-size 4G: "),
    "ring buffer of 8G": (["-t", "ringbuf", "-b", "8G"], "--buffer-size 8G: "),
    "duration nan": (["--duration", "nan"], "--duration"),
    "duration inf": (["--duration", "inf"], "--duration"),
    "duration -inf": (["--duration", "-inf"], "--duration"),
    "flush interval nan": (["--flush-interval", "nan"], "--flush-interval"),
    "ready file in a missing directory": (["--ready-file", "/nonexistent/r"], "--ready-file"),
    "ready file is the output": (["--ready-file", "{dir}/run.arrow"], "--ready-file"),
    "ready file is the .partial": (["--ready-file", "{dir}/run.arrow.partial"], "--ready-file"),
    "ready file is a directory": (["--ready-file", "{dir}"], "--ready-file"),
    "empty ready file name": (["--ready-file", ""], "--ready-file"),
    "ready file in /proc": (["--ready-file", "/proc/ebcap-ready"], "cannot create files in /proc"),
    "bad wakeup with a ring buffer": (["-t", "ringbuf", "--wakeup", "soon"], "--wakeup"),
    "watermark as large as the ring": (["-b", "64K", "--wakeup", "64K"], "--wakeup 64K: "),
    "watermark over the default ring": (["--wakeup", "16M"], "--wakeup 16M: "),
    "wakeup a superscript digit": (["--wakeup", "²"], "--wakeup"),
    "drops N a superscript digit": (["--pin", "/sys/fs/bpf", "--drops", "/x:²"], "--drops"),
    "layout padding too large": (
        ["--pin", "/sys/fs/bpf", "--layout", "p:3000000000x,a:u8"],
        "padding",
    ),
    "list-sources with a recording option": (
        ["--list-sources", "sched:*"],
        "--list-sources takes only",
    ),
}


@pytest.mark.privileged
@pytest.mark.parametrize("case", sorted(RECORDING))
def test_record(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_capture(tmp_path / IN)
    args, mentions = RECORDING[case]
    if "-o" not in args and case != "no output":
        args = ["-o", "{dir}/run.arrow", *args]
    check_refused(capsys, tmp_path, ["record", "--duration", "1", *args], mentions)


BENCH = {
    "event size not a multiple of 8": (["--size", "13"], "--size"),
    "event size too large": (["--size", "8192"], "--size"),
    "producer cpu not online": (["--producers", "4096"], "--producers"),
    "producers not a cpu list": (["--producers", "a"], "--producers: bad CPU list"),
    "perf event larger than the ring": (["-t", "perf", "--size", "4096", "-b", "4K"], "cannot fit"),
    "ring buffer event larger than the ring": (["--size", "4096", "-b", "4K"], "cannot fit"),
    "wakeup a superscript digit": (["--wakeup", "²"], "--wakeup"),
    "unknown transport": (["-t", "carrier-pigeon"], "--transport"),
    "zero duration": (["--duration", "0"], "--duration"),
    "duration nan": (["--duration", "nan"], "--duration"),
    "duration inf": (["--duration", "inf"], "--duration"),
    "empty output name": (["-o", ""], "-o/--output: the file name is empty"),
    "output to stdout": (["-o", "-"], "cannot go to stdout"),
    "bad wakeup with a ring buffer": (["--wakeup", "0"], "--wakeup"),
    "buffer size below a page": (["-t", "perf", "-b", "3"], "--buffer-size 3: "),
    "ring buffer of 4G": (["-b", "4G"], "--buffer-size 4G: "),
    "watermark over the ring": (["-t", "perf", "-b", "8K", "--wakeup", "8K"], "--wakeup 8K: "),
}


@pytest.mark.privileged
@pytest.mark.parametrize("case", sorted(BENCH))
def test_bench(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, mentions = BENCH[case]
    check_refused(capsys, tmp_path, ["bench", "-o", "{dir}/bench.arrow", *args], mentions)
