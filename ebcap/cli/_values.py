"""Parsers for command-line values (sizes, durations, output names), each failing with
one clear line that names the option."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ebcap.errors import BadFileError, UsageError

if TYPE_CHECKING:
    from ebcap.capture.ring_settings import RingSize

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def input_path(text: str) -> Path:
    """An input file argument as given; refuses an empty one (``Path("")`` would be ``.``)."""
    if not text:
        raise BadFileError("the input path is empty")
    return Path(text)


def parse_size(text: str, option: str) -> int:
    """``4096``, ``64K``, ``8MiB``, ``1G`` -> bytes (binary units)."""
    match = _SIZE.match(text)
    unit = match[2].lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(f"{option}: {text!r} is not a size (e.g. 4096, 64K, 8MiB, 1G)")
    value = int(match[1]) * _UNITS[unit]
    if value <= 0:
        raise UsageError(f"{option}: size must be positive, got {text!r}")
    return value


def file_name(option: str) -> Callable[[str], Path]:
    """A typer ``parser`` for a file option: an empty name is refused here, before a
    ``Path`` turns it into ``.`` (the current directory)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise UsageError(f"{option}: the file name is empty")
        return Path(text)

    return parse


output_file = file_name("-o/--output")
"""The parser of every command's ``-o/--output`` (``typer.Option(..., parser=output_file)``)."""


def arrow_output_file(text: str) -> Path:
    """``-o`` of the commands that write an Arrow IPC file (record, recover, bench): a file
    of its own, since the footer points back into it; ``-`` is not stdout there."""
    if text.strip() == "-":
        raise UsageError(
            "-o/--output: an Arrow IPC file cannot go to stdout (its footer points back "
            "into the file); give a file name (./- for a file named -)"
        )
    return output_file(text)


def positive_seconds(value: float | None, option: str) -> float | None:
    """A duration in seconds that is a finite number above 0 (nan, inf, 0 are refused)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option} must be a finite number of seconds above 0, got {value}")
    return value


def parse_buffer_size(text: str | None, transport: str) -> RingSize:
    """``--buffer-size`` for ``transport`` (its default when None): the rings' real size,
    refused below one page or above what the kernel can allocate."""
    from ebcap.capture.ring_settings import default_buffer_bytes, ring_size

    if text is None:
        return ring_size(transport, default_buffer_bytes(transport))
    requested = parse_size(text, "--buffer-size")
    try:
        return ring_size(transport, requested)
    except UsageError as exc:
        raise UsageError(f"--buffer-size {text}: {exc}") from None


def unused_wakeup(wakeup: str | None, transport: str) -> str | None:
    """What to note about a --wakeup the transport does not use (None: nothing).

    --wakeup is the perf transport's: a ring buffer wakes its reader by its own
    rule, so the value is said to be unused rather than silently dropped.
    """
    if wakeup is None or transport == "perf":
        return None
    return (
        f"--wakeup {wakeup} is not used: a ring buffer wakes its reader by its own rule "
        "(when the reader has caught up)"
    )


def check_watermark(wakeup: str | None, watermark: int | None, ring_bytes: int) -> None:
    """A byte watermark must be below the size of one ring, or no wakeup would ever come."""
    if watermark is not None and watermark >= ring_bytes:
        raise UsageError(
            f"--wakeup {wakeup}: a watermark of {watermark} bytes must be below the "
            f"{ring_bytes}-byte ring of each CPU"
        )


def rounding_note(text: str | None, ring: RingSize) -> str | None:
    """What to note when ``--buffer-size TEXT`` was rounded to ``ring`` (None: it was not)."""
    return f"--buffer-size {text} {ring.note}" if ring.note else None


def parse_wakeup(text: str | None) -> tuple[int | None, int | None]:
    """``--wakeup``: a number of events (``64``) or a byte watermark (``256K``); None: the
    default number of events.

    Returns (wakeup_events, watermark_bytes).
    """
    if text is None:
        from ebcap.capture.ring_settings import DEFAULT_WAKEUP_EVENTS

        return DEFAULT_WAKEUP_EVENTS, None
    stripped = text.strip()
    if stripped.isdecimal():
        events = int(stripped)
        if not 1 <= events <= 1 << 20:
            raise UsageError(f"--wakeup: events must be 1..{1 << 20}, got {events}")
        return events, None
    return None, parse_size(stripped, "--wakeup")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def options_given(ctx: typer.Context, besides: set[str]) -> list[str]:
    """The options of ``ctx``'s command the user set (on the command line or through the
    environment), by their long names, except those named in ``besides``."""
    given = []
    for param in ctx.command.params:
        if param.name in besides or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append(max(param.opts, key=len))
    return given
