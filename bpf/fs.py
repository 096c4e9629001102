"""The kernel filesystems ebcap needs: bpffs for pins, tracefs for tracepoint ids.

Neither is mounted by default on every system; as root ebcap mounts them
itself rather than asking the user to, and says which capability is missing
when it cannot.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from ebcap.bpf import _sys
from ebcap.errors import KernelError, NotSupportedError, UsageError

BPFFS_NAME: Final = "bpf"
TRACEFS_NAME: Final = "tracefs"
TRACEFS_CANDIDATES: Final = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_MOUNTS: Final = Path("/proc/self/mounts")
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline, backslash as \\NNN."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, in mount order."""
    try:
        text = _MOUNTS.read_text()
    except OSError as exc:
        raise KernelError(f"cannot read {_MOUNTS}: {exc.strerror}", exc.errno or 0) from None
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            found.append((_unescape(fields[1]), fields[2]))
    return found


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """Type of the filesystem holding ``path`` (the last, longest matching mount)."""
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for point, fstype in mounts():
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return None if best is None else best[1]


def _is_mount_of(path: str, fstype: str) -> bool:
    real = os.path.realpath(path)
    return any(point == real and kind == fstype for point, kind in mounts())


def ensure_bpffs(path: str = "/sys/fs/bpf") -> str:
    """Make sure a bpf filesystem is mounted at ``path``; return ``path``."""
    if filesystem_type(path) == BPFFS_NAME:
        return path
    if not os.path.isdir(path):
        raise UsageError(f"cannot mount a bpf filesystem at {path}: not a directory")
    _sys.mount("bpf", path, BPFFS_NAME, _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC)
    return path


def mounted_tracefs() -> str | None:
    """Root of a tracefs already mounted at one of the usual places, else None."""
    for candidate in TRACEFS_CANDIDATES:
        os.path.isdir(os.path.join(candidate, "events"))  # triggers the debugfs automount
        if _is_mount_of(candidate, TRACEFS_NAME):
            return candidate
    return None


def ensure_tracefs() -> str:
    """Root of a mounted tracefs (``events/CAT/NAME/id`` lives below it)."""
    mounted = mounted_tracefs()
    if mounted is not None:
        return mounted
    primary = TRACEFS_CANDIDATES[0]
    if not os.path.isdir(primary):
        raise NotSupportedError(f"cannot mount tracefs: {primary} does not exist", TRACEFS_NAME)
    _sys.mount(TRACEFS_NAME, primary, TRACEFS_NAME, _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC)
    return primary
