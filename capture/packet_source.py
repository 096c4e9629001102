"""Packets as a source: XDP or tc on one interface, attached through rtnetlink (pyroute2).

``XdpSource`` attaches the XDP program in native (driver) or generic (skb)
mode; ``TcSource`` adds a direct-action bpf filter on the clsact qdisc's
ingress or egress hook, creating the qdisc only if the interface has none.
Both programs only observe (see :mod:`ebcap.bpf.programs.packet`).

Leftovers. Netlink attachments are held by the interface, not by ebcap's
file descriptors: if ebcap dies without cleaning up (SIGKILL, power cut of
the process), the XDP program ``ebcap_xdp`` stays attached, the tc filter
``ebcap_tc.<pid>.<program id>`` stays on its hook and a clsact qdisc ebcap created stays
on the interface (its creation is remembered in ``/run/ebcap/clsact/``).
The next packet source started on that interface removes them first and
reports each removal through ``notify``:

- an ``ebcap_xdp`` program that no process holds a file descriptor of;
- an ``ebcap_tc.<pid>.<program id>`` filter whose process is gone;
- a clsact qdisc ebcap created that has no filter left on either hook
  (the same rule applies when a capture ends normally, so two captures on
  one interface never pull the qdisc from under each other).
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import TC_H_CLSACT
from pyroute2.netlink.rtnl.ifinfmsg import (
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_HW_MODE,
    XDP_FLAGS_REPLACE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
)

from ebcap.bpf import _sys
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program, program_name_by_id
from ebcap.bpf.programs import packet as program
from ebcap.capture.layout import PayloadLayout
from ebcap.capture.packet_decode import PACKET_FIELDS, decode_packets
from ebcap.capture.sources import KernelSide, Source, create_counter_map, create_events_map
from ebcap.errors import (
    BpfObjectNotFoundError,
    KernelError,
    MissingCapabilityError,
    NotSupportedError,
    UsageError,
)

XDP_PROGRAM_NAME: Final = "ebcap_xdp"
TC_PROGRAM_NAME: Final = "ebcap_tc"
TC_FILTER_PREFIX: Final = TC_PROGRAM_NAME + "."
"""A tc filter is named ``ebcap_tc.<pid>.<program id>``: whose it is (is he still
alive?) and which of possibly several captures of that process."""
CLSACT_MARKERS: Final = Path("/run/ebcap/clsact")

XDP_MODES: Final = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
_XDP_PROG_IDS: Final = {
    "IFLA_XDP_DRV_PROG_ID": XDP_FLAGS_DRV_MODE,
    "IFLA_XDP_SKB_PROG_ID": XDP_FLAGS_SKB_MODE,
    "IFLA_XDP_HW_PROG_ID": XDP_FLAGS_HW_MODE,
}
TC_H_MIN_INGRESS: Final = 0xFFF2
TC_H_MIN_EGRESS: Final = 0xFFF3
TC_HOOKS: Final = {
    "ingress": (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_INGRESS,
    "egress": (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_EGRESS,
}
"""Filter parent of each clsact hook (ffff:fff2 / ffff:fff3)."""
TC_FILTER_HANDLE: Final = 1

Notify = Callable[[str], None]


def list_packet_sources(pattern: str = "*") -> list[str]:
    """``xdp:IFACE`` and ``tc:IFACE:DIR`` specs of this namespace's interfaces.

    The glob matches the interface name or the whole spec (``eth*``, ``tc:*``).
    """
    with IPRoute() as ipr, _netlink("listing network interfaces"):
        names = sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())
    specs = []
    for name in names:
        for spec in (f"xdp:{name}", *(f"tc:{name}:{d}" for d in TC_HOOKS)):
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(spec, pattern):
                specs.append(spec)
    return specs


class PacketSource(Source):
    """What XDP and tc capture share: the event, its decoding, maps and program."""

    variable_payloads = True
    """Events are longer than the layout (the packet bytes follow): readers must not trim."""
    hook: str
    prog_type: int
    program_name: str

    def __init__(self, iface: str, snaplen: int, notify: Notify | None) -> None:
        self.iface = iface
        self.snaplen = program.check_snaplen(snaplen)
        self.notify = notify
        self.notes: list[str] = []
        """What the start cleaned up (also passed to ``notify``)."""
        self.layout = PayloadLayout(program.PACKET_EVENT, "ts_ns", "cpu")

    def arrow_fields(self) -> list[pa.Field]:
        return list(PACKET_FIELDS)

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        return decode_packets(events)

    def _note(self, message: str) -> None:
        self.notes.append(message)
        if self.notify is not None:
            self.notify(message)

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        ipr = IPRoute()
        stack.callback(ipr.close)
        index = interface_index(ipr, self.iface)
        events = create_events_map(transport, buffer_bytes, stack)
        drops = create_counter_map("ebcap_drops", 8, stack)
        scratch = Map.create(
            _sys.BPF_MAP_TYPE_PERCPU_ARRAY,
            4,
            program.scratch_size(self.snaplen),
            1,
            name="ebcap_pkt_buf",
        )
        stack.callback(scratch.close)
        insns = program.build_packet_program(
            self.hook, transport, events.fd, drops.fd, scratch.fd, self.snaplen
        )
        prog = Program.load(self.prog_type, insns, name=self.program_name)
        stack.callback(prog.close)
        self._prepare(ipr, index)
        kernel = KernelSide(events, drops)

        def attach() -> None:
            detach = self._attach(ipr, index, prog)
            stack.callback(detach)
            kernel.detach = detach

        kernel.attach = attach
        return kernel

    def _prepare(self, ipr: IPRoute, index: int) -> None:
        """Clear leftovers of a killed ebcap; refuse what cannot work, before attaching."""

    def _attach(self, ipr: IPRoute, index: int, prog: Program) -> Callable[[], None]:
        raise NotImplementedError


class XdpSource(PacketSource):
    """Every packet received on ``iface``, seen by XDP before the stack."""

    hook = program.HOOK_XDP
    prog_type = _sys.BPF_PROG_TYPE_XDP
    program_name = XDP_PROGRAM_NAME

    def __init__(
        self,
        iface: str,
        mode: str = "native",
        snaplen: int = program.SNAPLEN_DEFAULT,
        force: bool = False,
        notify: Notify | None = None,
    ) -> None:
        """``force`` replaces another XDP program on ``iface`` (it is not put back)."""
        if mode not in XDP_MODES:
            raise UsageError(f"unknown XDP mode {mode!r}: use {' or '.join(XDP_MODES)}")
        super().__init__(iface, snaplen, notify)
        self.mode = mode
        self.force = force
        self.spec = f"xdp:{iface}"

    def _prepare(self, ipr: IPRoute, index: int) -> None:
        for mode_flag, prog_id in xdp_programs(ipr, index):
            name = _program_name(prog_id)
            if name == XDP_PROGRAM_NAME and not _fd_holders(prog_id):
                _detach_xdp(ipr, index, prog_id, mode_flag)
                self._note(f"removed XDP program {name} (id {prog_id}) left on {self.iface}")
            elif self.force:
                _detach_xdp(ipr, index, prog_id, mode_flag)
                self._note(f"replaced XDP program {name!r} (id {prog_id}) on {self.iface}")
            else:
                raise UsageError(
                    f"{self.iface} already runs XDP program {name!r} (id {prog_id}); "
                    "--force replaces it for good"
                )

    def _attach(self, ipr: IPRoute, index: int, prog: Program) -> Callable[[], None]:
        mode_flag = XDP_MODES[self.mode]
        attrs = [
            ("IFLA_XDP_FD", prog.fd),
            ("IFLA_XDP_FLAGS", mode_flag | XDP_FLAGS_UPDATE_IF_NOEXIST),
        ]
        try:
            with _netlink(f"attaching XDP ({self.mode}) to {self.iface}"):
                ipr.link("set", index=index, xdp={"attrs": attrs})
        except NotSupportedError as exc:
            if self.mode != "native":
                raise
            hint = f"{exc}; --xdp-mode generic works on any interface"
            raise NotSupportedError(hint, exc.feature, exc.errno) from None
        prog_id = prog.id
        done: list[bool] = []

        def detach() -> None:
            if not done:
                done.append(True)
                _detach_xdp(ipr, index, prog_id, mode_flag)

        return detach


class TcSource(PacketSource):
    """Every packet through ``iface``'s tc ``ingress`` or ``egress`` hook."""

    hook = program.HOOK_TC
    prog_type = _sys.BPF_PROG_TYPE_SCHED_CLS
    program_name = TC_PROGRAM_NAME

    def __init__(
        self,
        iface: str,
        direction: str = "ingress",
        snaplen: int = program.SNAPLEN_DEFAULT,
        notify: Notify | None = None,
    ) -> None:
        if direction not in TC_HOOKS:
            raise UsageError(f"unknown tc direction {direction!r}: use ingress or egress")
        super().__init__(iface, snaplen, notify)
        self.direction = direction
        self.spec = f"tc:{iface}:{direction}"

    def _prepare(self, ipr: IPRoute, index: int) -> None:
        for parent, flt in tc_filters(ipr, index):
            pid = _filter_pid(flt)
            if pid is not None and not _alive(pid):
                _delete_filter(ipr, index, parent, flt)
                self._note(f"removed tc filter {_filter_name(flt)} left on {self.iface}")
        if _remove_clsact_if_unused(ipr, index):
            self._note(f"removed clsact qdisc ebcap had added to {self.iface}")

    def _attach(self, ipr: IPRoute, index: int, prog: Program) -> Callable[[], None]:
        if not _has_clsact(ipr, index):
            with _netlink(f"adding a clsact qdisc to {self.iface}"):
                ipr.tc("add", "clsact", index)
            _marker(index).parent.mkdir(parents=True, exist_ok=True)
            _marker(index).touch()
        parent = TC_HOOKS[self.direction]
        name = f"{TC_FILTER_PREFIX}{os.getpid()}.{prog.id}"
        try:
            with _netlink(f"adding a tc {self.direction} filter to {self.iface}"):
                ipr.tc(
                    "add-filter", "bpf", index, TC_FILTER_HANDLE, fd=prog.fd, name=name,
                    parent=parent, classid=1, direct_action=True,
                )  # fmt: skip
        except BaseException:
            _remove_clsact_if_unused(ipr, index)
            raise
        done: list[bool] = []

        def detach() -> None:
            if done:
                return
            done.append(True)
            for hook, flt in tc_filters(ipr, index):
                if hook == parent and _filter_name(flt) == name:
                    _delete_filter(ipr, index, hook, flt)
            _remove_clsact_if_unused(ipr, index)

        return detach


