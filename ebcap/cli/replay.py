"""``ebcap replay``: print a capture as it arrived, or exactly sorted by time."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ebcap.cli._common import closed_pipe_ends_quietly, note
from ebcap.cli._values import input_path, output_file
from ebcap.errors import UsageError

FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".csv": "csv"}
TEXT_SUFFIXES = ("", ".txt", ".log", ".text")


def register(app: typer.Typer) -> None:
    app.command(
        "replay",
        help=(
            "Print the events of a capture, in arrival order or (--sorted) exact time order.\n\n"
            "Arrival order marks late events (<< 20.4 us late); sorted order marks every event "
            "the sort moved ahead of events delivered before it ([moved ahead of 3 events, "
            "20.4 us late]). Lost rows print as loss lines. A CPU whose own events are out of "
            "timestamp order is noted on stderr (before the first line with --sorted).\n\n"
            "Examples:\n\n"
            "  ebcap replay run.arrow | head\n\n"
            "  ebcap replay --sorted --cpu 0-1 --kind sample run.arrow\n\n"
            "  ebcap replay --sorted -o events.jsonl.zst run.arrow\n\n"
            "  ebcap replay --speed 1 --limit 100 run.arrow"
        ),
    )(replay)


def replay(
    file: Path = typer.Argument(..., help="The capture to replay.", parser=input_path),
    sorted_: bool = typer.Option(
        False, "--sorted", help="Exact time order: by ts_ns, ties by cpu, then seq."
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="text, jsonl or csv (default: from the -o extension, else text).",
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Write here instead of stdout (NAME.zst: compressed).",
        parser=output_file,
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    cpu: str | None = typer.Option(None, "--cpu", help="Only these CPUs, e.g. 0,2-3."),
    kind: str | None = typer.Option(None, "--kind", help="Only sample or only lost rows."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Stop after N rows."),
    speed: float | None = typer.Option(
        None, "--speed", help="Pace output at the original gaps / X (1 = real time)."
    ),
    wall: bool = typer.Option(False, "--wall", help="Also print the wall-clock time (UTC)."),
) -> None:
    from ebcap.bpf.cpus import parse_cpu_list
    from ebcap.format.reader import CaptureReader
    from ebcap.replay.memory import use_streaming_pool
    from ebcap.replay.order import OrderReport
    from ebcap.replay.player import ReplayOptions, capture_cpus, write_replay
    from ebcap.replay.sink import Output, check_output_path, to_stdout
    from ebcap.replay.text import ARRIVAL, TIME

    if output is not None and not to_stdout(output):  # -o -: stdout, even if ./- exists
        check_output_path(output, force=force, inputs=[file])
    chosen = fmt.lower() if fmt is not None else _format_from(output)
    options = ReplayOptions(
        order=TIME if sorted_ else ARRIVAL,
        fmt=chosen,
        cpus=parse_cpu_list(cpu) if cpu is not None else None,
        kind=kind,
        limit=limit,
        speed=speed,
        wall=wall,
    )
    options.check()
    use_streaming_pool()

    def early_notes(report: OrderReport) -> None:
        for said in report.disorder_notes():
            note(said)

    with (
        closed_pipe_ends_quietly(),
        CaptureReader(file) as reader,
        Output(output, force=force, inputs=[file]) as out,
    ):
        if options.cpus is not None:
            _warn_missing_cpus(sorted(options.cpus), capture_cpus(reader))
        options.colour = chosen == "text" and out.is_terminal and not os.environ.get("NO_COLOR")
        summary = write_replay(reader, out, options, on_scanned=early_notes)
    report = summary.order
    for said in report.spill_notes() if report.sorted else report.notes():
        note(said)


def _warn_missing_cpus(wanted: list[int], present: list[int]) -> None:
    """A --cpu the capture does not have would silently print nothing: say so."""
    missing = [cpu for cpu in wanted if cpu not in present]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        typer.echo(
            f"ebcap: warning: the capture has no CPU{plural} {_cpu_list(missing)} "
            f"(its CPUs: {_cpu_list(present) or 'none'})",
            err=True,
        )


def _cpu_list(cpus: list[int]) -> str:
    """``0-3,6``: sorted CPU numbers as the --cpu syntax writes them."""
    parts: list[str] = []
    start = previous = None
    for cpu in [*cpus, None]:
        if cpu is not None and previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(parts)


def _format_from(output: Path | None) -> str:
    """The format an output name asks for: .jsonl / .csv (optionally .zst), else text."""
    from ebcap.replay.sink import inner_suffix

    if output is None:
        return "text"
    suffix = inner_suffix(output)
    if suffix in FORMAT_BY_SUFFIX:
        return FORMAT_BY_SUFFIX[suffix]
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix == ".json":
        raise UsageError(
            f"{output}: replay writes JSON lines (one object per line), not one JSON "
            "document: name the output .jsonl"
        )
    if suffix in (".parquet", ".pcapng"):
        raise UsageError(
            f"{output}: replay writes text, jsonl or csv; `ebcap export` writes {suffix[1:]}"
        )
    raise UsageError(f"cannot tell the format of {output} from its name: give --format")
