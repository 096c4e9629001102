"""What a recording needs from the kernel's permission checks, per source and
transport, checked before any file or kernel object is made.

Measured on this kernel with ``setpriv --bounding-set`` (perf_event_paranoid 2,
unprivileged_bpf_disabled 2):

- syscalls, tracepoint: CAP_BPF and CAP_PERFMON (tracing program types); a
  tracepoint source also reads its format in tracefs, which here only root may
  read (CAP_DAC_READ_SEARCH otherwise), and mounts tracefs if it is not
  (CAP_SYS_ADMIN);
- tc: CAP_BPF and CAP_NET_ADMIN (a networking program type, a clsact qdisc);
- xdp: CAP_BPF and CAP_NET_ADMIN (a networking program type, attached to an
  interface; the capture detaches the program it holds). Naming or replacing
  another XDP program found on the interface opens it by id
  (BPF_PROG_GET_FD_BY_ID), which takes CAP_SYS_ADMIN: without it the refusal
  gives the program's id only;
- bench: CAP_BPF (a socket filter driven by BPF_PROG_TEST_RUN);
- a pinned map: nothing for a ring buffer (the pin's file permissions);
- the perf transport adds CAP_PERFMON (per-CPU perf events), and CAP_IPC_LOCK
  once its rings lock more memory than an unprivileged process may: the
  kernel's perf_mmap() lets each user lock ``perf_event_mlock_kb`` per online
  CPU, then charges the rest against RLIMIT_MEMLOCK, unless
  perf_event_paranoid is -1 or the process has CAP_IPC_LOCK. The soft
  RLIMIT_MEMLOCK is raised to the hard one first where that is enough.
"""

from __future__ import annotations

import mmap
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ebcap.bpf import fs
from ebcap.bpf.caps import missing_capabilities, require_capabilities
from ebcap.bpf.cpus import online_cpus
from ebcap.capture.ring_settings import RingSize

PERF_SYSCTLS: Final = Path("/proc/sys/kernel")
_KIB: Final = 1024

_SOURCE_NEEDS: Final[dict[str, dict[str, str]]] = {
    "syscalls": {"CAP_BPF": "loading its BPF program", "CAP_PERFMON": "a raw tracepoint program"},
    "tracepoint": {"CAP_BPF": "loading its BPF program", "CAP_PERFMON": "a tracepoint program"},
    "tc": {
        "CAP_BPF": "loading its BPF program",
        "CAP_NET_ADMIN": "a tc program and its clsact qdisc",
    },
    "xdp": {
        "CAP_BPF": "loading its BPF program",
        "CAP_NET_ADMIN": "an XDP program attached to an interface",
    },
    "bench": {"CAP_BPF": "loading its BPF program"},
    "pin": {},
}
"""Per source family: capability -> what needs it, before the transport's own."""


@dataclass(frozen=True)
class MemlockBudget:
    """How much perf ring memory this process may lock without CAP_IPC_LOCK, in pages."""

    user_pages: int
    """perf_event_mlock_kb per online CPU: the user's share, charged first. It is one
    budget for all of the user's processes: others may hold part of it."""
    rlimit_pages: int
    """RLIMIT_MEMLOCK (soft) less what this process has pinned already."""
    unlimited: bool
    """perf_event_paranoid is -1, or RLIMIT_MEMLOCK is unlimited: no limit applies."""

    @property
    def pages(self) -> int:
        return self.user_pages + self.rlimit_pages

    def fits(self, ring_pages: int, rings: int) -> bool:
        """Whether ``rings`` rings of ``ring_pages`` data pages (plus a meta page) fit."""
        return self.unlimited or rings * (ring_pages + 1) <= self.pages

    def largest_sure_ring(self, rings: int) -> int:
        """The most data pages per ring (a power of two) that fit in RLIMIT_MEMLOCK alone,
        whatever the user's other processes lock (0 if not even one page)."""
        per_ring = self.rlimit_pages // max(rings, 1) - 1
        return 1 << (per_ring.bit_length() - 1) if per_ring >= 1 else 0


