"""The ``ebcap`` command line: a thin layer over the library.

Each command lives in its own module and registers itself on :data:`app`.
:func:`main` is the one place that turns errors into a single stderr line
and an exit code (2 for usage and bad files), so no command prints a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import typer

from ebcap import __version__
from ebcap.errors import INTERRUPTED_EXIT, EbcapError

app = typer.Typer(
    name="ebcap",
    help=(
        "Record and replay eBPF event streams.\n\n"
        "Examples:\n\n"
        "  ebcap record -o run.arrow --duration 5\n\n"
        "  ebcap replay --sorted run.arrow\n\n"
        "  ebcap info run.arrow"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMAND_MODULES: tuple[str, ...] = (
    "ebcap.cli.record",
    "ebcap.cli.info",
    "ebcap.cli.recover",
    "ebcap.cli.replay",
    "ebcap.cli.reorder",
    "ebcap.cli.sql",
    "ebcap.cli.export",
    "ebcap.cli.bench",
)
"""Modules whose ``register(app)`` adds their commands, in --help order."""

SHORT_HELP: dict[str, str] = {
    "record": "Record eBPF events into a zstd-compressed Arrow IPC file.",
    "info": "Summarise a capture: source, host, time span, counts, size.",
    "recover": "Save the intact batches of a cut-short or damaged capture.",
    "replay": "Print the events in arrival order or exact time order.",
    "reorder": "Measure how late events arrive against timestamp order.",
    "sql": "Run SQL over a capture with DuckDB.",
    "export": "Convert a capture to Parquet, CSV, JSON lines or pcapng.",
    "bench": "Measure recording throughput with a built-in BPF producer.",
}
"""The one line ``ebcap --help`` shows per command (click would cut the first
sentence of the full help at 45 characters, mid-phrase)."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ebcap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Record and replay eBPF event streams."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)
for _info in app.registered_commands:
    if _info.name in SHORT_HELP:
        _info.short_help = SHORT_HELP[_info.name]


def _fail(message: str, code: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    _to_stderr(f"ebcap: error: {first}\n")
    return code


def _to_stderr(text: str) -> None:
    """Best effort: a closed stderr leaves the exit status to say it."""
    if sys.stderr is not None:
        with contextlib.suppress(OSError):
            sys.stderr.write(text)


@functools.cache
def _command() -> Any:
    """The click command tree, built from :data:`app` once (about 3 ms per build)."""
    return typer.main.get_command(app)


def _interrupted() -> int:
    _to_stderr("ebcap: interrupted\n")
    return INTERRUPTED_EXIT


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code instead of exiting."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = _command()
    ctrl_c = _CtrlC()
    try:
        with ctrl_c.watched():
            result = command.main(args=args or ["--help"], prog_name="ebcap", standalone_mode=False)
    except EbcapError as exc:
        return _fail(str(exc), exc.exit_code)
    except typer.TyperException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except Exception as exc:  # a bug in ebcap: still one line, the traceback on request
        if os.environ.get("EBCAP_DEBUG"):
            raise
        notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))  # e.g. a .partial
        return _fail(
            f"internal error: {type(exc).__name__}: {exc}{notes} "
            "(set EBCAP_DEBUG=1 for the traceback)",
            1,
        )
    if ctrl_c.seen and result == INTERRUPTED_EXIT:  # typer ended it, silently
        return _interrupted()
    return int(result) if isinstance(result, int) else 0


class _CtrlC:
    """Notices a Ctrl-C that typer turns into a bare exit status 130.

    Installed only over Python's default SIGINT handler, so commands that handle
    signals themselves (``record``: finish cleanly, then abort) keep their own.
    """

    def __init__(self) -> None:
        self.seen = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True
        raise KeyboardInterrupt

    @contextmanager
    def watched(self) -> Iterator[None]:
        default = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if not default or threading.current_thread() is not threading.main_thread():
            yield
            return
        signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main() -> None:
    """Console-script entry point."""
    code = run()
    if sys.stdout is not None:  # None: started with stdout closed
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
    sys.exit(code)
