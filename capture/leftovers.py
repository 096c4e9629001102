"""Who owns ebcap's netlink attachments, and removing those whose owner is gone.

Netlink attachments are held by the interface, not by a file descriptor: if
ebcap dies without cleaning up (SIGKILL, a crash of the interpreter), its XDP
program ``ebcap_xdp`` stays attached, its tc filter stays on its hook and a
clsact qdisc it added stays on the interface. So every attachment records its
owner, a process named by pid *and* start time (``/proc/PID/stat`` field 22,
clock ticks since boot: a pid reused by another process is not the owner):

- a tc filter is named ``ebcap_tc.<pid>.<start>.<program id>``;
- an XDP program has a marker ``/run/ebcap/xdp/<netns>.<ifindex>.<program id>``
  holding ``<pid> <start>``, written before it is attached;
- a clsact qdisc ebcap added has a marker ``/run/ebcap/clsact/<netns>.<ifindex>``
  holding the interface name.

:func:`remove_leftovers` (run by every ``ebcap record`` start) removes, on
every interface of the current network namespace, the XDP programs and tc
filters whose owner is gone (an ebcap one without a readable owner counts as
gone when no process holds a file descriptor of its program), then the clsact
qdiscs ebcap added that have no filter left. The same last rule applies when a
capture ends normally: a clsact qdisc goes only if ebcap added it and no
filter at all remains on it, so a capture never pulls the qdisc from under
another capture or another tool. Every change of a hook happens under one
lock (:func:`hooks_lock`), so concurrent ebcap processes see each other's
qdisc and filters whole.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute

from ebcap.capture import netlink_hooks as hooks
from ebcap.errors import EbcapError, KernelError

XDP_PROGRAM_NAME: Final = "ebcap_xdp"
TC_PROGRAM_NAME: Final = "ebcap_tc"
TC_FILTER_PREFIX: Final = TC_PROGRAM_NAME + "."
RUN_DIR: Final = Path("/run/ebcap")
CLSACT_MARKERS: Final = RUN_DIR / "clsact"
XDP_MARKERS: Final = RUN_DIR / "xdp"
LOCK_FILE: Final = RUN_DIR / "hooks.lock"
LOCK_TIMEOUT_S: Final = 10.0
_LOCK_POLL_S: Final = 0.01
STAT_STARTTIME: Final = 22
"""``/proc/PID/stat`` field of the process start time (1-based, as proc(5) counts)."""
_STAT_AFTER_COMM: Final = 3
"""The first field after the ``(comm)`` one, which may itself hold spaces."""
ZOMBIE: Final = "Z"


@dataclass(frozen=True)
class Owner:
    """A process, told apart from a later one with the same pid by its start time."""

    pid: int
    start: int
    pidns: int | None = None
    """Its PID namespace (inode): a pid means something only there (None: not known)."""

    @classmethod
    def me(cls) -> Owner:
        start = process_start_time(os.getpid())
        if start is None:  # pragma: no cover - /proc is always there for ourselves
            raise KernelError("cannot read /proc/self/stat")
        return cls(os.getpid(), start, pidns_id())

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie does not). One of another PID
        namespace (a container sharing the network namespace) cannot be looked up from
        here: it counts as alive, so that a running recorder is never taken apart."""
        if self.pidns is not None and self.pidns != pidns_id():
            return True
        return process_start_time(self.pid) == self.start


def pidns_id() -> int:
    """This process's PID namespace (its inode)."""
    return os.stat("/proc/self/ns/pid").st_ino


def process_start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] == ZOMBIE:
        return None
    return int(fields[STAT_STARTTIME - _STAT_AFTER_COMM])


def program_held(prog_id: int) -> bool:
    """Whether any process holds a file descriptor of BPF program ``prog_id``."""
    wanted = f"prog_id:\t{prog_id}\n"
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            if wanted in fdinfo.read_text():
                return True
        except OSError:
            continue
    return False


