"""``ebcap export``: convert a capture to Parquet, CSV or JSON lines, with wall-clock time."""

from __future__ import annotations

from pathlib import Path

import typer

from ebcap.cli._common import closed_pipe_ends_quietly, count

PCAPNG = "pcapng"


def register(app: typer.Typer) -> None:
    app.command(
        "export",
        help=(
            "Convert a capture to Parquet (zstd), CSV or JSON lines (NAME.zst: compressed), "
            "adding a wall-clock `time` column (UTC), or the packets of an xdp:/tc: capture "
            "to pcapng. The format comes from the output name unless --format says.\n\n"
            "Examples:\n\n"
            "  ebcap export run.arrow -o run.parquet\n\n"
            "  ebcap export run.arrow -o run.jsonl.zst --sorted\n\n"
            "  ebcap export pkts.arrow -o pkts.pcapng"
        ),
    )(export)


def export(
    file: Path = typer.Argument(..., help="The capture to convert."),
    output: Path = typer.Option(..., "-o", "--output", help="The file to write."),
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
    from ebcap.replay.sink import check_output_path

    if fmt == PCAPNG or (fmt is None and output.suffix == ".pcapng"):
        _export_pcapng(file, output, force=force, in_time_order=sorted_)
        return
    check_output_path(output, force=force, inputs=[file])
    chosen = export_format(output, fmt)
    with closed_pipe_ends_quietly(), CaptureReader(file) as reader:
        summary = run_export(reader, output, fmt=chosen, force=force, in_time_order=sorted_)
    typer.echo(f"wrote {count(summary.rows)} rows to {summary.path} ({summary.fmt})", err=True)


def _export_pcapng(file: Path, output: Path, *, force: bool, in_time_order: bool) -> None:
    """The packets of an xdp:/tc: capture as pcapng, written to a temporary file, then renamed."""
    from ebcap.format.pcapng import write_pcapng
    from ebcap.format.reader import CaptureReader
    from ebcap.replay.sink import AtomicPath

    with CaptureReader(file) as reader, AtomicPath(output, force=force, inputs=[file]) as temp:
        table = reader.to_table()
        if in_time_order:
            table = table.sort_by([("ts_ns", "ascending"), ("seq", "ascending")])
        with open(temp, "wb") as out:
            packets = write_pcapng(table, reader.metadata, out)
    typer.echo(f"wrote {count(packets)} packets to {output} (pcapng)", err=True)
