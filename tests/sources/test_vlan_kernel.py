"""tc ingress of VLAN-tagged frames: the recording holds the frames as they were on the wire.

Before the tc ingress hook the kernel takes a frame's outer 802.1Q/802.1ad
tag out of its bytes into the skb, as it does for every tagged frame it
receives. Known tagged UDP frames go from the namespace's end of a veth
pair to this one; the file, replay's lines and pcapng must all hold the
frames byte for byte as sent, the tag included.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from sources import netns
from sources.pcapng_reader import parse_pcapng, read_with_dpkt
from sources.rings import source_programs, wait_programs_gone
from synthetic import Collect, parse

from ebcap.capture.packet_source import TcSource
from ebcap.capture.recorder import Recorder, RecordOptions
from ebcap.format.packet_headers import ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, IPPROTO_UDP
from ebcap.format.reader import CaptureReader
from ebcap.replay.pcapng_export import export_pcapng
from ebcap.replay.player import ReplayOptions, write_replay

pytestmark = [pytest.mark.privileged, pytest.mark.network]

VLAN_ID = 100
TCI = 5 << 13 | VLAN_ID  # priority 5: the whole TCI must come back, not only the id
SIZES = [10, 300, 60, 1000, 78]
SNAPLEN = 128
"""Short enough to cut the larger datagrams: the tag must not push a frame past it."""
HEADERS = 14 + 4 + 20 + 8  # Ethernet, the tag, IPv4 without options, UDP
SPORT, DPORT = 43000, 43001


def _record(source: TcSource, transport: str, path: Path, work: Callable[[], None]) -> None:
    done: list[bool] = []

    def started() -> None:
        work()
        done.append(True)

    options = RecordOptions(output=path, transport=transport, buffer_bytes=1 << 20)
    Recorder(source, options).run(should_stop=lambda: bool(done), on_started=started)


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
@pytest.mark.parametrize("tpid", [ETH_P_8021Q, ETH_P_8021AD], ids=["802.1Q", "802.1ad"])
def test_tc_ingress_records_the_tag_the_kernel_took_out(
    veth: netns.VethPair, tmp_path: Path, transport: str, tpid: int
) -> None:
    before = source_programs()
    frames = [
        netns.tagged_udp_frame(veth, TCI, SPORT, DPORT, netns.payload(i, size), tpid)
        for i, size in enumerate(SIZES)
    ]
    source = TcSource(veth.host, "ingress", snaplen=SNAPLEN)
    path = tmp_path / "vlan.arrow"
    _record(source, transport, path, lambda: netns.send_frames(veth, frames))
    wait_programs_gone(before)

    with CaptureReader(path) as reader:
        table = reader.to_table()
        out = io.BytesIO()
        assert export_pcapng(reader, out).packets == len(SIZES)
        lines = Collect()
        write_replay(reader, lines, ReplayOptions())
    wire = [len(frame) for frame in frames]
    assert wire == [size + HEADERS for size in SIZES]
    assert table["pkt_len"].to_pylist() == wire
    assert table["cap_len"].to_pylist() == [min(n, SNAPLEN) for n in wire]
    assert set(table["vlan_id"].to_pylist()) == {VLAN_ID}
    assert set(table["ethertype"].to_pylist()) == {ETH_P_IP}
    assert set(table["ip_proto"].to_pylist()) == {IPPROTO_UDP}
    assert set(table["src_addr"].to_pylist()) == {veth.peer_ip}
    assert set(table["dst_addr"].to_pylist()) == {veth.host_ip}
    assert set(table["src_port"].to_pylist()) == {SPORT}
    assert set(table["dst_port"].to_pylist()) == {DPORT}

    packets = parse_pcapng(out.getvalue())["packets"]
    assert [p[2] for p in packets] == wire
    for frame, (_, _, _, captured) in zip(frames, packets, strict=True):
        assert captured[12:16] == struct.pack("!HH", tpid, TCI)
        assert captured == frame[:SNAPLEN]  # the frame as sent, payload bytes included
    assert [frame for _, frame in read_with_dpkt(out.getvalue()).packets] == [p[3] for p in packets]
    bodies = [str(parse(line)["body"]) for line in lines.lines()]
    for n, body in zip(wire, bodies, strict=True):
        cut = f" (captured {SNAPLEN})" if n > SNAPLEN else ""
        summary = f"IPv4 {veth.peer_ip}.{SPORT} > {veth.host_ip}.{DPORT}: UDP, frame {n}{cut} "
        assert body.startswith(summary) and f"vlan_id={VLAN_ID}" in body, body
