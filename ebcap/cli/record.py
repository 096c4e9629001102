"""``ebcap record``: capture an eBPF event stream into an ebcap file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, NoReturn

import typer

from ebcap.capture.ring_settings import (
    DEFAULT_PERF_BUFFER_BYTES,
    DEFAULT_RINGBUF_BYTES,
    DEFAULT_WAKEUP_EVENTS,
)
from ebcap.cli._common import closed_pipe_ends_quietly, note, say, stderr_is_terminal
from ebcap.cli._values import (
    arrow_output_file,
    check_watermark,
    file_name,
    human_bytes,
    human_count,
    options_given,
    parse_buffer_size,
    parse_wakeup,
    positive_seconds,
    rounding_note,
    unused_wakeup,
)
from ebcap.errors import INTERRUPTED_EXIT, CaptureError, UsageError

if TYPE_CHECKING:
    from ebcap.capture.recorder import Progress, RecordSummary


STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each ends a recording cleanly (a closed terminal sends SIGHUP)."""


def register(app: typer.Typer) -> None:
    app.command(
        "record",
        help=(
            "Record events into a zstd-compressed Arrow IPC file.\n\n"
            "Examples:\n\n"
            "  ebcap record -o run.arrow --duration 5\n\n"
            "  ebcap record -o run.arrow --transport ringbuf --count 100000\n\n"
            "  ebcap record -o bench.arrow --pin /sys/fs/bpf/x/rb "
            "--layout ts:u64,cpu:u32,seq:u32\n\n"
            "  ebcap record -o sw.arrow -s tracepoint:sched:sched_switch --duration 2\n\n"
            "  ebcap record -o pkts.arrow -s xdp:eth0 --snaplen 1514 --xdp-mode generic\n\n"
            "  ebcap record --list-sources 'sched:*'"
        ),
    )(record)