def _sysctl(name: str, default: int) -> int:
    try:
        return int((PERF_SYSCTLS / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _pinned_pages(page_size: int) -> int:
    """VmPin of this process in pages (0 if it cannot be read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmPin:"):
                return int(line.split()[1]) * _KIB // page_size
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def memlock_budget(page_size: int = mmap.PAGESIZE) -> MemlockBudget:
    """What perf_mmap() will allow this process without CAP_IPC_LOCK, if the user's
    other processes lock no perf rings of their own (if they do, mapping the rings
    fails later with a message that names CAP_IPC_LOCK all the same)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    unlimited = _sysctl("perf_event_paranoid", 2) < 0 or soft == resource.RLIM_INFINITY
    user_kib = _sysctl("perf_event_mlock_kb", 0) * len(online_cpus())
    rlimit_pages = 0 if unlimited else max(soft // page_size - _pinned_pages(page_size), 0)
    return MemlockBudget(user_kib * _KIB // page_size, rlimit_pages, unlimited)


def make_room_for_perf_rings(ring_pages: int, rings: int) -> None:
    """Raise the soft RLIMIT_MEMLOCK towards the hard one if the rings need it (no
    capability needed), so that CAP_IPC_LOCK is needed only when that is not enough."""
    budget = memlock_budget()
    if budget.fits(ring_pages, rings):
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    wanted = soft + (rings * (ring_pages + 1) - budget.pages) * mmap.PAGESIZE
    new = hard if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (new, hard))


def recording_needs(kind: str, transport: str, ring: RingSize, rings: int) -> dict[str, str]:
    """Capability -> what needs it, for a ``kind`` source (syscalls, tracepoint, tc,
    xdp, bench, pin) over ``transport`` with ``rings`` rings of ``ring``."""
    needs = dict(_SOURCE_NEEDS[kind])
    if kind == "tracepoint":
        needs.update(tracefs_needs())
    if transport != "perf":
        return needs
    needs.setdefault("CAP_PERFMON", "per-CPU perf events")
    budget = memlock_budget()
    if not budget.fits(ring.pages, rings):
        fit = budget.largest_sure_ring(rings)
        smaller = f"; --buffer-size {fit * mmap.PAGESIZE} or less needs none" if fit else ""
        locked = rings * (ring.pages + 1) * mmap.PAGESIZE // _KIB
        needs["CAP_IPC_LOCK"] = (
            f"{rings} perf rings of {ring.bytes} bytes lock {locked} KiB, over the "
            f"{budget.pages * mmap.PAGESIZE // _KIB} KiB allowed without it "
            f"(perf_event_mlock_kb per CPU + RLIMIT_MEMLOCK){smaller}"
        )
    return needs


def tracefs_needs() -> dict[str, str]:
    """What reading a tracepoint's format needs beyond the tracing capabilities."""
    root = fs.mounted_tracefs()
    if root is None:
        return {"CAP_SYS_ADMIN": f"mounting tracefs at {fs.TRACEFS_CANDIDATES[0]}"}
    events = os.path.join(root, "events")
    if os.access(events, os.R_OK | os.X_OK, effective_ids=True):
        return {}
    return {"CAP_DAC_READ_SEARCH": f"reading tracepoint formats under {events} (root's only here)"}


def require_recording_capabilities(
    what: str, kind: str, transport: str, ring: RingSize, rings: int
) -> None:
    """Raise one line naming exactly the capabilities missing for this recording."""
    if transport == "perf" and "CAP_IPC_LOCK" in missing_capabilities(["CAP_IPC_LOCK"]):
        make_room_for_perf_rings(ring.pages, rings)
    require_capabilities(what, recording_needs(kind, transport, ring, rings))
