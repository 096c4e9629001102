"""``ebcap sql``: query a capture with SQL (DuckDB); the rows are the view ``events``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import typer

from ebcap.cli._common import closed_pipe_ends_quietly
from ebcap.cli._values import input_path, output_file
from ebcap.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from ebcap.replay.sink import Output

SQL_FORMATS: Final = ("table", "csv", "jsonl", "json")


def register(app: typer.Typer) -> None:
    app.command(
        "sql",
        help=(
            "Run SQL over a capture with DuckDB. The rows are the view `events` "
            "(seq, cpu, ts_ns, kind, lost, round, data, then the source's columns).\n\n"
            "Examples:\n\n"
            '  ebcap sql run.arrow "SELECT cpu, count(*) FROM events GROUP BY cpu"\n\n'
            '  ebcap sql run.arrow "SELECT syscall, count(*) n FROM events '
            'GROUP BY 1 ORDER BY n DESC LIMIT 10" --format csv'
        ),
    )(sql)


def sql(
    file: Path = typer.Argument(..., help="The capture to query.", parser=input_path),
    query: str = typer.Argument(..., help="The SQL statement; the table is `events`."),
    asked_format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="table (aligned text, widths from the first 65,536 rows), csv, jsonl or json; "
        "default: from the -o name (.csv, .jsonl, .json, optionally .zst), else table.",
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write here, not stdout.", parser=output_file
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    from ebcap.format.reader import CaptureReader
    from ebcap.replay.records import encoded, encoder_for
    from ebcap.replay.sink import Output, check_output_path, to_stdout
    from ebcap.replay.sql import SqlSession
    from ebcap.replay.table_text import table_lines

    fmt = asked_format.lower() if asked_format else _format_of(output)
    if fmt not in SQL_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(SQL_FORMATS)}, not {fmt!r}")
    if output is not None and not to_stdout(output):  # -o -: stdout, even if ./- exists
        check_output_path(output, force=force, inputs=[file])
    with CaptureReader(file) as reader, SqlSession(reader) as session:
        result = session.query(query)
        if result is None:
            return
        with closed_pipe_ends_quietly(), Output(output, force=force, inputs=[file]) as out:
            if fmt == "table":
                for chunk in table_lines(result.schema, result):
                    out.write(chunk)
            elif fmt == "json":
                _write_json_array(out, result)
            else:
                encoder = encoder_for(fmt, result.schema)
                out.write(encoder.header())
                for batch in result:
                    for piece in encoded(encoder, batch):
                        out.write(piece)


def _format_of(output: Path | None) -> str:
    """The format an output name asks for: .csv, .jsonl or .json (optionally .zst)."""
    from ebcap.replay.sink import inner_suffix

    suffix = inner_suffix(output) if output is not None else ""
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}.get(suffix, "table")


def _write_json_array(out: Output, result: pa.RecordBatchReader) -> None:
    """Rows as one JSON array (JSON lines re-joined: a newline never occurs inside a row)."""
    from ebcap.replay.records import JsonlEncoder, encoded

    encoder = JsonlEncoder()
    out.write(b"[")
    first = True
    for batch in result:
        for piece in encoded(encoder, batch):
            lines = bytes(piece)
            if not lines:
                continue
            out.write(b"\n" if first else b",\n")
            out.write(lines[:-1].replace(b"\n", b",\n"))
            first = False
    out.write(b"]\n" if first else b"\n]\n")