# --- rtnetlink ----------------------------------------------------------------
@contextmanager
def _netlink(what: str) -> Iterator[None]:
    """Turn a NetlinkError into the matching ebcap error, naming what was being done."""
    try:
        yield
    except NetlinkError as exc:
        code = exc.code
        reason = os.strerror(code) if code else str(exc)
        if code in (errno.EPERM, errno.EACCES):
            raise MissingCapabilityError(f"{what}: {reason}", "CAP_NET_ADMIN", code) from None
        if code in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise NotSupportedError(f"{what}: not supported here ({reason})", what, code) from None
        if code in (errno.EBUSY, errno.EEXIST):
            raise UsageError(f"{what}: the interface is busy ({reason})") from None
        raise KernelError(f"{what}: {reason}", code) from None


def interface_index(ipr: IPRoute, iface: str) -> int:
    """The ifindex of ``iface`` in this network namespace; UsageError if there is none."""
    with _netlink(f"looking up interface {iface}"):
        found = ipr.link_lookup(ifname=iface)
    if not found:
        raise UsageError(f"no network interface {iface!r} here (see `ip link`)")
    return int(found[0])


def xdp_programs(ipr: IPRoute, index: int) -> list[tuple[int, int]]:
    """(mode flag, program id) of each XDP program attached to interface ``index``."""
    with _netlink(f"reading interface {index}"):
        link = ipr.link("get", index=index)[0]
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return []
    return [(flag, xdp.get_attr(key)) for key, flag in _XDP_PROG_IDS.items() if xdp.get_attr(key)]


