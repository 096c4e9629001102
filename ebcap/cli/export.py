"""``ebcap export``: convert a capture to Parquet, CSV or JSON lines, with wall-clock time."""

from __future__ import annotations

from pathlib import Path

import typer

from ebcap.cli._common import closed_pipe_ends_quietly, count, note
from ebcap.cli._values import input_path, output_file

PCAPNG = "pcapng"


def register(app: typer.Typer) -> None:
    app.command(
        "export",
        help=(
            "Convert a capture to Parquet (zstd), CSV or JSON lines (NAME.zst: compressed), "
            "adding a wall-clock `time` column (UTC) when the capture has its realtime "
            "offset, or the packets of an xdp:/tc: capture "
            "to pcapng. The format comes from the output name unless --format says; "
            "-o - writes csv, jsonl or pcapng to stdout.\n\n"
            "Examples:\n\n"
            "  ebcap export run.arrow -o run.parquet\n\n"
            "  ebcap export run.arrow -o run.jsonl.zst --sorted\n\n"
            "  ebcap export pkts.arrow -o pkts.pcapng\n\n"
            "  ebcap export pkts.arrow -f pcapng -o - | tcpdump -r -"
        ),
    )(export)


def export(
    file: Path = typer.Argument(..., help="The capture to convert.", parser=input_path),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="The file to write (-: stdout, for csv, jsonl and pcapng).",
        parser=output_file,
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="parquet, csv, jsonl or pcapng (default: from the output name).",
    ),
    sorted_: bool = typer.Option(False, "--sorted", help="Rows in exact time order."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    from ebcap.format.reader import CaptureReader
    from ebcap.replay.export import export as run_export
    from ebcap.replay.export import export_format
    from ebcap.replay.sink import check_output_path, inner_suffix, to_stdout

    fmt = fmt.lower() if fmt is not None else None  # -f PCAPNG as -f CSV: any case
    stdout = to_stdout(output)
    if not stdout:
        check_output_path(output, force=force, inputs=[file])
    if fmt == PCAPNG or (fmt is None and inner_suffix(output) == ".pcapng"):
        _export_pcapng(file, output, force=force, in_time_order=sorted_, stdout=stdout)
        return
    chosen = export_format(output, fmt)
    with closed_pipe_ends_quietly(), CaptureReader(file) as reader:
        summary = run_export(reader, output, fmt=chosen, force=force, in_time_order=sorted_)
    where = "stdout" if summary.path is None else str(summary.path)
    for said in summary.notes():
        note(said)
    typer.echo(f"wrote {count(summary.rows)} rows to {where} ({summary.fmt})", err=True)


def _export_pcapng(
    file: Path, output: Path, *, force: bool, in_time_order: bool, stdout: bool
) -> None:
    """The packets of an xdp:/tc: capture as pcapng, streamed to stdout or to a file that
    appears only once complete."""
    from ebcap.format.reader import CaptureReader
    from ebcap.replay.order import OrderReport
    from ebcap.replay.pcapng_export import export_pcapng
    from ebcap.replay.sink import Output

    report = OrderReport()
    with (
        closed_pipe_ends_quietly(),
        CaptureReader(file) as reader,
        Output(output, force=force, inputs=[file]) as out,
    ):
        written = export_pcapng(reader, out, in_time_order=in_time_order, report=report)
    for said in [*report.notes(), *written.notes()]:
        note(said)
    where = "stdout" if stdout else str(output)
    typer.echo(f"wrote {count(written.packets)} packets to {where} (pcapng)", err=True)
