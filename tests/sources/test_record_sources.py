"""The new sources through the real recorder into a file, and packets on to pcapng."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from sources import netns
from sources.pcapng_reader import parse_pcapng
from sources.rings import source_programs, wait_programs_gone

from ebcap.capture.packet_source import XdpSource
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


@pytest.mark.network
@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_xdp_recording_to_pcapng(veth: netns.VethPair, tmp_path: Path, transport: str) -> None:
    before = source_programs()
    source = XdpSource(veth.host, mode="generic", snaplen=SNAPLEN)
    send = dict(netns=veth.netns, src=veth.peer_ip, dst=veth.host_ip, sport=42000, dport=42001)
    path = tmp_path / "packets.arrow"
    with _record(source, transport, path, lambda: netns.send_udp(**send, sizes=SIZES)) as reader:
        table = reader.to_table()
        metadata = reader.metadata
    wait_programs_gone(before)
    assert metadata[s.META_SOURCE] == f"xdp:{veth.host}"
    assert table.num_rows == len(SIZES)
    assert table["pkt_len"].to_pylist() == [size + HEADERS for size in SIZES]
    assert table["cap_len"].to_pylist() == [min(size + HEADERS, SNAPLEN) for size in SIZES]
    assert set(table["src_addr"].to_pylist()) == {veth.peer_ip}
    assert set(table["dst_port"].to_pylist()) == {42001}
    out = io.BytesIO()
    assert write_pcapng(table, metadata, out) == len(SIZES)
    packets = parse_pcapng(out.getvalue())["packets"]
    offset = metadata[s.META_REALTIME_OFFSET]
    for index, (size, row, packet) in enumerate(
        zip(SIZES, table.to_pylist(), packets, strict=True)
    ):
        assert packet[1] == row["ts_ns"] + offset and packet[2] == size + HEADERS
        assert packet[3][HEADERS:] == netns.payload(index, size)[: row["cap_len"] - HEADERS]


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
