"""Parsers for command-line values (sizes, CPU lists), each failing with one clear line."""

from __future__ import annotations

import re
from pathlib import Path

from ebcap.errors import BadFileError, UsageError

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


def parse_wakeup(text: str) -> tuple[int | None, int | None]:
    """``--wakeup``: a number of events (``64``) or a byte watermark (``256K``).

    Returns (wakeup_events, watermark_bytes).
    """
    stripped = text.strip()
    if stripped.isdigit():
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
