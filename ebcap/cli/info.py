"""``ebcap info``: what a capture holds, where and when it was recorded, and its size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ebcap.cli._common import (
    closed_pipe_ends_quietly,
    count,
    counted,
    print_fields,
    print_json,
    print_table,
)
from ebcap.cli._values import human_bytes, input_path

if TYPE_CHECKING:
    from ebcap.format.info import CaptureSummary


def register(app: typer.Typer) -> None:
    app.command(
        "info",
        help=(
            "Summarise a capture: source, host, time span, events/lost/drops per CPU, size.\n\n"
            "Examples:\n\n"
            "  ebcap info run.arrow\n\n"
            "  ebcap info --json run.arrow | jq .events_per_cpu"
        ),
    )(info)


def info(
    file: Path = typer.Argument(..., help="An ebcap file.", show_default=False, parser=input_path),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    from ebcap.format.info import summarize
    from ebcap.format.reader import CaptureReader

    with CaptureReader(file) as reader:
        summary = summarize(reader)
    with closed_pipe_ends_quietly():
        if as_json:
            print_json(summary.to_dict())
        else:
            _print_human(summary)


def _print_human(s: CaptureSummary) -> None:
    print_fields(
        [
            ("file", str(s.path)),
            (
                "format",
                _joined(f"ebcap v{s.format_version}", _opt("written by ebcap", s.ebcap_version)),
            ),
            ("transport", _joined(s.transport, _buffer(s), _opt("wakeup", s.wakeup))),
            ("source", s.source),
            ("columns", ", ".join(s.source_columns) or None),
            ("command", " ".join(s.command) if s.command else None),
            ("host", _joined(s.hostname or "?", _opt("kernel", s.kernel), _ncpus(s), _cpus(s))),
            ("started", s.start_time),
            ("stopped", s.end_time),
            ("time span", _span(s)),
            ("monotonic", _monotonic(s)),
            ("rows", _rows(s)),
            ("size", _size(s)),
            ("recovered", _recovered(s)),
            ("undecodable", _undecodable(s)),
        ]
    )
    typer.echo("")
    _print_per_cpu(s)


def _undecodable(s: CaptureSummary) -> str | None:
    if not s.undecodable:
        return None
    return (
        f"{count(s.undecodable)} events shorter than the payload layout "
        "(their decoded columns are null)"
    )


def _joined(head: str, *details: str | None) -> str:
    """``head (detail, detail)`` with the missing details left out."""
    shown = [d for d in details if d]
    return f"{head} ({', '.join(shown)})" if shown else head


def _opt(label: str, value: object | None) -> str | None:
    return None if value is None else f"{label} {value}"


def _buffer(s: CaptureSummary) -> str | None:
    if s.buffer_size is None:
        return None
    per = " per CPU" if s.transport == "perf" else ""
    return f"buffer {human_bytes(s.buffer_size)}{per}"


def _ncpus(s: CaptureSummary) -> str | None:
    return None if s.ncpus is None else f"{s.ncpus} CPUs"


def _cpus(s: CaptureSummary) -> str | None:
    return None if not s.cpus else "recorded CPUs " + ",".join(str(c) for c in s.cpus)


def _span(s: CaptureSummary) -> str:
    if s.duration_s is None:
        return "no samples"
    if s.first_wall and s.last_wall:
        return f"{s.first_wall} .. {s.last_wall} ({s.duration_s:.6f} s)"
    return f"{s.duration_s:.6f} s"


def _monotonic(s: CaptureSummary) -> str | None:
    if s.first_ts_ns is None or s.last_ts_ns is None:
        return None
    return f"{s.first_ts_ns} .. {s.last_ts_ns} ns ({s.clock or 'CLOCK_MONOTONIC'})"


def _rows(s: CaptureSummary) -> str:
    return (
        f"{count(s.rows)} in {counted(s.batches, 'batch', 'batches')} "
        f"({counted(s.samples, 'sample')}, {counted(s.lost_records, 'lost record')})"
    )


def _size(s: CaptureSummary) -> str:
    per_row = (
        None if s.bytes_per_event is None else f"{s.bytes_per_event:.1f} bytes per sample event"
    )
    ratio = None if s.compression_ratio is None else f"compression {s.compression_ratio:.2f}x"
    return _joined(f"{human_bytes(s.file_size)}", f"{count(s.file_size)} bytes", per_row, ratio)


def _recovered(s: CaptureSummary) -> str | None:
    if not s.recovered:
        return None
    from ebcap.format import schema as fs

    r = s.recovered
    text = (
        f"from {r.get(fs.RECOVERED_FROM)}: damage at byte {r.get(fs.RECOVERED_DAMAGE_OFFSET)} "
        f"({r.get(fs.RECOVERED_REASON)})"
    )
    skipped = r.get(fs.RECOVERED_SKIPPED)
    if isinstance(skipped, list) and skipped:
        text += f"; {counted(len(skipped), 'damaged batch', 'damaged batches')} left out"
    return text


def _print_per_cpu(s: CaptureSummary) -> None:
    drops = s.drops_per_cpu
    cpus = sorted(set(s.events_per_cpu) | set(s.lost_per_cpu) | set(drops or {}))
    header = ["cpu", "events", "lost", "drops"]

    def row(label: str, events: int, lost: int, dropped: int | None) -> list[str]:
        return [label, count(events), count(lost), "-" if dropped is None else count(dropped)]

    rows = [
        row(
            str(c),
            s.events_per_cpu.get(c, 0),
            s.lost_per_cpu.get(c, 0),
            None if drops is None else drops.get(c, 0),
        )
        for c in cpus
    ]
    rows.append(
        row(
            "total",
            sum(s.events_per_cpu.values()),
            sum(s.lost_per_cpu.values()),
            None if drops is None else sum(drops.values()),
        )
    )
    print_table(header, rows)
    if s.counts_from != "totals":
        typer.echo("(counted from the rows: the file has no end-of-capture totals)")
    elif drops is None:
        typer.echo("(drops: not recorded)")
