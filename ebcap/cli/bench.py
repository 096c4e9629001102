"""``ebcap bench``: the built-in producer at full speed, recorded to a real file."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from ebcap.capture.ring_settings import (
    DEFAULT_PERF_BUFFER_BYTES,
    DEFAULT_RINGBUF_BYTES,
    DEFAULT_WAKEUP_EVENTS,
)
from ebcap.cli._common import note, print_table, say
from ebcap.cli._values import (
    arrow_output_file,
    check_watermark,
    human_bytes,
    human_count,
    parse_buffer_size,
    parse_wakeup,
    positive_seconds,
    rounding_note,
    unused_wakeup,
)
from ebcap.errors import INTERRUPTED_EXIT, CaptureError, UsageError

if TYPE_CHECKING:
    from ebcap.capture.bench import BenchReport


def register(app: typer.Typer) -> None:
    app.command(
        "bench",
        help=(
            "Measure ebcap: a BPF producer (BPF_PROG_TEST_RUN, one pinned thread per CPU) "
            "emits events as fast as it can while ebcap records them to a file; reports "
            "produced/s, consumed/s, loss and per-CPU integrity. Exits 1 on any corrupted, "
            "duplicated, reordered or unaccounted event.\n\n"
            "Example:\n\n  ebcap bench --transport ringbuf --size 256 --producers 0,1 --duration 3"
        ),
    )(bench)


def bench(
    transport: str = typer.Option("ringbuf", "--transport", "-t", help="perf or ringbuf."),
    size: int = typer.Option(24, "--size", help="Event size in bytes: a multiple of 8, 16..4096."),
    producers: str = typer.Option("0", "--producers", help="CPUs to produce on, e.g. 0 or 0,1."),
    duration: float = typer.Option(3.0, "--duration", "-d", help="Seconds of production."),
    wakeup: str | None = typer.Option(
        None,
        "--wakeup",
        "-w",
        help=f"Perf wakeup: N events (default {DEFAULT_WAKEUP_EVENTS}) or a byte watermark.",
    ),
    buffer_size: str | None = typer.Option(
        None,
        "--buffer-size",
        "-b",
        help=(
            f"Perf: per CPU ({human_bytes(DEFAULT_PERF_BUFFER_BYTES)}); "
            f"ringbuf: whole ring ({human_bytes(DEFAULT_RINGBUF_BYTES)})."
        ),
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Keep the recording here (default: a temporary file).",
        parser=arrow_output_file,
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite --output."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    from ebcap.bpf.cpus import online_cpus, parse_cpu_list
    from ebcap.bpf.programs.bench import check_size
    from ebcap.capture.bench import BenchSource, run_bench
    from ebcap.capture.privileges import require_recording_capabilities
    from ebcap.capture.recorder import RecordOptions
    from ebcap.replay.memory import use_recording_memory

    if transport not in ("perf", "ringbuf"):
        raise UsageError(f"--transport: unknown transport {transport!r}: use perf or ringbuf")
    positive_seconds(duration, "--duration")
    try:
        check_size(size)
    except UsageError as exc:
        raise UsageError(f"--size: {exc}") from None
    try:
        cpus = parse_cpu_list(producers)
    except UsageError as exc:
        raise UsageError(f"--producers: {exc}") from None
    offline = sorted(set(cpus) - set(online_cpus()))
    if offline:
        raise UsageError(f"--producers: CPU {offline[0]} is not online")
    wakeup_events, watermark = parse_wakeup(wakeup)
    ring = parse_buffer_size(buffer_size, transport)
    if transport == "perf":
        check_watermark(wakeup, watermark, ring.bytes)
    record = _record_bytes(transport, size)
    if record >= ring.bytes:  # the kernel wants room beyond one record
        raise UsageError(
            f"--size {size}: a {record}-byte record cannot fit a {ring.bytes}-byte ring; "
            "give a larger --buffer-size"
        )
    rings = len(online_cpus()) if transport == "perf" else 1
    require_recording_capabilities("bench", "bench", transport, ring, rings)
    rounded = rounding_note(buffer_size, ring)
    for said in filter(None, (unused_wakeup(wakeup, transport), rounded)):
        note(said)
    use_recording_memory()  # flat over a long recording; a burst's pages faulted in once
    try:
        with (
            _interrupted_by(signal.SIGTERM, signal.SIGHUP),
            tempfile.TemporaryDirectory(prefix="ebcap-bench-") as tmp,
        ):
            options = RecordOptions(
                output=output or Path(tmp) / "bench.arrow",
                transport=transport,
                buffer_bytes=ring.bytes,
                wakeup_events=wakeup_events,
                watermark_bytes=watermark,
                force=force,
                command=["ebcap", *sys.argv[1:]],
            )
            report = run_bench(BenchSource(size), cpus, duration, options)
    except KeyboardInterrupt:  # the temporary recording is gone by now
        say("ebcap: interrupted")
        raise typer.Exit(INTERRUPTED_EXIT) from None
    _print(report, as_json)
    if not report.ok:
        raise CaptureError(f"integrity check failed: {report.problems}")


def _record_bytes(transport: str, size: int) -> int:
    """Ring bytes one event of ``size`` takes: a perf sample's header, time, cpu and
    raw size padded to 8 bytes, or a ring buffer record's 8-byte header."""
    if transport == "perf":
        return 8 + 8 + 8 + (4 + size + 7) // 8 * 8
    return 8 + size


@contextmanager
def _interrupted_by(*signals: signal.Signals) -> Iterator[None]:
    """These signals stop the bench as Ctrl-C does: the temporary recording is removed
    on the way out instead of left behind by a killed process."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _print(r: BenchReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(asdict(r)))
        return
    typer.echo(
        f"bench {r.transport} {r.size} B, producers on CPU {r.producers}, {r.wakeup}: "
        f"produced {human_count(r.produced_per_s)}/s, consumed {human_count(r.consumed_per_s)}/s, "
        f"loss {r.loss_pct:.2f}% ({r.lost_reported:,} reported lost, "
        f"{r.drops_in_bpf:,} dropped in BPF); {r.received:,} events, "
        f"{r.bytes_per_event:.1f} B/event ({human_bytes(r.file_bytes)}); "
        f"integrity: {r.corrupted} corrupted, {r.duplicates} duplicates, "
        f"{r.unaccounted} unaccounted"
    )
    header = ["cpu", "produced", "received", "lost", "holes", "out of order", "unaccounted"]
    columns = (
        r.produced_per_cpu,
        r.received_per_cpu,
        r.lost_per_cpu,
        r.holes_per_cpu,
        r.out_of_order_per_cpu,
        r.unaccounted_per_cpu,
    )
    rows = [[f"cpu{cpu}", *(f"{c.get(cpu, 0):,}" for c in columns)] for cpu in r.producers]
    print_table(header, rows)
