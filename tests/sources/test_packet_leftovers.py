"""What a killed ebcap leaves on an interface, how the next start removes it, and refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import ExitStack

import pytest
from pyroute2 import IPRoute
from sources import netns
from sources.rings import source_programs, wait_programs_gone

from ebcap.bpf import _sys
from ebcap.bpf.asm import R0, exit_, mov64_imm
from ebcap.bpf.prog import Program
from ebcap.bpf.programs.packet import XDP_PASS
from ebcap.capture import packet_source
from ebcap.capture.packet_source import (
    PacketSource,
    TcSource,
    XdpSource,
    interface_index,
    tc_filters,
    xdp_programs,
)
from ebcap.errors import NotSupportedError, UsageError

pytestmark = [pytest.mark.privileged, pytest.mark.network]

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from contextlib import ExitStack
    from ebcap.capture.packet_source import TcSource, XdpSource
    with ExitStack() as stack:
        for source in (XdpSource(sys.argv[1], mode="generic"), TcSource(sys.argv[1], "ingress")):
            source.start("ringbuf", 1 << 16, stack).attach()
        print("ready", flush=True)
        time.sleep(60)
    """
)


def _run(source: PacketSource, transport: str, stack: ExitStack) -> None:
    """Start ``source`` and attach it, as the recorder does once its rings are in place."""
    kernel = source.start(transport, 1 << 16, stack)
    assert kernel.attach is not None
    kernel.attach()


def _state(veth: netns.VethPair) -> tuple[list[str], list[str], bool]:
    """(XDP program names, tc filter names, clsact present) on the host end."""
    with IPRoute() as ipr:
        xdp = [packet_source._program_name(pid) for _, pid in xdp_programs(ipr, veth.host_index)]
        filters = [packet_source._filter_name(f) for _, f in tc_filters(ipr, veth.host_index)]
        clsact = packet_source._has_clsact(ipr, veth.host_index)
    return xdp, filters, clsact


def tc_prog_id(veth: netns.VethPair) -> int:
    """The program id in the name of the one ebcap filter on the host end."""
    names = [n for n in _state(veth)[1] if n.startswith("ebcap_tc.")]
    assert len(names) == 1
    return int(names[0].rsplit(".", 1)[1])


