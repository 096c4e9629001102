"""``ebcap reorder``: how out of order a capture was delivered, and the window to sort it."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import typer

from ebcap.cli._common import closed_pipe_ends_quietly, count, print_fields, print_table
from ebcap.cli._values import file_name, input_path

if TYPE_CHECKING:
    from ebcap.replay.reorder import ReorderReport

LATE_ROUNDS_SLOT: Final = "\x00late rounds\x00"
"""Stands in for the list of late rounds in the JSON text until it is streamed in its place."""


def register(app: typer.Typer) -> None:
    app.command(
        "reorder",
        help=(
            "Measure reordering: events delivered out of timestamp order, how late, "
            "per CPU pair and drain round, and the window an online sort would need.\n\n"
            "Percentiles are exact (nearest rank) unless a distribution has more than 65,536 "
            "distinct values; then they come from a log-bucket sketch within 1%, and the "
            "report says so.\n\n"
            "A sample is late if its ts_ns is below the largest ts_ns delivered before it; "
            "its lateness is the difference.\n\n"
            "Examples:\n\n"
            "  ebcap reorder run.arrow\n\n"
            "  ebcap reorder run.arrow --json | jq .window\n\n"
            "  ebcap reorder run.arrow --plot reorder.png"
        ),
    )(reorder)


def reorder(
    file: Path = typer.Argument(..., help="The capture to analyse.", parser=input_path),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object instead of text (with every round's late count)."
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw timestamps vs arrival and a lateness histogram "
        "(format from the name: .png, .svg, .pdf, .jpg, ...).",
        parser=file_name("--plot"),
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --plot file."),
) -> None:
    from ebcap.format.reader import CaptureReader
    from ebcap.replay.reorder import analyze
    from ebcap.replay.sink import AtomicPath, check_output_path

    picture = None
    if plot is not None:
        from ebcap.replay.plot import picture_format

        picture = picture_format(plot)
        check_output_path(plot, force=force, inputs=[file])
    with CaptureReader(file) as reader:
        report = analyze(reader, keep_plot_points=plot is not None)
    with contextlib.closing(report):
        if plot is not None and picture is not None:
            from ebcap.replay.plot import draw

            with AtomicPath(plot, force=force, inputs=[file]) as temp:
                draw(report, temp, title=str(file), fmt=picture)
        with closed_pipe_ends_quietly():
            if as_json:
                _print_json(file, report)
            else:
                _print_text(file, report)


def _print_json(file: Path, report: ReorderReport) -> None:
    """The report as one JSON object; ``rounds.late`` lists every round with a late event,
    streamed from the report's temporary file rather than built in memory."""
    data = {"file": str(file), **report.to_dict()}
    data["rounds"]["late"] = LATE_ROUNDS_SLOT
    head, tail = json.dumps(data, indent=2).split(json.dumps(LATE_ROUNDS_SLOT))
    out = sys.stdout
    out.write(head + "[")
    indent = "\n" + " " * 6
    for n, entry in enumerate(report.late_rounds()):
        out.write(("," if n else "") + indent + json.dumps(entry))
    out.write(("\n" + " " * 4 if report.rounds.with_late else "") + "]" + tail + "\n")
    out.flush()


def _us(ns: float) -> str:
    return f"{ns / 1e3:.1f} us"


def _print_text(file: Path, report: ReorderReport) -> None:
    data = report.to_dict()
    lateness, displacement = data["lateness_us"], data["displacement_events"]
    rounds = data["rounds"]
    distance = rounds["distance"]
    exact = report.lateness_ns.exact and report.displacement.exact
    print_fields(
        [
            ("file", str(file)),
            ("transport", report.transport),
            ("samples", count(report.samples)),
            ("late", f"{count(report.late)} ({report.late_percent:.2f}%)"),
            (
                "lateness",
                f"max {lateness['max']:.1f} us, p50 {lateness['p50']:.1f}, "
                f"p99 {lateness['p99']:.1f}, p999 {lateness['p999']:.1f}",
            ),
            (
                "displacement",
                f"max {displacement['max']} events, p50 {displacement['p50']}, "
                f"p99 {displacement['p99']}, p999 {displacement['p999']}",
            ),
            (
                "percentiles",
                "exact (nearest rank)"
                if exact
                else f"lateness {report.lateness_ns.kind}, displacement {report.displacement.kind}",
            ),
            (
                "sort window needed",
                f"{count(report.max_lateness_ns)} ns / {count(report.max_displacement)} events",
            ),
            (
                "drain rounds",
                f"{count(rounds['count'])}, {count(rounds['with_late'])} with late events "
                f"(at most {count(rounds['max_late_in_one'])} in one)",
            ),
            (
                "late vs its round",
                f"same round {distance.get('0', 0)}, next {distance.get('1', 0)}, "
                f"later {distance['2+']}",
            ),
        ]
    )
    if report.per_cpu:
        typer.echo("")
        rows = [
            [str(cpu), count(v["samples"]), count(v["late"]), _us(v["max_lateness_ns"])]
            for cpu, v in sorted(report.per_cpu.items())
        ]
        print_table(["cpu", "samples", "late", "max lateness"], rows)
    if report.cpu_pairs:
        typer.echo("")
        pairs = [
            [f"{a} late vs {b}", count(v["count"]), _us(v["max_lateness_ns"])]
            for (a, b), v in sorted(report.cpu_pairs.items())
        ]
        print_table(["late cpu", "events", "max lateness"], pairs)
    if rounds["most_late"]:
        typer.echo("")
        worst = [
            [str(r["round"]), count(r["samples"]), count(r["late"]), _us(r["max_lateness_ns"])]
            for r in rounds["most_late"]
        ]
        print_table(["round (most late)", "samples", "late", "max lateness"], worst)
    for cpu, n in sorted(report.cpu_disorder.items()):
        typer.echo(f"\nnote: CPU {cpu}'s own stream is out of timestamp order ({count(n)} events)")