@contextmanager
def hooks_lock() -> Iterator[None]:
    """Hold ebcap's machine-wide lock on hook changes (flock: gone with its process).

    Without write access to /run the lock is skipped: such a process cannot
    change hooks anyway.
    """
    try:
        RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except PermissionError:
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KernelError(
                        f"another ebcap process holds {LOCK_FILE} for over {LOCK_TIMEOUT_S:.0f} s",
                        errno.EWOULDBLOCK,
                    ) from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)


def netns_id() -> int:
    """The current network namespace (its inode), so markers of other namespaces stay apart."""
    return os.stat("/proc/self/ns/net").st_ino


# --- markers --------------------------------------------------------------------
def clsact_marker(index: int) -> Path:
    """Where ebcap notes that it added the clsact qdisc of ``index`` in this netns."""
    return CLSACT_MARKERS / f"{netns_id()}.{index}"


def mark_clsact(index: int, iface: str) -> None:
    CLSACT_MARKERS.mkdir(parents=True, exist_ok=True)
    clsact_marker(index).write_text(iface)


def clsact_marked(index: int, iface: str) -> bool:
    """Whether ebcap added the clsact qdisc of ``iface`` (a marker of another
    interface that had the same ifindex before is stale: it is removed)."""
    marker = clsact_marker(index)
    try:
        named = marker.read_text()
    except FileNotFoundError:
        return False
    if named != iface:
        marker.unlink(missing_ok=True)
        return False
    return True


def xdp_marker(index: int, prog_id: int) -> Path:
    return XDP_MARKERS / f"{netns_id()}.{index}.{prog_id}"


def mark_xdp(index: int, prog_id: int, owner: Owner) -> None:
    XDP_MARKERS.mkdir(parents=True, exist_ok=True)
    pidns = "" if owner.pidns is None else f" {owner.pidns}"
    xdp_marker(index, prog_id).write_text(f"{owner.pid} {owner.start}{pidns}")


def xdp_owner(index: int, prog_id: int) -> Owner | None:
    """The owner an XDP marker names ("pid start [pidns]"), or None without a
    (readable) marker."""
    try:
        numbers = [int(n) for n in xdp_marker(index, prog_id).read_text().split()]
    except (OSError, ValueError):
        return None
    if len(numbers) not in (2, 3):
        return None
    return Owner(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None)


def tc_filter_name(owner: Owner, prog_id: int) -> str:
    """``ebcap_tc.<pid>.<start>.<id>[.<pidns>]``: whose filter it is."""
    pidns = "" if owner.pidns is None else f".{owner.pidns}"
    return f"{TC_FILTER_PREFIX}{owner.pid}.{owner.start}.{prog_id}{pidns}"


def filter_owner(name: str) -> Owner | None:
    """The owner a :func:`tc_filter_name` names, or None if it names none."""
    parts = name.removeprefix(TC_FILTER_PREFIX).split(".")
    if not name.startswith(TC_FILTER_PREFIX) or len(parts) not in (3, 4):
        return None
    if not all(map(str.isdigit, parts)):
        return None
    return Owner(int(parts[0]), int(parts[1]), int(parts[3]) if len(parts) == 4 else None)


# --- what is a leftover ---------------------------------------------------------
def xdp_leftover(index: int, prog_id: int) -> bool:
    """An ebcap XDP program whose owner is gone."""
    if hooks.program_name(prog_id) != XDP_PROGRAM_NAME:
        return False
    owner = xdp_owner(index, prog_id)
    return not owner.alive() if owner is not None else not program_held(prog_id)


def tc_leftover(flt: Any) -> bool:
    """An ebcap tc filter whose owner is gone."""
    name = hooks.filter_name(flt)
    if not name.startswith(TC_FILTER_PREFIX):
        return False
    owner = filter_owner(name)
    if owner is not None:
        return not owner.alive()
    prog_id = hooks.filter_program_id(flt)
    return prog_id is not None and not program_held(prog_id)