def test_sigkill_leftovers_are_removed_by_the_next_start(veth: netns.VethPair) -> None:
    before = source_programs()
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, veth.host], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        finally:
            child.send_signal(signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    # Documented leftovers: the XDP program, the named filter, the clsact qdisc ebcap added.
    xdp, filters, clsact = _state(veth)
    assert (xdp, clsact) == (["ebcap_xdp"], True)
    assert [f.rsplit(".", 1)[0] for f in filters] == [f"ebcap_tc.{child.pid}"]
    assert packet_source._marker(veth.host_index).exists()
    assert sorted(name for _, name in source_programs() - before) == ["ebcap_tc", "ebcap_xdp"]

    messages: list[str] = []
    with ExitStack() as stack:
        xdp = XdpSource(veth.host, mode="generic", notify=messages.append)
        _run(xdp, "ringbuf", stack)
        tc = TcSource(veth.host, "ingress", notify=messages.append)
        _run(tc, "ringbuf", stack)
        assert _state(veth) == (["ebcap_xdp"], [f"ebcap_tc.{os.getpid()}.{tc_prog_id(veth)}"], True)
    assert len(messages) == 3
    assert messages[0].startswith("removed XDP program ebcap_xdp (id ")
    assert messages[0].endswith(f"left on {veth.host}")
    assert messages[1] == f"removed tc filter {filters[0]} left on {veth.host}"
    assert messages[2] == f"removed clsact qdisc ebcap had added to {veth.host}"
    assert xdp.notes == messages[:1] and tc.notes == messages[1:]
    assert _state(veth) == ([], [], False)
    assert not packet_source._marker(veth.host_index).exists()
    wait_programs_gone(before)


def test_foreign_xdp_program_needs_force(veth: netns.VethPair) -> None:
    before = source_programs()
    with (
        IPRoute() as ipr,
        Program.load(
            _sys.BPF_PROG_TYPE_XDP, [mov64_imm(R0, XDP_PASS), exit_()], name="someone_xdp"
        ) as other,
    ):
        attrs = [("IFLA_XDP_FD", other.fd), ("IFLA_XDP_FLAGS", packet_source.XDP_FLAGS_SKB_MODE)]
        ipr.link("set", index=veth.host_index, xdp={"attrs": attrs})
        with (
            ExitStack() as stack,
            pytest.raises(UsageError, match="already runs XDP program 'someone_xdp'"),
        ):
            _run(XdpSource(veth.host, mode="generic"), "perf", stack)
        assert _state(veth)[0] == ["someone_xdp"]
        messages: list[str] = []
        with ExitStack() as stack:
            forced = XdpSource(veth.host, mode="native", force=True, notify=messages.append)
            _run(forced, "perf", stack)
            assert _state(veth)[0] == ["ebcap_xdp"]
        assert messages == [f"replaced XDP program 'someone_xdp' (id {other.id}) on {veth.host}"]
        assert _state(veth)[0] == []  # the replaced program is not put back
    wait_programs_gone(before)


def test_a_running_capture_is_not_a_leftover(veth: netns.VethPair) -> None:
    with ExitStack() as stack:
        _run(XdpSource(veth.host, mode="generic"), "ringbuf", stack)
        with (
            ExitStack() as second,
            pytest.raises(UsageError, match="already runs XDP program 'ebcap_xdp'"),
        ):
            _run(XdpSource(veth.host, mode="generic"), "ringbuf", second)
        _run(TcSource(veth.host, "egress"), "ringbuf", stack)
        with ExitStack() as second:
            _run(TcSource(veth.host, "egress"), "ringbuf", second)
            assert [f.rsplit(".", 1)[0] for f in _state(veth)[1]] == [f"ebcap_tc.{os.getpid()}"] * 2
        xdp, filters, clsact = _state(veth)
        assert (xdp, len(filters), clsact) == (["ebcap_xdp"], 1, True)
    assert _state(veth) == ([], [], False)


def test_foreign_clsact_and_filters_are_left_alone(veth: netns.VethPair) -> None:
    netns.run("tc", "qdisc", "add", "dev", veth.host, "clsact")
    with (
        IPRoute() as ipr,
        Program.load(
            _sys.BPF_PROG_TYPE_SCHED_CLS, [mov64_imm(R0, -1), exit_()], name="someone_tc"
        ) as other,
    ):
        ipr.tc(
            "add-filter", "bpf", veth.host_index, 7, fd=other.fd, name="someone",
            parent=packet_source.TC_HOOKS["ingress"], classid=1, direct_action=True,
        )  # fmt: skip
    with ExitStack() as stack:
        _run(TcSource(veth.host, "ingress"), "perf", stack)
        assert len(_state(veth)[1]) == 2
    assert not packet_source._marker(veth.host_index).exists()
    assert _state(veth) == ([], ["someone"], True)


def test_missing_interface_is_refused() -> None:
    for source in (XdpSource("ebcap-nope0"), TcSource("ebcap-nope0")):
        with (
            ExitStack() as stack,
            pytest.raises(UsageError, match="no network interface 'ebcap-nope0'"),
        ):
            _run(source, "perf", stack)


def test_native_xdp_where_the_driver_has_none_is_refused() -> None:
    """Loopback has no native XDP: the error says so and suggests generic mode."""
    with ExitStack() as stack, pytest.raises(NotSupportedError, match="--xdp-mode generic"):
        _run(XdpSource("lo", mode="native"), "perf", stack)
    with IPRoute() as ipr:
        assert xdp_programs(ipr, interface_index(ipr, "lo")) == []
