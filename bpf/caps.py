"""Which capabilities this process has, to refuse early with the one that is missing.

Reading ``CapEff`` from /proc is cheap and lets `ebcap record` say
"needs CAP_BPF" before it creates a file or touches the kernel.
"""

from __future__ import annotations

from ebcap.errors import MissingCapabilityError

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAPABILITY_NAMES = {CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}


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


def require_tracing_capabilities(mask: int | None = None) -> None:
    """Raise naming the first missing capability among those recording needs.

    CAP_SYS_ADMIN implies the others on every kernel that has them.
    """
    caps = effective_capabilities() if mask is None else mask
    if caps & (1 << CAP_SYS_ADMIN):
        return
    for cap in (CAP_BPF, CAP_PERFMON):
        if not caps & (1 << cap):
            name = CAPABILITY_NAMES[cap]
            raise MissingCapabilityError(
                f"recording needs {name} (and CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN): "
                "run as root or grant them, e.g. `sudo ebcap record ...`",
                capability=name,
            )
