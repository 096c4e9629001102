"""What a killed ebcap leaves on an interface, how any next `ebcap record` removes it,
owners told apart by pid and start time, clsact shared between captures, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pyarrow.compute as pc
import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left
from pyroute2 import IPRoute
from reliability.harness import ebcap_process, samples_of, wait_for
from sources import netns
from sources.rings import source_programs, wait_programs_gone

from ebcap.bpf import _sys
from ebcap.bpf.asm import R0, exit_, mov64_imm
from ebcap.bpf.prog import Program
from ebcap.bpf.programs.packet import XDP_PASS
from ebcap.capture import leftovers
from ebcap.capture import netlink_hooks as hooks
from ebcap.capture.packet_source import PacketSource, TcSource, XdpSource
from ebcap.errors import KernelError, NotSupportedError, UsageError
from ebcap.format.reader import CaptureReader

pytestmark = [pytest.mark.privileged, pytest.mark.network]

HEADERS = 14 + 20 + 8  # Ethernet, IPv4, UDP
TC_ACT_UNSPEC = -1
TC_ACT_OK = 0


def _run(source: PacketSource, transport: str, stack: ExitStack) -> None:
    """Start ``source`` and attach it, as the recorder does once its rings are in place."""
    kernel = source.start(transport, 1 << 16, stack)
    assert kernel.attach is not None
    kernel.attach()


def _state(veth: netns.VethPair) -> tuple[list[str], list[str], bool]:
    """(XDP program names, tc filter names, clsact present) on the host end."""
    with IPRoute() as ipr:
        xdp = [hooks.program_name(pid) for _, pid in hooks.xdp_programs(ipr, veth.host_index)]
        filters = [hooks.filter_name(f) for _, f in hooks.tc_filters(ipr, veth.host_index)]
        clsact = hooks.has_clsact(ipr, veth.host_index)
    return xdp, filters, clsact


def _owner_of(name: str) -> leftovers.Owner:
    owner = leftovers.filter_owner(name)
    assert owner is not None, name
    return owner


def test_sigkilled_recorders_are_cleaned_by_any_next_record(
    veth: netns.VethPair, tmp_path: Path
) -> None:
    """A SIGKILLed `record -s xdp:` and `record -s tc:...:ingress` leave their
    attachments; a following `record -s syscalls` removes all of them."""
    programs = ebcap_programs()
    killed = []
    for name, spec in (("xdp", f"xdp:{veth.host}"), ("tc", f"tc:{veth.host}:ingress")):
        ready = tmp_path / f"{name}.ready"
        proc = ebcap_process(
            "record", "-o", tmp_path / f"{name}.arrow", "-s", spec, "--ready-file", ready
        )
        wait_for(ready)
        killed.append(proc)
    for proc in killed:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    xdp, filters, clsact = _state(veth)
    assert (xdp, clsact) == (["ebcap_xdp"], True)
    assert len(filters) == 1 and _owner_of(filters[0]).pid == killed[1].pid
    assert leftovers.clsact_marker(veth.host_index).exists()

    after = ebcap_process(
        "record", "-o", tmp_path / "sys.arrow", "-s", "syscalls", "--comm", "ebcap-nobody",
        "--duration", "0.5",
    )  # fmt: skip
    _, stderr = after.communicate(timeout=60)
    assert after.returncode == 0, stderr
    notes = [line for line in stderr.splitlines() if line.startswith("ebcap: removed")]
    assert len(notes) == 3, stderr
    assert notes[0].startswith("ebcap: removed XDP program ebcap_xdp (id ")
    assert notes[0].endswith(f"left on {veth.host}")
    assert notes[1] == f"ebcap: removed tc filter {filters[0]} left on {veth.host}"
    assert notes[2] == f"ebcap: removed clsact qdisc ebcap had added to {veth.host}"
    assert _state(veth) == ([], [], False)
    assert not leftovers.clsact_marker(veth.host_index).exists()
    assert list(leftovers.XDP_MARKERS.glob(f"{leftovers.netns_id()}.{veth.host_index}.*")) == []
    assert ebcap_programs_left(programs) == set(), "a killed recorder's program stayed loaded"


def _load(prog_type: int, verdict: int, name: str) -> Program:
    return Program.load(prog_type, [mov64_imm(R0, verdict), exit_()], name=name)


def test_a_reused_pid_does_not_hide_a_leftover(veth: netns.VethPair) -> None:
    """Attachments whose owner is this very pid but started at another time are
    leftovers (the pid was reused); those of the live owner are not."""
    me = leftovers.Owner.me()
    ghost = leftovers.Owner(me.pid, me.start + 1)
    with IPRoute() as ipr:
        with _load(_sys.BPF_PROG_TYPE_XDP, XDP_PASS, leftovers.XDP_PROGRAM_NAME) as xdp:
            leftovers.mark_xdp(veth.host_index, xdp.id, ghost)
            hooks.attach_xdp(ipr, veth.host_index, xdp, "generic", "test attach")
        assert hooks.add_clsact(ipr, veth.host_index, "test clsact")
        leftovers.mark_clsact(veth.host_index, veth.host)
        with _load(_sys.BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC, leftovers.TC_PROGRAM_NAME) as tc:
            name = leftovers.tc_filter_name(ghost, tc.id)
            parent = hooks.TC_HOOKS["egress"]
            hooks.add_tc_filter(ipr, veth.host_index, parent, tc, name, 1, "test filter")
    assert _state(veth) == (["ebcap_xdp"], [name], True)
    notes = leftovers.remove_leftovers()
    assert [n.split(" (id")[0] for n in notes if veth.host in n] == [
        "removed XDP program ebcap_xdp",
        f"removed tc filter {name} left on {veth.host}",
        f"removed clsact qdisc ebcap had added to {veth.host}",
    ]
    assert _state(veth) == ([], [], False)

    with ExitStack() as stack:  # a live owner's capture stays
        _run(XdpSource(veth.host, mode="generic"), "ringbuf", stack)
        _run(TcSource(veth.host, "ingress"), "ringbuf", stack)
        before = _state(veth)
        assert [n for n in leftovers.remove_leftovers() if veth.host in n] == []
        assert _state(veth) == before
        assert _owner_of(before[1][0]) == me
    assert _state(veth) == ([], [], False)


def test_foreign_xdp_program_is_refused_and_replace_xdp_replaces_it(
    veth: netns.VethPair, tmp_path: Path
) -> None:
    """`record` refuses an interface running someone's XDP program and names
    --replace-xdp; with it, the capture runs, and afterwards the interface has
    no XDP program at all (the replaced one is not put back)."""
    programs = ebcap_programs()
    with (
        IPRoute() as ipr,
        _load(_sys.BPF_PROG_TYPE_XDP, XDP_PASS, "someone_xdp") as other,
    ):
        hooks.attach_xdp(ipr, veth.host_index, other, "generic", "test attach")
        refused = ebcap_process(
            "record", "-o", tmp_path / "no.arrow", "-s", f"xdp:{veth.host}", "--duration", "1"
        )
        _, stderr = refused.communicate(timeout=60)
        assert refused.returncode == 2 and stderr.splitlines() == [
            f"ebcap: error: {veth.host} already runs XDP program 'someone_xdp' (id {other.id}); "
            "--replace-xdp replaces it (it is not put back afterwards)"
        ]
        assert _state(veth)[0] == ["someone_xdp"]

        ready, out = tmp_path / "ready", tmp_path / "replaced.arrow"
        replacing = ebcap_process(
            "record", "-o", out, "-s", f"xdp:{veth.host}", "--replace-xdp",
            "--ready-file", ready,
        )  # fmt: skip
        wait_for(ready)
        assert _state(veth)[0] == ["ebcap_xdp"]
        sizes = [30, 300, 1000]
        netns.send_udp(veth.netns, veth.peer_ip, veth.host_ip, 43000, 43001, sizes)
        replacing.send_signal(signal.SIGINT)
        _, stderr = replacing.communicate(timeout=60)
    assert replacing.returncode == 0, stderr
    assert (
        f"ebcap: replaced XDP program 'someone_xdp' (id {other.id}) on {veth.host}; "
        "it is not put back when the capture ends"
    ) in stderr.splitlines()
    assert _state(veth) == ([], [], False)
    with CaptureReader(out) as reader:
        rows = samples_of(reader.to_table())
    mine = rows.filter(pc.equal(rows["dst_port"], 43001))
    assert mine["pkt_len"].to_pylist() == [size + HEADERS for size in sizes]
    assert ebcap_programs_left(programs) == set()


def test_a_replaced_xdp_program_is_put_back_when_ours_cannot_attach(
    veth: netns.VethPair, tmp_path: Path
) -> None:
    """veth refuses native XDP at MTU 9000 (ERANGE): the program --replace-xdp had
    detached is attached again, and the error suggests generic mode."""
    with (
        IPRoute() as ipr,
        _load(_sys.BPF_PROG_TYPE_XDP, XDP_PASS, "someone_xdp") as other,
    ):
        hooks.attach_xdp(ipr, veth.host_index, other, "generic", "test attach")
        subprocess.run(["ip", "link", "set", veth.host, "mtu", "9000"], check=True)
        peer_mtu = ["ip", "-n", veth.netns, "link", "set", veth.peer, "mtu", "9000"]
        subprocess.run(peer_mtu, check=True)
        failing = ebcap_process(
            "record", "-o", tmp_path / "no.arrow", "-s", f"xdp:{veth.host}",
            "--xdp-mode", "native", "--replace-xdp", "--duration", "1",
        )  # fmt: skip
        _, stderr = failing.communicate(timeout=60)
        assert failing.returncode == 1, stderr
        assert "--xdp-mode generic works on any interface" in stderr
        assert f"put XDP program 'someone_xdp' (id {other.id}) back on {veth.host}" in stderr
        assert _state(veth)[0] == ["someone_xdp"]
        hooks.detach_xdp(ipr, veth.host_index, other.id, hooks.XDP_MODES["generic"], held=other)
    assert not (tmp_path / "no.arrow").exists()


def test_a_capture_whose_xdp_program_was_replaced_says_so(veth: netns.VethPair) -> None:
    """Someone replaces ebcap's XDP program mid-capture: theirs stays, and the capture
    ends with a note that the packets after that are missing."""
    notes: list[str] = []
    source = XdpSource(veth.host, mode="generic", notify=notes.append)
    with (
        IPRoute() as ipr,
        _load(_sys.BPF_PROG_TYPE_XDP, XDP_PASS, "someone_xdp") as other,
    ):
        with ExitStack() as stack:
            kernel = source.start("ringbuf", 1 << 16, stack)
            assert kernel.attach is not None
            kernel.attach()
            [(flag, ours)] = hooks.xdp_programs(ipr, veth.host_index)
            hooks.detach_xdp(ipr, veth.host_index, ours, flag)
            hooks.attach_xdp(ipr, veth.host_index, other, "generic", "replacing it")
        assert _state(veth)[0] == ["someone_xdp"]
        hooks.detach_xdp(ipr, veth.host_index, other.id, hooks.XDP_MODES["generic"], held=other)
    assert any(f"replaced ebcap's on {veth.host} during the capture" in n for n in notes), notes


@pytest.mark.parametrize("clsact_before", [False, True], ids=["ebcap-adds-clsact", "clsact-there"])
def test_ingress_and_egress_started_at_once(
    veth: netns.VethPair, tmp_path: Path, clsact_before: bool
) -> None:
    """Two tc recorders started at the same instant on one interface, several times:
    both start, both files hold exactly their datagrams, and the clsact qdisc is
    gone at the end if ebcap added it, kept if it was there before."""
    programs = ebcap_programs()
    if clsact_before:
        with IPRoute() as ipr:
            assert hooks.add_clsact(ipr, veth.host_index, "test clsact")
    sizes = [40 + 7 * i for i in range(20)]
    for attempt in range(6):
        procs = {}
        for direction in ("ingress", "egress"):
            out = tmp_path / f"{attempt}-{direction}.arrow"
            ready = tmp_path / f"{attempt}-{direction}.ready"
            spec = f"tc:{veth.host}:{direction}"
            proc = ebcap_process("record", "-o", out, "-s", spec, "--ready-file", ready)
            procs[direction] = (proc, out, ready)
        for _, _, ready in procs.values():
            wait_for(ready)
        netns.send_udp(veth.netns, veth.peer_ip, veth.host_ip, 44000, 44001, sizes)
        netns.send_udp(None, veth.host_ip, veth.peer_ip, 44002, 44003, sizes)
        stopped = ["ingress", "egress"] if attempt % 2 else ["egress", "ingress"]
        for direction in stopped:  # either may end first
            proc = procs[direction][0]
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"attempt {attempt} {direction}: {stderr}"
        for direction, port in (("ingress", 44001), ("egress", 44003)):
            with CaptureReader(procs[direction][1]) as reader:
                rows = samples_of(reader.to_table())
            mine = rows.filter(pc.equal(rows["dst_port"], port))
            assert mine["pkt_len"].to_pylist() == [s + HEADERS for s in sizes], (attempt, direction)
            other = 44003 if port == 44001 else 44001
            assert rows.filter(pc.equal(rows["dst_port"], other)).num_rows == 0
        assert _state(veth) == ([], [], clsact_before), f"attempt {attempt}"
    assert leftovers.clsact_marker(veth.host_index).exists() is False
    assert ebcap_programs_left(programs) == set()


def test_captures_share_the_clsact_qdisc(veth: netns.VethPair) -> None:
    """The first capture to end leaves the qdisc to the one still running; the last one
    removes it. A second XDP capture on the interface is refused, not a leftover."""
    with ExitStack() as stack:
        _run(XdpSource(veth.host, mode="generic"), "ringbuf", stack)
        with (
            ExitStack() as second,
            pytest.raises(UsageError, match="already runs XDP program 'ebcap_xdp'"),
        ):
            _run(XdpSource(veth.host, mode="generic"), "ringbuf", second)
        _run(TcSource(veth.host, "egress"), "ringbuf", stack)
        with ExitStack() as second:
            _run(TcSource(veth.host, "ingress"), "ringbuf", second)
            filters = _state(veth)[1]
            assert [_owner_of(f) for f in filters] == [leftovers.Owner.me()] * 2
        xdp, filters, clsact = _state(veth)
        assert (xdp, len(filters), clsact) == (["ebcap_xdp"], 1, True)
    assert _state(veth) == ([], [], False)


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_a_detach_that_failed_is_tried_again(
    veth: netns.VethPair, hook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's detach meets a netlink error: the clean-up at exit still removes it."""
    name = "detach_xdp" if hook == "xdp" else "delete_tc_filter"
    real = getattr(hooks, name)
    calls: list[int] = []

    def fail_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise KernelError("netlink: interrupted", 4)
        return real(*args, **kwargs)

    source = (
        XdpSource(veth.host, mode="generic") if hook == "xdp" else TcSource(veth.host, "egress")
    )
    with ExitStack() as stack:
        kernel = source.start("ringbuf", 1 << 16, stack)
        assert kernel.attach is not None
        kernel.attach()  # sets kernel.detach, and registers it for the exit as well
        assert kernel.detach is not None
        monkeypatch.setattr(hooks, name, fail_once)
        with pytest.raises(KernelError):
            kernel.detach()
        assert _state(veth) != ([], [], False)  # still there
        kernel.detach()
    assert len(calls) == 2
    assert _state(veth) == ([], [], False)