# --- removal ----------------------------------------------------------------------
def remove_xdp_leftovers(ipr: IPRoute, index: int, iface: str) -> list[str]:
    """Detach the XDP programs ebcap left on ``iface``; one note per removal."""
    notes = []
    for mode_flag, prog_id in hooks.xdp_programs(ipr, index):
        if xdp_leftover(index, prog_id):
            hooks.detach_xdp(ipr, index, prog_id, mode_flag)
            xdp_marker(index, prog_id).unlink(missing_ok=True)
            notes.append(f"removed XDP program {XDP_PROGRAM_NAME} (id {prog_id}) left on {iface}")
        elif _out_of_reach(index, prog_id):
            notes.append(
                f"XDP program id {prog_id} on {iface} was left by an ebcap process that is "
                "gone; removing it opens it by id, which needs CAP_SYS_ADMIN"
            )
    return notes


def _out_of_reach(index: int, prog_id: int) -> bool:
    """A leftover by its marker whose program this process may not open by id."""
    owner = xdp_owner(index, prog_id)
    return owner is not None and not owner.alive() and not hooks.program_name(prog_id)


def remove_tc_leftovers(ipr: IPRoute, index: int, iface: str) -> list[str]:
    """Delete the tc filters ebcap left on ``iface``, then its unused clsact qdisc."""
    notes = []
    for parent, flt in hooks.tc_filters(ipr, index):
        if tc_leftover(flt):
            hooks.delete_tc_filter(ipr, index, parent, flt)
            notes.append(f"removed tc filter {hooks.filter_name(flt)} left on {iface}")
    if remove_clsact_if_unused(ipr, index, iface):
        notes.append(f"removed clsact qdisc ebcap had added to {iface}")
    return notes


def remove_clsact_if_unused(ipr: IPRoute, index: int, iface: str) -> bool:
    """Delete the clsact qdisc if ebcap added it and no filter is left; True if it did."""
    if not clsact_marked(index, iface):
        return False
    if not hooks.has_clsact(ipr, index):
        clsact_marker(index).unlink(missing_ok=True)
        return False
    if hooks.tc_filters(ipr, index):
        return False
    hooks.delete_clsact(ipr, index)
    clsact_marker(index).unlink(missing_ok=True)
    return True


def _forget_stale_xdp_markers(attached: set[tuple[int, int]]) -> None:
    """Drop this namespace's XDP markers of programs no longer attached whose owner is gone."""
    prefix = f"{netns_id()}."
    for marker in XDP_MARKERS.glob(prefix + "*"):
        try:
            index, prog_id = (int(p) for p in marker.name.removeprefix(prefix).split("."))
        except ValueError:
            continue
        owner = xdp_owner(index, prog_id)
        if (index, prog_id) not in attached and (owner is None or not owner.alive()):
            marker.unlink(missing_ok=True)


def remove_leftovers() -> list[str]:
    """Remove what killed ebcap processes left on this namespace's interfaces.

    Returns one line per removal (and per leftover that could not be removed,
    e.g. without CAP_NET_ADMIN, or when the lock or a marker is out of reach):
    a failure here never stops a recording.
    """
    notes: list[str] = []
    try:
        _remove_leftovers(notes)
    except (EbcapError, OSError) as exc:
        notes.append(f"could not look for what ebcap left on interfaces: {exc}")
    return notes


def _remove_leftovers(notes: list[str]) -> None:
    with IPRoute() as ipr, hooks_lock():
        names = hooks.interfaces(ipr)
        xdp = hooks.all_xdp_programs(ipr)
        with_clsact = hooks.clsact_interfaces(ipr)
        marked = {
            int(p.name.rsplit(".", 1)[1])
            for p in CLSACT_MARKERS.glob(f"{netns_id()}.*")
            if p.name.rsplit(".", 1)[1].isdigit()
        }
        for index in sorted({i for i, _, _ in xdp} | with_clsact | marked):
            iface = names.get(index)
            if iface is None:  # gone with its interface: only the marker is left
                clsact_marker(index).unlink(missing_ok=True)
                continue
            for remove in (remove_xdp_leftovers, remove_tc_leftovers):
                try:
                    notes += remove(ipr, index, iface)
                except EbcapError as exc:
                    notes.append(f"could not remove what ebcap left on {iface}: {exc}")
        _forget_stale_xdp_markers({(i, p) for i, _, p in xdp})
