"""Output helpers shared by the commands: JSON, aligned fields, per-CPU tables, notes,
closed pipes.

Commands print through these so every ``--json`` is one JSON object and every
human-readable report lines up the same way.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import typer


def print_json(obj: Mapping[str, Any]) -> None:
    """One JSON object on stdout (indented: still one object for ``jq``)."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def print_fields(fields: Sequence[tuple[str, str | None]]) -> None:
    """``label  value`` lines with the values aligned; fields whose value is None are left out."""
    shown = [(label, value) for label, value in fields if value is not None]
    width = max((len(label) for label, _ in shown), default=0)
    for label, value in shown:
        typer.echo(f"{label:<{width}}  {value}")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table whose first column is left-aligned and the others right-aligned."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [
            f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}"
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        typer.echo("  ".join(cells).rstrip())


def count(n: int) -> str:
    """An exact count with thousands separators: 1,234,567."""
    return f"{n:,}"


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``1 batch``, ``2 batches``: an exact count with the noun agreeing."""
    noun = singular if n == 1 else (plural or singular + "s")
    return f"{count(n)} {noun}"


@contextlib.contextmanager
def closed_pipe_ends_quietly() -> Iterator[None]:
    """A reader that went away (``| head``) ends the command quietly, with status 0.

    Click turns an EPIPE escaping a command into status 1 before the entry
    point's own BrokenPipeError handling can see it, so commands that stream
    to stdout end here instead.
    """
    try:
        yield
    except BrokenPipeError:
        raise typer.Exit(0) from None


def note(message: str) -> None:
    """One ``ebcap: note:`` line on stderr (yellow on a terminal)."""
    say(f"ebcap: note: {message}", fg="yellow")


def say(line: str, **style: Any) -> None:
    """One line on stderr, if anyone can read it: a closed or broken stderr must not
    cost a recording its file or its exit status."""
    if sys.stderr is None:
        return
    with contextlib.suppress(OSError):  # EPIPE, EBADF
        typer.secho(line, err=True, **style)


def stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()
