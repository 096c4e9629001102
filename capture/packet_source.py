"""Packets as a source: XDP or tc on one interface, attached through rtnetlink (pyroute2).

``XdpSource`` attaches the XDP program in native (driver) or generic (skb)
mode; ``TcSource`` adds a direct-action bpf filter on the clsact qdisc's
ingress or egress hook, adding the qdisc only if the interface has none.
Both programs only observe (see :mod:`ebcap.bpf.programs.packet`); tc
frames get back the VLAN tag the kernel had taken out
(:mod:`ebcap.capture.vlan_tags`). The
netlink operations are in :mod:`ebcap.capture.netlink_hooks`; who owns an
attachment, and removing what a killed ebcap left, in
:mod:`ebcap.capture.leftovers` (a start also clears the leftovers of its own
interface and reports each removal through ``notify``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
from pyroute2 import IPRoute

from ebcap.bpf import _sys
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.bpf.programs import packet as program
from ebcap.capture import leftovers
from ebcap.capture import netlink_hooks as hooks
from ebcap.capture.batch import EventBatch
from ebcap.capture.layout import PayloadLayout
from ebcap.capture.packet_decode import PACKET_FIELDS, RxQueue, decode_packets
from ebcap.capture.sources import KernelSide, Source, create_counter_map, create_events_map
from ebcap.capture.vlan_tags import reinsert_tags
from ebcap.errors import KernelError, NotSupportedError, UsageError
from ebcap.format.pcapng import SNAPLEN_KEY

TC_FILTER_HANDLE: Final = 1

Notify = Callable[[str], None]


@dataclass(frozen=True)
class PacketLayout(PayloadLayout):
    """The packet event layout; its metadata also says how many bytes a packet kept at most."""

    snaplen: int = program.SNAPLEN_DEFAULT

    def description(self) -> dict[str, Any]:
        return {**super().description(), SNAPLEN_KEY: self.snaplen}


def list_packet_sources() -> list[str]:
    """``xdp:IFACE`` and ``tc:IFACE:DIR`` specs of this namespace's interfaces."""
    with IPRoute() as ipr:
        names = sorted(hooks.interfaces(ipr).values())
    return [
        spec
        for name in names
        for spec in (f"xdp:{name}", *(f"tc:{name}:{d}" for d in hooks.TC_HOOKS))
    ]