def _detach_xdp(ipr: IPRoute, index: int, prog_id: int, mode_flag: int) -> None:
    """Detach program ``prog_id`` only if it is still the one attached."""
    try:
        expected = Program(_sys.get_fd_by_id(_sys.BPF_PROG_GET_FD_BY_ID, prog_id))
    except BpfObjectNotFoundError:
        return
    with expected:
        attrs = [
            ("IFLA_XDP_FD", -1),
            ("IFLA_XDP_EXPECTED_FD", expected.fd),
            ("IFLA_XDP_FLAGS", mode_flag | XDP_FLAGS_REPLACE),
        ]
        try:
            ipr.link("set", index=index, xdp={"attrs": attrs})
        except NetlinkError as exc:
            if exc.code not in (errno.EEXIST, errno.ENODEV):  # replaced or gone meanwhile
                with _netlink(f"detaching XDP program {prog_id}"):
                    raise


def _program_name(prog_id: int) -> str:
    try:
        return program_name_by_id(prog_id)
    except BpfObjectNotFoundError:
        return ""


def _fd_holders(prog_id: int) -> list[int]:
    """Pids of processes holding a file descriptor of BPF program ``prog_id``."""
    wanted = f"prog_id:\t{prog_id}\n"
    holders = []
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            if wanted in fdinfo.read_text():
                holders.append(int(fdinfo.parts[2]))
        except (OSError, ValueError):
            continue
    return holders