def record(
    ctx: typer.Context,
    pattern: str | None = typer.Argument(
        None, help="With --list-sources: a glob over the sources (default: all)."
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="File to write (NAME.partial until done).",
        parser=arrow_output_file,
    ),
    asked_transport: str | None = typer.Option(
        None,
        "--transport",
        "-t",
        help="perf (per-CPU perf event array, the default) or ringbuf (BPF ring buffer); "
        "a pinned map has its own.",
    ),
    source: str = typer.Option(
        "syscalls",
        "--source",
        "-s",
        help="What to record: syscalls, tracepoint:CAT:NAME, xdp:IFACE or tc:IFACE:ingress|egress.",
    ),
    list_sources: bool = typer.Option(
        False, "--list-sources", help="List the sources matching PATTERN and exit."
    ),
    xdp_mode: str | None = typer.Option(
        None, "--xdp-mode", help="xdp: native (driver, default) or generic (any interface)."
    ),
    snaplen: int | None = typer.Option(
        None, "--snaplen", help="xdp:/tc: bytes of each packet to keep (64..16384, default 256)."
    ),
    replace_xdp: bool = typer.Option(
        False, "--replace-xdp", help="xdp: replace another XDP program (it is not put back)."
    ),
    duration: float | None = typer.Option(
        None, "--duration", "-d", help="Stop after this many seconds."
    ),
    count: int | None = typer.Option(None, "--count", "-c", help="Stop after this many events."),
    buffer_size: str | None = typer.Option(
        None,
        "--buffer-size",
        "-b",
        help=(
            f"Perf: per CPU, rounded up to a power of two of pages (default "
            f"{human_bytes(DEFAULT_PERF_BUFFER_BYTES)}); ringbuf: whole ring, a power of two "
            f"(default {human_bytes(DEFAULT_RINGBUF_BYTES)})."
        ),
    ),
    wakeup: str | None = typer.Option(
        None,
        "--wakeup",
        "-w",
        help=(
            f"Perf wakeup: every N events (default {DEFAULT_WAKEUP_EVENTS}), or a byte watermark "
            "such as 256K. (A ring buffer wakes its reader by its own rule.)"
        ),
    ),
    cpus: str | None = typer.Option(
        None, "--cpus", help="Perf: CPUs whose rings to read, e.g. 0,2-3 (default: all online)."
    ),
    flush_interval: float = typer.Option(
        1.0, "--flush-interval", help="Write a batch to disk at least this often (seconds)."
    ),
    zstd_level: int = typer.Option(
        1,
        "--zstd-level",
        help="Compression of the file: 1 (default) .. 22 smaller; negative levels are "
        "faster; 0 is zstd's own default (3).",
    ),
    realtime: int | None = typer.Option(
        None,
        "--realtime",
        help=(
            "SCHED_FIFO priority of the draining thread, 1..99, so that the writer never "
            "delays a drain (the writer then runs at nice -20); 0: both at normal priority "
            "(default: 1 where allowed, e.g. as root)."
        ),
    ),
    pid: int = typer.Option(
        0, "--pid", help="syscalls: only this process (tgid); 0: every process."
    ),
    comm: str | None = typer.Option(
        None, "--comm", help="syscalls: only tasks with this command name."
    ),
    pin: str | None = typer.Option(
        None,
        "--pin",
        help="Read an existing pinned RINGBUF or PERF_EVENT_ARRAY instead of loading a source.",
    ),
    layout: str | None = typer.Option(
        None, "--layout", help="With --pin: payload fields, e.g. ts:u64,cpu:u32,seq:u32,pad:8x."
    ),
    drops: str | None = typer.Option(
        None,
        "--drops",
        help=(
            "With --pin: the producer's per-CPU drop counter, a pinned PERCPU_ARRAY, "
            "as PATH or PATH:N (the N-th u64 of its value); drops become lost rows."
        ),
    ),
    ready_file: Path | None = typer.Option(
        None,
        "--ready-file",
        help=(
            "Create this file once the rings are installed (for scripts that start a "
            "producer); one left by an earlier run is removed first."
        ),
        parser=file_name("--ready-file"),
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    from ebcap.bpf.caps import require_capabilities
    from ebcap.bpf.cpus import online_cpus, parse_cpu_list
    from ebcap.bpf.tracefs import split_spec
    from ebcap.capture.layout import parse_layout, unnamed_roles
    from ebcap.capture.leftovers import remove_leftovers
    from ebcap.capture.privileges import require_recording_capabilities
    from ebcap.capture.realtime import check_priority
    from ebcap.capture.realtime import resolve as resolve_priority
    from ebcap.capture.recorder import Recorder, RecordOptions
    from ebcap.capture.sources import TRANSPORTS, parse_source
    from ebcap.format.writer import check_destination, partial_path, zstd_codec
    from ebcap.replay.memory import use_recording_memory

    if list_sources:
        from ebcap.capture.sources import list_sources as matching_sources

        given = options_given(ctx, besides={"list_sources", "pattern"})
        if given:
            raise UsageError(f"--list-sources takes only a PATTERN, not {given[0]}")

        with closed_pipe_ends_quietly():
            for spec in matching_sources(pattern or "*"):
                typer.echo(spec)
        return
    if pattern is not None:
        raise UsageError(f"unexpected argument {pattern!r}: PATTERN goes with --list-sources")
    if output is None:
        raise UsageError("-o/--output is required")
    check_destination(output, force=force)  # before anything (leftovers, a ready file) changes
    transport = asked_transport or "perf"
    if transport not in TRANSPORTS:
        raise UsageError(f"--transport: unknown transport {transport!r}: use perf or ringbuf")
    positive_seconds(duration, "--duration")
    if count is not None and count <= 0:
        raise UsageError("--count must be positive")
    positive_seconds(flush_interval, "--flush-interval")
    try:
        zstd_codec(zstd_level)
    except UsageError as exc:
        raise UsageError(f"--zstd-level: {exc}") from None
    if realtime is not None:
        check_priority(realtime)
    check_pid(pid)
    if comm is not None and not 0 < len(comm.encode()) <= 15:
        raise UsageError("--comm must be 1..15 bytes (the kernel's TASK_COMM_LEN - 1)")
    wakeup_events, watermark = parse_wakeup(wakeup)
    try:
        chosen_cpus = parse_cpu_list(cpus) if cpus is not None else None
    except UsageError as exc:
        raise UsageError(f"--cpus: {exc}") from None
    if chosen_cpus is not None:
        missing = sorted(set(chosen_cpus) - set(online_cpus()))
        if missing:
            raise UsageError(f"--cpus: CPU {missing[0]} is not online")
    check_ready_file(ready_file, output)
    kind = "pin" if pin is not None else source.partition(":")[0]
    if kind == "tracepoint":  # making this source reads tracefs: its needs are said first
        split_spec(source.partition(":")[2])  # a bad name is still a usage error
        rings = len(chosen_cpus or online_cpus()) if transport == "perf" else 1
        ring = parse_buffer_size(buffer_size, transport)
        require_recording_capabilities("recording", kind, transport, ring, rings)
    src = parse_source(
        source,
        pin=pin,
        layout=parse_layout(layout) if layout else None,
        drops=drops,
        pid=pid,
        comm=comm,
        xdp_mode=xdp_mode,
        snaplen=snaplen,
        replace_xdp=replace_xdp,
        notify=lambda message: say(f"ebcap: {message}", fg="yellow"),
    )
    actual_transport = src.transport_of(transport)
    notes: list[str | None] = []  # said once recording runs: a refusal stays one line
    if asked_transport not in (None, actual_transport):
        notes.append(
            f"--transport {asked_transport} is not used: the pinned map is a "
            f"{'ring buffer' if actual_transport == 'ringbuf' else 'perf event array'}"
        )
    if pin is not None and actual_transport == "ringbuf":
        if drops is None:
            notes.append(
                "the kernel counts no losses for a ring buffer; without --drops "
                "this capture cannot show the events its producer failed to reserve"
            )
        notes.append(unnamed_roles(src.layout))
    if chosen_cpus is not None and actual_transport != "perf":
        raise UsageError(
            "--cpus applies to the perf transport (a ring buffer is shared by all CPUs)"
        )
    notes.append(unused_wakeup(wakeup, actual_transport))
    if pin is not None and actual_transport == "ringbuf" and buffer_size is not None:
        notes.append(
            f"--buffer-size {buffer_size} is not used: a pinned ring buffer has its own size"
        )
        buffer_size = None
    ring = parse_buffer_size(buffer_size, actual_transport)
    if actual_transport == "perf":
        check_watermark(wakeup, watermark, ring.bytes)
    notes.append(rounding_note(buffer_size, ring))
    rings = len(chosen_cpus or online_cpus()) if actual_transport == "perf" else 1
    require_recording_capabilities("recording", kind, actual_transport, ring, rings)
    if replace_xdp and kind == "xdp":
        needs = {"CAP_SYS_ADMIN": "--replace-xdp opening the other XDP program by id"}
        require_capabilities("recording", needs)
    # An asked priority this process may not use is refused before anything changes.
    resolve_priority(realtime)
    for leftover in remove_leftovers():  # what killed ebcap processes left on interfaces
        say(f"ebcap: {leftover}", fg="yellow")
    use_recording_memory()  # flat over a long recording; a burst's pages faulted in once
    options = RecordOptions(
        output=output,
        transport=actual_transport,
        buffer_bytes=ring.bytes,
        wakeup_events=wakeup_events,
        watermark_bytes=watermark,
        cpus=chosen_cpus,
        duration_s=duration,
        count=count,
        flush_interval_s=flush_interval,
        zstd_level=zstd_level,
        realtime=realtime,  # as asked: a default the kernel refuses falls back
        force=force,
        command=["ebcap", *sys.argv[1:]],
    )
    remove_old_ready_file(ready_file)
    recorder = Recorder(src, options)
    live = _LiveProgress(enabled=stderr_is_terminal() and not as_json)
    earlier = _file_identity(output)  # a --force run replaces it only once finished
    try:
        with _stop_on_signals() as stop, live:
            summary = recorder.run(
                should_stop=stop.is_set,
                on_progress=live.update,
                on_started=started(notes, ready_file),
            )
    except KeyboardInterrupt:
        _interrupted(output, recorder.work_path or partial_path(output), earlier)
    with closed_pipe_ends_quietly():  # `--json | head`: the file is complete all the same
        _print_summary(summary, as_json)


def check_pid(pid: int) -> None:
    """``--pid``: 0 (every process) or a number the kernel can give a process."""
    if pid == 0:
        return
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 1 << 22  # PID_MAX_LIMIT on 64-bit
    if not 0 < pid < pid_max:
        raise UsageError(f"--pid {pid} is not a process id: use 1..{pid_max - 1} (0: all)")


def check_ready_file(ready: Path | None, output: Path) -> None:
    """Refuse, before anything is attached, a --ready-file that cannot be created."""
    if ready is None:
        return
    from ebcap.format.writer import partial_path

    target = ready.resolve()
    if target in (output.resolve(), partial_path(output).resolve()):
        raise UsageError(f"--ready-file {ready} is the output file: name another file")
    if target.is_dir():
        raise UsageError(f"--ready-file {ready} is a directory")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"--ready-file {ready}: directory {parent} does not exist")
    try:  # a file of another name: whoever waits for the ready file must not see it
        fd, probe = tempfile.mkstemp(prefix=".ebcap-ready.", dir=parent)
    except OSError as exc:
        message = f"--ready-file {ready}: cannot create files in {parent}: {exc.strerror}"
        raise UsageError(message) from None
    os.close(fd)
    os.unlink(probe)


def remove_old_ready_file(ready: Path | None) -> None:
    """One left by an earlier run would say "ready" before the rings are; removed only
    once every check has passed, so that a refused run changes nothing."""
    if ready is None:
        return
    try:
        ready.unlink(missing_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--ready-file {ready}: cannot remove the old one: {exc.strerror}"
        ) from None


def started(notes: list[str | None], ready: Path | None) -> Callable[[], None]:
    """What runs once the rings are installed: the notes, then the --ready-file."""

    def run() -> None:
        for said in filter(None, notes):
            note(said)
        if ready is None:
            return
        try:
            ready.touch()
        except OSError as exc:
            raise CaptureError(f"--ready-file {ready}: {exc.strerror}") from None

    return run


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``, None if there is none: tells a new file from an old."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _interrupted(output: Path, partial: Path, earlier: tuple[int, int] | None) -> NoReturn:
    """A second Ctrl-C aborted the recording: say where the data went, exit 130.

    ``partial``: the file the capture was written to; ``earlier``: the output file as it
    was before the recording (with --force), still there unchanged: not this capture.
    """
    from ebcap.format.file_checks import recover_command

    finished = _file_identity(output) not in (None, earlier)
    if finished and not partial.exists():
        kept = f"the capture had just been finished: {output}"
    elif partial.exists():
        kept = f"the batches flushed so far are in {partial} ({recover_command(partial)})"
    else:
        kept = "nothing had been written yet"
    if earlier is not None and not finished:
        kept += f"; {output} is the file of before, untouched"
    say(f"ebcap: interrupted: {kept}")
    # The batch being written may still be compressing in Arrow's C++ on the writer
    # thread; tearing the interpreter down under it can crash the process (SIGSEGV).
    # Every kernel object is released by now and recovery takes whole batches only.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, AttributeError):  # closed, or None
            stream.flush()
    os._exit(INTERRUPTED_EXIT)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """First SIGINT/SIGTERM/SIGHUP: finish cleanly. A second one: abort now (the file
    stays recoverable)."""
    flag = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _LiveProgress:
    """Live counters on a terminal (rich), nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._live: Any = None

    def __enter__(self) -> _LiveProgress:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, p: Progress) -> None:
        if self._live is None:
            return
        from rich.table import Table

        def rate(events: int) -> str:
            return human_count(events / p.elapsed_s if p.elapsed_s > 0 else 0.0)

        def warn(n: int) -> str:
            return f"[bold yellow]{n:,}[/]" if n else "0"

        table = Table(box=None, show_header=True, header_style="bold")
        for column in (f"{p.elapsed_s:.1f}s", "events", "events/s", "lost", "drops", "bytes"):
            table.add_column(column, justify="right")
        table.add_row(
            "all",
            f"{p.events:,}",
            rate(p.events),
            warn(p.lost),
            warn(p.drops),
            human_bytes(p.payload_bytes),
        )
        for cpu in sorted(set(p.events_per_cpu) | set(p.lost_per_cpu)):
            events = p.events_per_cpu.get(cpu, 0)
            table.add_row(
                f"cpu{cpu}",
                f"{events:,}",
                rate(events),
                warn(p.lost_per_cpu.get(cpu, 0)),
                "",
                human_bytes(p.payload_bytes_per_cpu.get(cpu, 0)),
            )
        self._live.update(table)


def _print_summary(summary: RecordSummary, as_json: bool) -> None:
    from dataclasses import asdict

    data: dict[str, Any] = asdict(summary)
    data["events_per_s"] = round(summary.events_per_s, 1)
    data["bytes_per_event"] = round(summary.bytes_per_event, 2)
    if summary.undecodable:  # on stderr with --json too: a wrong --layout is easy to miss
        note(
            f"{summary.undecodable:,} of {summary.events:,} events were shorter than the "
            "payload layout: their decoded columns are null (is --layout right?)"
        )
    if as_json:
        typer.echo(json.dumps(data))
        return
    line = (
        f"recorded {summary.events:,} events in {summary.duration_s:.2f} s "
        f"({human_count(summary.events_per_s)}/s) via {summary.transport}: "
        f"lost {summary.lost:,}, drops {summary.drops:,}, "
        f"{summary.bytes_per_event:.1f} B/event, "
        f"{human_bytes(summary.file_bytes)} -> {summary.path}"
    )
    warn = bool(summary.lost or summary.drops)
    say(line, fg="yellow" if warn else None, bold=warn)
