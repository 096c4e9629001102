"""``ebcap recover``: save the complete batches of a capture that did not finish, or got damaged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ebcap.cli._common import count, counted
from ebcap.cli._values import arrow_output_file, input_path

if TYPE_CHECKING:
    from ebcap.format.recovery import RecoveryReport


def register(app: typer.Typer) -> None:
    app.command(
        "recover",
        help=(
            "Write the intact batches of a cut-short (killed, crashed, disk full) or damaged "
            "capture to a valid file. The input is only read, never changed.\n\n"
            "Examples:\n\n"
            "  ebcap recover run.arrow.partial -o run.arrow"
        ),
    )(recover)


def recover(
    broken: Path = typer.Argument(
        ..., help="The damaged or unfinished file.", show_default=False, parser=input_path
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Where to write the repaired file.", parser=arrow_output_file
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
) -> None:
    from ebcap.format.recovery import recover as recover_file

    report = recover_file(broken, output, force=force)
    for line in _summary(report):
        typer.echo(line)


def _summary(report: RecoveryReport) -> list[str]:
    """What was saved, where the damage is, and whether the totals survived.

    Batches are counted as the rows they hold: the empty batch that only carries
    the totals is told of in the totals line, not counted as a batch.
    """
    saved = (
        f"{counted(report.batches_saved, 'batch', 'batches')}, {counted(report.rows_saved, 'row')} "
        f"({counted(report.events_saved, 'event')})"
    )
    kept = f"{report.source} is unchanged and can now be removed"
    if report.complete:
        lines = [f"{report.source} is complete: copied {saved} to {report.output}"]
    elif report.skipped:
        damaged = counted(len(report.skipped), "damaged batch", "damaged batches")
        kept = (
            f"{report.source} is unchanged: keep it to look into the skipped batches, or remove it"
        )
        lines = [f"saved {saved}, to {report.output}; skipped {damaged}:"]
        for skipped in report.skipped:
            rows = "rows unknown" if skipped.rows is None else counted(skipped.rows, "row")
            seq = (
                ""
                if skipped.first_seq is None
                else f", seq {skipped.first_seq}..{skipped.last_seq}"
            )
            lines.append(f"  skipped batch {skipped.index + 1} ({rows}{seq}): {skipped.reason}")
        lines.append(
            "the saved file has a gap where each skipped batch was; "
            "its ebcap.recovered metadata lists them"
        )
    else:
        lines = [
            f"saved {saved} to {report.output} from the first {count(report.bytes_used)} "
            f"of {count(report.source_size)} bytes",
            f"damage starts at byte {count(report.damage_offset or 0)}: {report.reason}",
        ]
    lines.append(_totals(report))
    lines.append(kept)
    return lines


def _totals(report: RecoveryReport) -> str:
    if not report.totals_recomputed:
        return "totals: kept from the end of the capture"
    if report.totals_present:
        return (
            "totals: events and lost recounted from the saved rows; "
            "end time, duration and drops kept from the capture"
        )
    return "totals: recomputed from the saved rows (BPF drop counts unknown)"
