"""XDP and tc hooks of network interfaces, through rtnetlink (pyroute2).

Thin operations, each turning a netlink error into the matching ebcap error:
interface lookup, the XDP programs of an interface (attach, detach only if
still the expected one), the clsact qdisc (added idempotently: ``EEXIST``
means someone else added it first) and the bpf filters on its two hooks.
Who owns what is not decided here (see :mod:`ebcap.capture.leftovers`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

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
from ebcap.bpf.prog import Program, program_name_by_id
from ebcap.errors import (
    BpfObjectNotFoundError,
    KernelError,
    MissingCapabilityError,
    NotSupportedError,
    UsageError,
)

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
CLSACT: Final = "clsact"
_GONE: Final = (errno.ENOENT, errno.ENODEV)
"""Answers meaning the object (or its interface) went away meanwhile."""


@contextmanager
def netlink_errors(what: str) -> Iterator[None]:
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
    with netlink_errors(f"looking up interface {iface}"):
        found = ipr.link_lookup(ifname=iface)
    if not found:
        raise UsageError(f"no network interface {iface!r} here (see `ip link`)")
    return int(found[0])


def interfaces(ipr: IPRoute) -> dict[int, str]:
    """``{ifindex: name}`` of every interface of this network namespace."""
    with netlink_errors("listing network interfaces"):
        links = ipr.get_links()
    return {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in links}


# --- XDP ----------------------------------------------------------------------
def _xdp_ids(link: Any) -> list[tuple[int, int]]:
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return []
    return [(flag, xdp.get_attr(key)) for key, flag in _XDP_PROG_IDS.items() if xdp.get_attr(key)]


def xdp_programs(ipr: IPRoute, index: int) -> list[tuple[int, int]]:
    """(mode flag, program id) of each XDP program attached to interface ``index``."""
    with netlink_errors(f"reading interface {index}"):
        link = ipr.link("get", index=index)[0]
    return _xdp_ids(link)


def all_xdp_programs(ipr: IPRoute) -> list[tuple[int, int, int]]:
    """(ifindex, mode flag, program id) of every XDP program in this network namespace."""
    with netlink_errors("listing network interfaces"):
        links = ipr.get_links()
    return [(int(link["index"]), *found) for link in links for found in _xdp_ids(link)]


def program_name(prog_id: int) -> str:
    """The name of BPF program ``prog_id``; empty if it is gone, or if opening it by id
    is not allowed (it takes CAP_SYS_ADMIN)."""
    try:
        return program_name_by_id(prog_id)
    except (BpfObjectNotFoundError, MissingCapabilityError):
        return ""


def attach_xdp(ipr: IPRoute, index: int, prog: Program, mode: str, what: str) -> None:
    """Attach ``prog`` in ``mode`` unless the interface already has an XDP program."""
    attrs = [
        ("IFLA_XDP_FD", prog.fd),
        ("IFLA_XDP_FLAGS", XDP_MODES[mode] | XDP_FLAGS_UPDATE_IF_NOEXIST),
    ]
    with netlink_errors(what):
        ipr.link("set", index=index, xdp={"attrs": attrs})


def detach_xdp(
    ipr: IPRoute, index: int, prog_id: int, mode_flag: int, held: Program | None = None
) -> bool:
    """Detach program ``prog_id`` only if it is still the one attached; False if another
    program had replaced it.

    ``held``: the program itself, when the caller holds it (its own capture).
    Otherwise it is opened by id, which takes CAP_SYS_ADMIN: a capture that
    holds its program detaches it with CAP_BPF and CAP_NET_ADMIN alone.
    """
    if held is not None:
        return _detach_expected(ipr, index, prog_id, mode_flag, held)
    try:
        expected = Program(_sys.get_fd_by_id(_sys.BPF_PROG_GET_FD_BY_ID, prog_id))
    except BpfObjectNotFoundError:
        return True
    with expected:
        return _detach_expected(ipr, index, prog_id, mode_flag, expected)


def _detach_expected(
    ipr: IPRoute, index: int, prog_id: int, mode_flag: int, expected: Program
) -> bool:
    """Detach ``expected``; False if another program had replaced it (left alone)."""
    attrs = [
        ("IFLA_XDP_FD", -1),
        ("IFLA_XDP_EXPECTED_FD", expected.fd),
        ("IFLA_XDP_FLAGS", mode_flag | XDP_FLAGS_REPLACE),
    ]
    try:
        ipr.link("set", index=index, xdp={"attrs": attrs})
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:  # replaced meanwhile
            return False
        if exc.code != errno.ENODEV:  # the interface is gone, and the program with it
            with netlink_errors(f"detaching XDP program {prog_id}"):
                raise
    return True


# --- tc -------------------------------------------------------------------------
def clsact_interfaces(ipr: IPRoute) -> set[int]:
    """Ifindexes of the interfaces that have a clsact qdisc."""
    with netlink_errors("listing qdiscs"):
        qdiscs = ipr.get_qdiscs()
    return {int(q["index"]) for q in qdiscs if q.get_attr("TCA_KIND") == CLSACT}


def has_clsact(ipr: IPRoute, index: int) -> bool:
    with netlink_errors(f"listing qdiscs of interface {index}"):
        qdiscs = ipr.get_qdiscs(index=index)
    return any(q.get_attr("TCA_KIND") == CLSACT for q in qdiscs)


def add_clsact(ipr: IPRoute, index: int, what: str) -> bool:
    """Make sure interface ``index`` has a clsact qdisc; True if this call added it.

    ``EEXIST``: someone (another capture, another tool) added one first, and
    that one is used.
    """
    try:
        ipr.tc("add", CLSACT, index)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        with netlink_errors(what):
            raise
    return True


def delete_clsact(ipr: IPRoute, index: int) -> None:
    """Remove the clsact qdisc of ``index`` (nothing if it is already gone)."""
    try:
        ipr.tc("del", CLSACT, index)
    except NetlinkError as exc:
        if exc.code not in (*_GONE, errno.EINVAL):
            with netlink_errors(f"removing the clsact qdisc of interface {index}"):
                raise


def tc_filters(ipr: IPRoute, index: int) -> list[tuple[int, Any]]:
    """(parent, filter message) of every filter on the clsact hooks of ``index``."""
    found = []
    for parent in TC_HOOKS.values():
        try:
            found += [(parent, f) for f in ipr.get_filters(index=index, parent=parent)]
        except NetlinkError as exc:
            if exc.code not in (errno.EINVAL, *_GONE):  # no clsact qdisc: no hooks
                with netlink_errors(f"listing tc filters of interface {index}"):
                    raise
    return [(parent, f) for parent, f in found if f.get_attr("TCA_OPTIONS")]


def filter_name(flt: Any) -> str:
    """The name of a bpf filter (``tc filter show`` prints it), or ""."""
    return str(flt.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") or "")


def filter_program_id(flt: Any) -> int | None:
    """The id of the BPF program a bpf filter runs."""
    prog_id = flt.get_nested("TCA_OPTIONS", "TCA_BPF_ID")
    return int(prog_id) if prog_id else None


def filter_pref(flt: Any) -> int:
    """A filter's preference: tc runs a hook's filters from the lowest up."""
    return int(flt["info"]) >> 16


def pref_ahead_of_all(ipr: IPRoute, index: int, parent: int) -> int | None:
    """The preference that runs a new filter before every filter on hook ``parent``;
    None when one already has the lowest, 1."""
    lowest = min(
        (filter_pref(f) for hook, f in tc_filters(ipr, index) if hook == parent), default=2
    )
    return lowest - 1 if lowest > 1 else None


def add_tc_filter(
    ipr: IPRoute,
    index: int,
    parent: int,
    prog: Program,
    name: str,
    handle: int,
    what: str,
    pref: int | None = None,
) -> None:
    """A direct-action bpf filter running ``prog`` on hook ``parent``, at preference
    ``pref`` (None: the kernel picks one, after the filters there)."""
    with netlink_errors(what):
        ipr.tc(
            "add-filter", "bpf", index, handle, fd=prog.fd, name=name,
            parent=parent, classid=1, direct_action=True, prio=pref or 0,
        )  # fmt: skip


def delete_tc_filter(ipr: IPRoute, index: int, parent: int, flt: Any) -> None:
    """Remove one filter (nothing if it is already gone)."""
    try:
        ipr.tc("del-filter", "bpf", index, flt["handle"], parent=parent, info=flt["info"])
    except NetlinkError as exc:
        if exc.code not in (*_GONE, errno.EINVAL):  # removed meanwhile
            with netlink_errors(f"removing tc filter {filter_name(flt)}"):
                raise
