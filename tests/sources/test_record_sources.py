"""The new sources through the real recorder into a file, and packets on to pcapng."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from sources import netns
from sources.pcapng_reader import parse_pcapng, read_with_dpkt
from sources.rings import source_programs, wait_programs_gone

from ebcap.capture.packet_source import PacketSource, TcSource, XdpSource
from ebcap.capture.recorder import Recorder, RecordOptions
from ebcap.capture.tracepoint_source import TracepointSource
from ebcap.format import schema as s
from ebcap.format.pcapng import write_pcapng
from ebcap.format.reader import CaptureReader

pytestmark = pytest.mark.privileged

SIZES = [10, 700, 1400, 64, 300]
SNAPLEN = 512
HEADERS = 42


def _record(source, transport: str, path: Path, work) -> CaptureReader:
    done: list[bool] = []

    def started() -> None:
        work()
        done.append(True)

    options = RecordOptions(output=path, transport=transport, buffer_bytes=1 << 20)
    summary = Recorder(source, options).run(should_stop=lambda: bool(done), on_started=started)
    return CaptureReader(summary.path)


def _packet_source(kind: str, veth: netns.VethPair) -> PacketSource:
    if kind == "tc-egress":
        return TcSource(veth.host, "egress", snaplen=SNAPLEN)
    return XdpSource(veth.host, mode=kind.removeprefix("xdp-"), snaplen=SNAPLEN)


@pytest.mark.network
@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
@pytest.mark.parametrize("kind", ["xdp-generic", "xdp-native", "tc-egress"])
def test_packet_recording_to_pcapng(
    veth: netns.VethPair, tmp_path: Path, transport: str, kind: str
) -> None:
    """Known datagrams through the real recorder into a file, then pcapng (read by dpkt)."""
    before = source_programs()
    source = _packet_source(kind, veth)
    if kind == "tc-egress":  # sent from here: out through the host end
        src, dst = veth.host_ip, veth.peer_ip
        send = dict(netns=None, src=src, dst=dst, sport=42000, dport=42001)
    else:
        src, dst = veth.peer_ip, veth.host_ip
        send = dict(netns=veth.netns, src=src, dst=dst, sport=42000, dport=42001)
    path = tmp_path / "packets.arrow"
    with _record(source, transport, path, lambda: netns.send_udp(**send, sizes=SIZES)) as reader:
        table = reader.to_table()
        metadata = reader.metadata
    wait_programs_gone(before)
    assert metadata[s.META_SOURCE] == source.spec
    assert table.num_rows == len(SIZES)
    assert table["pkt_len"].to_pylist() == [size + HEADERS for size in SIZES]
    assert table["cap_len"].to_pylist() == [min(size + HEADERS, SNAPLEN) for size in SIZES]
    assert set(table["src_addr"].to_pylist()) == {src}
    assert set(table["dst_addr"].to_pylist()) == {dst}
    assert set(table["dst_port"].to_pylist()) == {42001}
    assert set(table["ifindex"].to_pylist()) == {veth.host_index}
    expected_queue = None if kind == "tc-egress" else 0
    assert set(table["rx_queue"].to_pylist()) == {expected_queue}
    out = io.BytesIO()
    assert write_pcapng(table, metadata, out) == len(SIZES)
    packets = parse_pcapng(out.getvalue())["packets"]
    offset = metadata[s.META_REALTIME_OFFSET]
    for index, (size, row, packet) in enumerate(
        zip(SIZES, table.to_pylist(), packets, strict=True)
    ):
        assert packet[1] == row["ts_ns"] + offset and packet[2] == size + HEADERS
        assert packet[3][HEADERS:] == netns.payload(index, size)[: row["cap_len"] - HEADERS]
    view = read_with_dpkt(out.getvalue())
    assert (view.snaplen, view.linktype) == (SNAPLEN, 1)
    assert [frame for _, frame in view.packets] == [p[3] for p in packets]


@pytest.mark.network
def test_a_capture_without_packets_exports_a_valid_pcapng(
    veth: netns.VethPair, tmp_path: Path
) -> None:
    """Nothing crossed the interface: the pcapng file still has its interface, and the
    snaplen the capture was recorded with."""
    source = XdpSource(veth.host, mode="generic", snaplen=SNAPLEN)
    with _record(source, "ringbuf", tmp_path / "quiet.arrow", lambda: None) as reader:
        table = reader.to_table()
        metadata = reader.metadata
    assert table.num_rows == 0
    out = io.BytesIO()
    assert write_pcapng(table, metadata, out) == 0
    view = read_with_dpkt(out.getvalue())
    assert (view.snaplen, view.linktype, view.packets) == (SNAPLEN, 1, [])
    assert parse_pcapng(out.getvalue())["interfaces"][0][2] == veth.host.encode()


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_tracepoint_recording(tmp_path: Path, transport: str) -> None:
    true = shutil.which("true")
    assert true is not None
    children: list[int] = []

    def work() -> None:
        for _ in range(3):
            child = subprocess.Popen([true])
            child.wait()
            children.append(child.pid)

    source = TracepointSource("sched", "sched_process_exec")
    with _record(source, transport, tmp_path / "exec.arrow", work) as reader:
        table = reader.to_table()
        metadata = reader.metadata
    assert metadata[s.META_SOURCE] == "tracepoint:sched:sched_process_exec"
    rows = [r for r in table.to_pylist() if r["pid"] in children]
    assert sorted(r["pid"] for r in rows) == sorted(children)
    assert {r["filename"] for r in rows} == {true}
    assert all(r["old_pid"] == r["common_pid"] == r["pid"] for r in rows)
    assert all(r["kind"] == s.KIND_SAMPLE and r["ts_ns"] > 0 for r in rows)