def test_foreign_clsact_and_filters_are_left_alone(veth: netns.VethPair) -> None:
    with (
        IPRoute() as ipr,
        _load(_sys.BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC, "someone_tc") as other,
    ):
        assert hooks.add_clsact(ipr, veth.host_index, "test clsact")
        parent = hooks.TC_HOOKS["ingress"]
        hooks.add_tc_filter(ipr, veth.host_index, parent, other, "someone", 7, "test filter")
    with ExitStack() as stack:
        _run(TcSource(veth.host, "ingress"), "perf", stack)
        assert len(_state(veth)[1]) == 2
        assert not leftovers.clsact_marker(veth.host_index).exists()
    assert [n for n in leftovers.remove_leftovers() if veth.host in n] == []
    assert _state(veth) == ([], ["someone"], True)


def test_the_tc_filter_runs_before_one_that_ends_classification(
    veth: netns.VethPair, tmp_path: Path
) -> None:
    """Someone's direct-action filter at preference 2 that says TC_ACT_OK ends the hook:
    ebcap's goes first (preference 1) and sees every packet; theirs still runs after."""
    with (
        IPRoute() as ipr,
        _load(_sys.BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK, "someone_tc") as other,
    ):
        assert hooks.add_clsact(ipr, veth.host_index, "test clsact")
        parent = hooks.TC_HOOKS["ingress"]
        hooks.add_tc_filter(ipr, veth.host_index, parent, other, "someone", 7, "test", pref=2)
        ready, out = tmp_path / "ready", tmp_path / "tc.arrow"
        recording = ebcap_process(
            "record", "-o", out, "-s", f"tc:{veth.host}:ingress", "--ready-file", ready
        )
        wait_for(ready)
        prefs = {
            hooks.filter_name(f): hooks.filter_pref(f)
            for _, f in hooks.tc_filters(ipr, veth.host_index)
        }
        sizes = [40, 400]
        netns.send_udp(veth.netns, veth.peer_ip, veth.host_ip, 43010, 43011, sizes)
        recording.send_signal(signal.SIGINT)
        _, stderr = recording.communicate(timeout=60)
    assert recording.returncode == 0, stderr
    assert prefs["someone"] == 2 and [p for n, p in prefs.items() if n != "someone"] == [1]
    with CaptureReader(out) as reader:
        rows = samples_of(reader.to_table())
    mine = rows.filter(pc.equal(rows["dst_port"], 43011))
    assert mine["pkt_len"].to_pylist() == [size + HEADERS for size in sizes]
    assert _state(veth) == ([], ["someone"], True)


