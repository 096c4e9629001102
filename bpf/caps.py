"""Which capabilities this process has, which ones each kernel operation checks,
and the one line that names exactly those missing.

Reading ``CapEff`` from /proc is cheap and lets `ebcap record` say "needs
CAP_NET_ADMIN" before it creates a file or touches the kernel, and lets a
kernel EPERM name what was really missing rather than a guess. Since Linux
5.8 CAP_SYS_ADMIN still passes the checks for CAP_BPF and CAP_PERFMON (the
kernel's bpf_capable() and perfmon_capable()), but not those for
CAP_NET_ADMIN or CAP_IPC_LOCK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from ebcap.errors import MissingCapabilityError

CAP_DAC_READ_SEARCH: Final = 2
CAP_NET_ADMIN: Final = 12
CAP_IPC_LOCK: Final = 14
CAP_SYS_ADMIN: Final = 21
CAP_SYS_NICE: Final = 23
CAP_PERFMON: Final = 38
CAP_BPF: Final = 39
CAPABILITY_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
        CAP_NET_ADMIN: "CAP_NET_ADMIN",
        CAP_IPC_LOCK: "CAP_IPC_LOCK",
        CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
        CAP_SYS_NICE: "CAP_SYS_NICE",
        CAP_PERFMON: "CAP_PERFMON",
        CAP_BPF: "CAP_BPF",
    }
)
_BY_NAME: Final = {name: number for number, name in CAPABILITY_NAMES.items()}
_SYS_ADMIN_PASSES: Final = frozenset({CAP_BPF, CAP_PERFMON})


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The CapEff bit mask of this process (0 if it cannot be read)."""
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        return 0
    return 0


def missing_capabilities(needed: Iterable[str], mask: int | None = None) -> list[str]:
    """Those of ``needed`` (names such as ``CAP_BPF``) this process lacks, in order."""
    caps = effective_capabilities() if mask is None else mask
    missing = []
    for name in dict.fromkeys(needed):
        number = _BY_NAME[name]
        held = caps & (1 << number) or (number in _SYS_ADMIN_PASSES and caps & (1 << CAP_SYS_ADMIN))
        if not held:
            missing.append(name)
    return missing


def require_capabilities(what: str, needs: Mapping[str, str], mask: int | None = None) -> None:
    """Raise one line naming each capability of ``needs`` that is missing, and why.

    ``needs`` maps a capability name to what needs it, e.g. ``{"CAP_NET_ADMIN":
    "a tc program and its clsact qdisc"}``; ``what`` is the command (``recording``).
    """
    missing = missing_capabilities(needs, mask)
    if not missing:
        return
    reasons = "; ".join(f"{name}: {needs[name]}" for name in missing)
    them = "it" if len(missing) == 1 else "them"
    raise MissingCapabilityError(
        f"{what} needs {' + '.join(missing)} ({reasons}): run as root or grant {them}",
        capability=" + ".join(missing),
    )
