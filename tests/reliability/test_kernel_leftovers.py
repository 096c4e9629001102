"""After every way `ebcap record` ends, nothing of it stays in the kernel.

Exit paths: a normal stop (--duration), SIGTERM, an error after the program
was attached (the disk fills), an error while attaching (native XDP on
loopback, which its driver cannot do), and SIGKILL. The kernel's program and
link lists are read before and after; on each interface XDP programs, tc
filters and the clsact qdisc are listed too. All recorders run at once, each on its own output and
interface, then every end state is checked.

After SIGKILL, fd-based attachments (raw tracepoints, tracepoint perf
links) go with the process. XDP programs and tc filters attached through
netlink stay until the next `ebcap record` start (any source) removes them:
tests/sources/test_packet_leftovers.py::test_sigkilled_recorders_are_cleaned_by_any_next_record.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left
from pyroute2 import IPRoute
from reliability.harness import ebcap_process, wait_for
from sources import netns

from ebcap.bpf.links import loaded_link_ids
from ebcap.capture import netlink_hooks as hooks

pytestmark = [pytest.mark.privileged, pytest.mark.network]

SOURCES = {
    "syscalls": ["-s", "syscalls", "--comm", "ebcap-nobody"],  # attached, but quiet
    "tracepoint": ["-s", "tracepoint:sched:sched_switch", "-t", "ringbuf"],
    "xdp": ["-s", "xdp:{iface}", "--xdp-mode", "generic"],
    "tc": ["-s", "tc:{iface}:ingress"],
}
CASES = [
    *(("syscalls", how) for how in ("duration", "sigterm", "error", "sigkill")),
    ("tracepoint", "sigterm"),
    ("tracepoint", "sigkill"),
    ("xdp", "duration"),
    ("xdp", "error"),
    ("tc", "sigterm"),
    ("tc", "error"),
]
"""Each exit on the syscalls source, and each kind of attachment with a few of them. SIGKILL
of xdp:/tc: recordings is tested in tests/sources (their cleanup is the next record's)."""
FULL_FS = 4096
"""One page of tmpfs: the schema fits when the file opens, the footer does not at the end."""


@dataclass
class Case:
    source: str
    how: str
    directory: Path
    iface: str | None = None
    proc: subprocess.Popen[str] | None = None
    stderr: str = ""


@pytest.fixture
def interfaces() -> Iterator[list[netns.VethPair]]:
    """One veth pair per packet case (one XDP program per interface)."""
    wanted = sum(1 for source, _ in CASES if source in ("xdp", "tc"))
    pairs: list[netns.VethPair] = []
    try:
        for i in range(wanted):
            pairs.append(netns.create((os.getpid() * 7 + i) % 100000))
        yield pairs
    finally:
        for pair in pairs:
            netns.destroy(pair.netns, pair.host)


def packet_state(ifindex: int) -> tuple[list[int], list[str], bool]:
    """XDP program ids, tc filter names, and whether a clsact qdisc is there."""
    with IPRoute() as ipr:
        xdp = [prog_id for _, prog_id in hooks.xdp_programs(ipr, ifindex)]
        filters = [hooks.filter_name(f) for _, f in hooks.tc_filters(ipr, ifindex)]
        return xdp, filters, hooks.has_clsact(ipr, ifindex)


def mount_full_fs(stack: ExitStack, directory: Path) -> None:
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FULL_FS}", "ebcap-test", directory], check=True
    )
    stack.callback(subprocess.run, ["umount", "--lazy", directory], check=True)


def test_nothing_stays_after_any_exit(interfaces: list[netns.VethPair]) -> None:
    programs, links = ebcap_programs(), set(loaded_link_ids())
    free = iter(interfaces)
    cases = []
    with tempfile.TemporaryDirectory(prefix="ebcap-leftovers-") as root, ExitStack() as mounts:
        for source, how in CASES:
            case = Case(source, how, Path(root) / f"{source}-{how}")
            if source in ("xdp", "tc"):
                case.iface = next(free).host
            if how == "error":
                mount_full_fs(mounts, case.directory)
            else:
                case.directory.mkdir()
            args = [a.format(iface=case.iface) for a in SOURCES[source]]
            duration = ["--duration", "1.5"] if how in ("duration", "error") else []
            ready = case.directory / "ready" if how != "error" else Path(root) / f"{source}.ready"
            case.proc = ebcap_process(
                "record", "-o", case.directory / "run.arrow", "--ready-file", ready,
                *args, *duration,
            )  # fmt: skip
            cases.append((case, ready))
        for _, ready in cases:
            wait_for(ready)
        time.sleep(0.3)
        for case, _ in cases:
            assert case.proc is not None
            if case.how == "sigterm":
                case.proc.send_signal(signal.SIGTERM)
            elif case.how == "sigkill":
                case.proc.send_signal(signal.SIGKILL)
        for case, _ in cases:
            assert case.proc is not None
            _, case.stderr = case.proc.communicate(timeout=60)
        refused = ebcap_process("record", "-o", Path(root) / "lo.arrow", "-s", "xdp:lo")
        _, attach_error = refused.communicate(timeout=60)
        assert not (Path(root) / "lo.arrow.partial").exists()
    assert refused.returncode == 1 and "not supported" in attach_error, attach_error
    for case, _ in cases:
        assert case.proc is not None
        expected = {"duration": 0, "sigterm": 0, "error": 1, "sigkill": -signal.SIGKILL}[case.how]
        assert case.proc.returncode == expected, (case.source, case.how, case.stderr)
        if case.how == "error":
            partial = re.escape(str(case.directory / "run.arrow.partial"))
            kept = r"nothing had been flushed yet|the \d+ rows flushed before are recoverable .*"
            line = rf"ebcap: error: disk full writing {partial}: ({kept})\n"
            assert re.fullmatch(line, case.stderr), (case.source, case.stderr)
    assert ebcap_programs_left(programs) == set(), "a program stayed loaded"
    assert set(loaded_link_ids()) <= links, "a link stayed"
    for pair in interfaces:
        assert packet_state(pair.host_index) == ([], [], False), f"leftovers on {pair.host}"