def test_missing_interface_is_refused() -> None:
    for source in (XdpSource("ebcap-nope0"), TcSource("ebcap-nope0", "ingress")):
        with (
            ExitStack() as stack,
            pytest.raises(UsageError, match="no network interface 'ebcap-nope0'"),
        ):
            _run(source, "perf", stack)


def test_native_xdp_where_the_driver_has_none_is_refused() -> None:
    """Loopback has no native XDP: the error says so and suggests generic mode."""
    before = source_programs()
    with ExitStack() as stack, pytest.raises(NotSupportedError, match="--xdp-mode generic"):
        _run(XdpSource("lo", mode="native"), "perf", stack)
    with IPRoute() as ipr:
        index = hooks.interface_index(ipr, "lo")
        assert hooks.xdp_programs(ipr, index) == []
    assert list(leftovers.XDP_MARKERS.glob(f"{leftovers.netns_id()}.{index}.*")) == []
    wait_programs_gone(before)


def test_owner_start_time_is_read_from_proc() -> None:
    with subprocess.Popen(["sleep", "30"]) as child:
        start = leftovers.process_start_time(child.pid)
        assert start is not None and leftovers.Owner(child.pid, start).alive()
        assert not leftovers.Owner(child.pid, start - 1).alive()
        child.kill()
    assert not leftovers.Owner(child.pid, start).alive()
    fields = Path(f"/proc/{os.getpid()}/stat").read_text().rpartition(")")[2].split()
    assert leftovers.Owner.me().start == int(fields[leftovers.STAT_STARTTIME - 3])