class PacketSource(Source):
    """What XDP and tc capture share: the event, its decoding, maps and program."""

    variable_payloads = True
    """Events are longer than the layout (the packet bytes follow): readers must not trim."""
    hook: str
    prog_type: int
    program_name: str
    rx_queue: RxQueue
    """What the event's queue field means at this hook."""

    def __init__(self, iface: str, snaplen: int, notify: Notify | None) -> None:
        self.iface = iface
        self.snaplen = program.check_snaplen(snaplen)
        self.notify = notify
        self.notes: list[str] = []
        """What the start cleaned up (also passed to ``notify``)."""
        self.layout = PacketLayout(program.PACKET_EVENT, "ts_ns", "cpu", snaplen=self.snaplen)

    def arrow_fields(self) -> list[pa.Field]:
        return list(PACKET_FIELDS)

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        return decode_packets(events, self.rx_queue)

    def _note(self, message: str) -> None:
        self.notes.append(message)
        if self.notify is not None:
            self.notify(message)

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        ipr = IPRoute()
        stack.callback(ipr.close)
        index = hooks.interface_index(ipr, self.iface)
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
        with leftovers.hooks_lock():
            self._prepare(ipr, index)
        kernel = KernelSide(events, drops)

        def attach() -> None:
            with leftovers.hooks_lock():
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
    program_name = leftovers.XDP_PROGRAM_NAME
    rx_queue = RxQueue.AS_IS

    def __init__(
        self,
        iface: str,
        mode: str = "native",
        snaplen: int = program.SNAPLEN_DEFAULT,
        replace: bool = False,
        notify: Notify | None = None,
    ) -> None:
        """``replace`` detaches another XDP program on ``iface``; it is not put back afterwards."""
        if mode not in hooks.XDP_MODES:
            raise UsageError(f"unknown XDP mode {mode!r}: use {' or '.join(hooks.XDP_MODES)}")
        super().__init__(iface, snaplen, notify)
        self.mode = mode
        self.replace = replace
        self.spec = f"xdp:{iface}"
        self._replaced: list[tuple[int, Program, str]] = []
        """The programs --replace-xdp detached (mode flag, program, how to name it):
        held until ours is attached, to be put back if that fails."""

    def _prepare(self, ipr: IPRoute, index: int) -> None:
        for note in leftovers.remove_xdp_leftovers(ipr, index, self.iface):
            self._note(note)
        for mode_flag, prog_id in hooks.xdp_programs(ipr, index):
            name = hooks.program_name(prog_id)
            which = f"XDP program {name!r} (id {prog_id})" if name else f"XDP program id {prog_id}"
            if not self.replace:
                raise UsageError(
                    f"{self.iface} already runs {which}; "
                    "--replace-xdp replaces it (it is not put back afterwards)"
                )
            try:
                held = Program(_sys.get_fd_by_id(_sys.BPF_PROG_GET_FD_BY_ID, prog_id))
            except KernelError:  # gone meanwhile: nothing to detach or put back
                continue
            self._replaced.append((mode_flag, held, which))
            hooks.detach_xdp(ipr, index, prog_id, mode_flag, held=held)

    def _put_back(self, ipr: IPRoute, index: int) -> None:
        """Attach again the programs --replace-xdp detached: ours never came in."""
        for mode_flag, held, which in self._replaced:
            mode = _MODE_NAMES.get(mode_flag)
            if mode is None:  # offloaded to hardware: not ebcap's to re-attach
                self._note(f"{which} was detached from {self.iface} and could not be put back")
                continue
            hooks.attach_xdp(ipr, index, held, mode, f"putting {which} back on {self.iface}")
            self._note(f"put {which} back on {self.iface}: the capture did not start")

    def _attach(self, ipr: IPRoute, index: int, prog: Program) -> Callable[[], None]:
        mode_flag = hooks.XDP_MODES[self.mode]
        prog_id = prog.id
        leftovers.mark_xdp(index, prog_id, leftovers.Owner.me())
        try:
            hooks.attach_xdp(
                ipr, index, prog, self.mode, f"attaching XDP ({self.mode}) to {self.iface}"
            )
        except BaseException as exc:
            leftovers.xdp_marker(index, prog_id).unlink(missing_ok=True)
            self._put_back(ipr, index)
            if self.mode == "native" and isinstance(exc, KernelError) and _driver_refused(exc):
                hint = f"{exc}; --xdp-mode generic works on any interface"
                if isinstance(exc, NotSupportedError):
                    raise NotSupportedError(hint, exc.feature, exc.errno) from None
                raise KernelError(hint, exc.errno) from None
            raise
        finally:
            for _, held, _ in self._replaced:
                held.close()
        for _, _, which in self._replaced:
            self._note(
                f"replaced {which} on {self.iface}; it is not put back when the capture ends"
            )
        self._replaced = []
        done: list[bool] = []

        def detach() -> None:
            if done:
                return
            with leftovers.hooks_lock():
                ours = hooks.detach_xdp(ipr, index, prog_id, mode_flag, held=prog)
                leftovers.xdp_marker(index, prog_id).unlink(missing_ok=True)
            done.append(True)  # only now: a detach that failed is tried again at exit
            if not ours:
                self._note(
                    f"another XDP program replaced ebcap's on {self.iface} during the "
                    "capture: the packets after that are not in the file"
                )

        return detach


_MODE_NAMES: Final = {flag: name for name, flag in hooks.XDP_MODES.items()}
"""The ``--xdp-mode`` of each attach flag (an offloaded program has none)."""


