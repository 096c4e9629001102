"""Several `ebcap record` at once on one machine, same and different sources and
transports: each file holds exactly the events of a workload that makes a known
number of calls once all of them are recording."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
from kernel_helpers import ebcap_programs, ebcap_programs_left
from reliability.harness import (
    GETPPID_NR,
    assert_syscall_rows_intact,
    ebcap_process,
    samples_of,
    wait_for,
)

from ebcap.bpf.programs.packet import PACKET_OFFSET, SNAPLEN_DEFAULT
from ebcap.format.reader import CaptureReader

pytestmark = pytest.mark.privileged

CALLS = 20_000

COUNTED_WORKLOAD = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
for _ in range(int(sys.argv[2])):
    os.getppid()
"""
"""Waits for a go file, then calls getppid() exactly argv[2] times."""

RECORDERS = {
    "syscalls-perf-1": ["--pid", "{pid}"],
    "syscalls-perf-2": ["--pid", "{pid}"],
    "syscalls-ringbuf": ["--pid", "{pid}", "-t", "ringbuf"],
    "tracepoint-getppid": ["-s", "tracepoint:syscalls:sys_enter_getppid"],
}


def getppid_calls(path: Path, pid: int) -> int:
    """The workload's getppid events in a capture (asserting the file's integrity)."""
    with CaptureReader(path) as reader:
        table = reader.to_table()
        totals = reader.totals or {}
        source = reader.metadata["ebcap.source"]
    assert totals["lost"] == 0 and totals["drops"] == 0, f"{path.name} lost events"
    samples = samples_of(table)
    assert totals["events"] == samples.num_rows
    if source == "syscalls":
        assert_syscall_rows_intact(table)
        mine = pc.and_(pc.equal(samples["pid"], pid), pc.equal(samples["syscall_nr"], GETPPID_NR))
    else:
        mine = pc.equal(samples["common_pid"], pid)
    return int(pc.sum(mine.cast("int64")).as_py() or 0)


def test_recorders_at_the_same_time(tmp_path: Path) -> None:
    programs = ebcap_programs()
    go = tmp_path / "go"
    load = subprocess.Popen([sys.executable, "-c", COUNTED_WORKLOAD, str(go), str(CALLS)])
    recorders = {}
    try:
        for name, args in RECORDERS.items():
            ready = tmp_path / f"{name}.ready"
            argv = [a.format(pid=load.pid) for a in args]
            out = tmp_path / f"{name}.arrow"
            proc = ebcap_process("record", "-o", out, "--ready-file", ready, *argv)
            recorders[name] = (proc, out)
        for name in RECORDERS:
            wait_for(tmp_path / f"{name}.ready")
        go.touch()
        assert load.wait(timeout=60) == 0
    finally:
        load.kill()
        load.wait()
        for proc, _ in recorders.values():
            proc.send_signal(signal.SIGINT)
    for name, (proc, out) in recorders.items():
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{name}: {stderr}"
        assert getppid_calls(out, load.pid) == CALLS, name
    assert ebcap_programs_left(programs) == set()


PACKET_RECORDERS = {
    "tc-perf": ["-s", "tc:{iface}:ingress"],
    "tc-ringbuf": ["-s", "tc:{iface}:ingress", "-t", "ringbuf"],
    "xdp-generic": ["-s", "xdp:{iface}", "--xdp-mode", "generic"],
}
DATAGRAMS = 300
DPORT = 40123


@pytest.mark.network
def test_packet_recorders_on_one_interface(tmp_path: Path) -> None:
    """Two tc filters on the same hook and an XDP program, all on one veth at once."""
    from sources import netns

    programs = ebcap_programs()
    pair = netns.create(os.getpid() % 100000)
    recorders = {}
    try:
        for name, args in PACKET_RECORDERS.items():
            ready = tmp_path / f"{name}.ready"
            out = tmp_path / f"{name}.arrow"
            argv = [a.format(iface=pair.host) for a in args]
            proc = ebcap_process("record", "-o", out, "--ready-file", ready, *argv)
            recorders[name] = (proc, out)
        for name in PACKET_RECORDERS:
            wait_for(tmp_path / f"{name}.ready")
        sizes = [64 + (i % 200) for i in range(DATAGRAMS)]
        netns.send_udp(pair.netns, pair.peer_ip, pair.host_ip, 40000, DPORT, sizes)
    finally:
        for proc, _ in recorders.values():
            proc.send_signal(signal.SIGINT)
        try:
            for name, (proc, _) in recorders.items():
                _, stderr = proc.communicate(timeout=60)
                assert proc.returncode == 0, f"{name}: {stderr}"
        finally:
            netns.destroy(pair.netns, pair.host)
    for name, (_, out) in recorders.items():
        with CaptureReader(out) as reader:
            table = samples_of(reader.to_table())
        # in send order: a perf recorder delivers per CPU, and the packets may be taken in on
        # either CPU, so arrival order can differ
        mine = table.filter(pc.equal(table["dst_port"], DPORT)).sort_by("ts_ns")
        headers = 14 + 20 + 8  # Ethernet, IPv4, UDP
        assert mine["pkt_len"].to_pylist() == [headers + s for s in sizes], name
        cap = [min(headers + s, SNAPLEN_DEFAULT) for s in sizes]
        assert mine["cap_len"].to_pylist() == cap, name
        got = [
            bytes(d)[PACKET_OFFSET + headers : PACKET_OFFSET + c]
            for d, c in zip(mine["data"].to_pylist(), cap, strict=True)
        ]
        want = [netns.payload(i, c - headers) for i, c in enumerate(cap)]
        assert got == want, f"{name}: packet bytes differ"
    assert ebcap_programs_left(programs) == set()
