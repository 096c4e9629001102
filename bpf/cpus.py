"""CPU sets as the kernel prints them (``0-1,3``).

Per-CPU maps hold one value per *possible* CPU, while perf rings exist only
for *online* ones; both lists come from sysfs in the same range syntax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from ebcap.errors import KernelError, UsageError

_SYSFS_CPU: Final = Path("/sys/devices/system/cpu")


MAX_CPU: Final = 65535
"""The highest CPU number a capture can hold (its ``cpu`` column is uint16; Linux builds
go up to 8192 CPUs)."""


def parse_cpu_list(text: str) -> list[int]:
    """Parse a CPU list such as ``"0,2-3"`` into sorted, distinct CPU numbers."""
    cpus: set[int] = set()
    stripped = text.strip()
    if not stripped:
        raise UsageError("empty CPU list")
    for part in stripped.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            lo = int(first, 10)
            hi = int(last, 10) if sep else lo
        except ValueError:
            raise UsageError(f"bad CPU list {text!r}: {part!r} is not N or N-M") from None
        if lo < 0 or hi < lo:
            raise UsageError(f"bad CPU list {text!r}: range {part!r} is empty or negative")
        if hi > MAX_CPU:
            raise UsageError(f"bad CPU list {text!r}: CPU numbers go up to {MAX_CPU}")
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def _read_sysfs_list(name: str) -> list[int]:
    path = _SYSFS_CPU / name
    try:
        text = path.read_text()
    except OSError as exc:
        raise KernelError(f"cannot read {path}: {exc.strerror}", exc.errno or 0) from None
    return parse_cpu_list(text)


def possible_cpus() -> list[int]:
    """CPUs the kernel could ever bring up: the slots of per-CPU map values."""
    return _read_sysfs_list("possible")


def online_cpus() -> list[int]:
    """CPUs running now: the ones that get a perf ring."""
    return _read_sysfs_list("online")
