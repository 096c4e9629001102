"""``ebcap recover``: save the complete batches of a capture that did not finish."""

from __future__ import annotations

from pathlib import Path

import typer

from ebcap.cli._common import count, counted


def register(app: typer.Typer) -> None:
    app.command(
        "recover",
        help=(
            "Write the complete batches of a cut-short capture (killed, crashed, disk full) "
            "to a valid file.\n\n"
            "Examples:\n\n"
            "  ebcap recover run.arrow.partial -o run.arrow"
        ),
    )(recover)


def recover(
    broken: Path = typer.Argument(..., help="The damaged or unfinished file.", show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the repaired file."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
) -> None:
    from ebcap.format.recovery import recover as recover_file

    report = recover_file(broken, output, force=force)
    saved = (
        f"{counted(report.batches_saved, 'batch', 'batches')}, {counted(report.rows_saved, 'row')} "
        f"({counted(report.events_saved, 'event')})"
    )
    if report.complete:
        typer.echo(f"{broken} is complete: copied {saved} to {output}")
        return
    typer.echo(
        f"saved {saved} to {output} from the first {count(report.bytes_used)} "
        f"of {count(report.source_size)} bytes"
    )
    typer.echo(f"damage starts at byte {count(report.damage_offset or 0)}: {report.reason}")
    if report.totals_present:
        typer.echo("totals: kept from the end of the capture")
    else:
        typer.echo("totals: recomputed from the saved rows (BPF drop counts unknown)")