def tc_filters(ipr: IPRoute, index: int) -> list[tuple[int, Any]]:
    """(parent, filter message) of every filter on the clsact hooks of ``index``."""
    found = []
    for parent in TC_HOOKS.values():
        try:
            found += [(parent, f) for f in ipr.get_filters(index=index, parent=parent)]
        except NetlinkError as exc:
            if exc.code != errno.EINVAL:  # no clsact qdisc: no hooks
                with _netlink(f"listing tc filters of interface {index}"):
                    raise
    return [(parent, f) for parent, f in found if f.get_attr("TCA_OPTIONS")]


def _filter_name(flt: Any) -> str:
    return str(flt.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") or "")


def _filter_pid(flt: Any) -> int | None:
    """The pid in an ``ebcap_tc.<pid>.<id>`` filter name, or None for anyone else's filter."""
    name = _filter_name(flt)
    digits = name.removeprefix(TC_FILTER_PREFIX).split(".")[0]
    return int(digits) if name.startswith(TC_FILTER_PREFIX) and digits.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_filter(ipr: IPRoute, index: int, parent: int, flt: Any) -> None:
    try:
        ipr.tc("del-filter", "bpf", index, flt["handle"], parent=parent, info=flt["info"])
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:  # removed meanwhile
            with _netlink(f"removing tc filter {_filter_name(flt)}"):
                raise


def _has_clsact(ipr: IPRoute, index: int) -> bool:
    with _netlink(f"listing qdiscs of interface {index}"):
        qdiscs = ipr.get_qdiscs(index=index)
    return any(q.get_attr("TCA_KIND") == "clsact" for q in qdiscs)


def _marker(index: int) -> Path:
    """Where ebcap notes that it added the clsact qdisc of ``index`` in this netns."""
    netns = os.stat("/proc/self/ns/net").st_ino
    return CLSACT_MARKERS / f"{netns}.{index}"


def _remove_clsact_if_unused(ipr: IPRoute, index: int) -> bool:
    """Delete the clsact qdisc if ebcap added it and no filter is left; True if it did."""
    marker = _marker(index)
    if not marker.exists():
        return False
    if not _has_clsact(ipr, index):
        marker.unlink(missing_ok=True)
        return False
    if tc_filters(ipr, index):
        return False
    try:
        ipr.tc("del", "clsact", index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            with _netlink(f"removing the clsact qdisc of interface {index}"):
                raise
    marker.unlink(missing_ok=True)
    return True