def test_an_owner_in_another_pid_namespace_is_never_taken_for_gone() -> None:
    """A recorder in a container that shares the network namespace knows itself as pid 1:
    here, pid 1 is another process. Its hooks must stay while it may still run."""
    with subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "30"]) as child:
        deadline = time.monotonic() + 10
        while (inner := _child_in_new_pidns(child.pid)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pidns = os.stat(f"/proc/{inner}/ns/pid").st_ino
        assert pidns != leftovers.pidns_id()
        as_it_names_itself = leftovers.Owner(1, leftovers.process_start_time(inner) or 0, pidns)
        assert as_it_names_itself.alive()
        name = leftovers.tc_filter_name(as_it_names_itself, 42)
        assert leftovers.filter_owner(name) == as_it_names_itself
        assert not leftovers.Owner(1, 0).alive()  # without its namespace: judged by pid here
        child.kill()
    me = leftovers.Owner.me()
    assert (
        me.pidns == leftovers.pidns_id()
        and leftovers.filter_owner(leftovers.tc_filter_name(me, 7)) == me
    )


def _child_in_new_pidns(unshare_pid: int) -> int | None:
    """The pid (here) of the process `unshare --fork` started, once there is one."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    return int(children[0]) if children else None


def test_a_leftover_this_process_cannot_open_is_said(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With CAP_BPF + CAP_NET_ADMIN only, a killed recorder's XDP program cannot be opened
    by id (CAP_SYS_ADMIN): it stays, and the next recording says so instead of nothing."""
    monkeypatch.setattr(leftovers, "XDP_MARKERS", tmp_path)
    dead = leftovers.Owner(os.getpid(), (leftovers.process_start_time(os.getpid()) or 0) + 1)
    leftovers.mark_xdp(7, 4242, dead)
    monkeypatch.setattr(hooks, "xdp_programs", lambda ipr, index: [(2, 4242)])
    monkeypatch.setattr(hooks, "program_name", lambda prog_id: "")  # as EPERM leaves it
    detached: list[int] = []
    monkeypatch.setattr(hooks, "detach_xdp", lambda *args, **kw: detached.append(args[2]))
    notes = leftovers.remove_xdp_leftovers(None, 7, "vx0")  # type: ignore[arg-type]
    assert notes == [
        "XDP program id 4242 on vx0 was left by an ebcap process that is gone; "
        "removing it opens it by id, which needs CAP_SYS_ADMIN"
    ]
    assert detached == []