_NO_NATIVE: Final = frozenset({errno.EOPNOTSUPP, errno.ERANGE, errno.EINVAL})
"""What a native attach fails with where the driver cannot run this program natively
(no native XDP; an MTU too large for it, as veth says)."""


def _driver_refused(exc: KernelError) -> bool:
    """Whether a native attach failed because of the driver, not of ebcap or the user."""
    if isinstance(exc, NotSupportedError):
        return True
    return type(exc) is KernelError and exc.errno in _NO_NATIVE


class TcSource(PacketSource):
    """Every packet through ``iface``'s tc ``ingress`` or ``egress`` hook."""

    hook = program.HOOK_TC
    prog_type = _sys.BPF_PROG_TYPE_SCHED_CLS
    program_name = leftovers.TC_PROGRAM_NAME

    def __init__(
        self,
        iface: str,
        direction: str,
        snaplen: int = program.SNAPLEN_DEFAULT,
        notify: Notify | None = None,
    ) -> None:
        if direction not in hooks.TC_HOOKS:
            raise UsageError(
                f"unknown tc direction {direction!r}: use tc:{iface}:ingress or tc:{iface}:egress"
            )
        super().__init__(iface, snaplen, notify)
        self.direction = direction
        self.rx_queue = RxQueue.RECORDED_PLUS_ONE if direction == "ingress" else RxQueue.NONE
        self.spec = f"tc:{iface}:{direction}"

    def stored_payloads(self, batch: EventBatch) -> EventBatch:
        """Frames as on the wire: the VLAN tag the kernel had taken out is put back."""
        return reinsert_tags(batch, self.snaplen)

    def _prepare(self, ipr: IPRoute, index: int) -> None:
        for note in leftovers.remove_tc_leftovers(ipr, index, self.iface):
            self._note(note)

    @staticmethod
    def _others_first(ipr: IPRoute, index: int, parent: int) -> bool:
        """Whether a filter other than ebcap's runs first on hook ``parent``."""
        ours = leftovers.TC_FILTER_PREFIX
        return any(
            hook == parent
            and hooks.filter_pref(f) == 1
            and not hooks.filter_name(f).startswith(ours)
            for hook, f in hooks.tc_filters(ipr, index)
        )

    def _attach(self, ipr: IPRoute, index: int, prog: Program) -> Callable[[], None]:
        if hooks.add_clsact(ipr, index, f"adding a clsact qdisc to {self.iface}"):
            leftovers.mark_clsact(index, self.iface)
        parent = hooks.TC_HOOKS[self.direction]
        name = leftovers.tc_filter_name(leftovers.Owner.me(), prog.id)
        try:
            # First of the hook: a filter before it that ends classification (as a
            # direct-action one may) would hide packets from it. It returns "unspec",
            # so the filters after it run as before.
            pref = hooks.pref_ahead_of_all(ipr, index, parent)
            hooks.add_tc_filter(
                ipr, index, parent, prog, name, TC_FILTER_HANDLE,
                f"adding a tc {self.direction} filter to {self.iface}", pref,
            )  # fmt: skip
        except BaseException:
            leftovers.remove_clsact_if_unused(ipr, index, self.iface)
            raise
        if pref is None and self._others_first(ipr, index, parent):
            self._note(
                f"a tc {self.direction} filter of preference 1 on {self.iface} runs before "
                "ebcap's: packets it ends classification for are not recorded"
            )
        done: list[bool] = []

        def detach() -> None:
            if done:
                return
            with leftovers.hooks_lock():
                for hook, flt in hooks.tc_filters(ipr, index):
                    if hook == parent and hooks.filter_name(flt) == name:
                        hooks.delete_tc_filter(ipr, index, hook, flt)
                leftovers.remove_clsact_if_unused(ipr, index, self.iface)
            done.append(True)  # only now: a detach that failed is tried again at exit

        return detach
