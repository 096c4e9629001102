"""XDP and tc sources on a real veth pair: known UDP datagrams, checked byte for byte."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from kernel_helpers import open_fds
from pyroute2 import IPRoute
from sources import netns
from sources.rings import collect, source_programs, structured, wait_programs_gone

from ebcap.bpf.cpus import online_cpus
from ebcap.bpf.programs.packet import PACKET_OFFSET
from ebcap.capture.netlink_hooks import has_clsact, tc_filters, xdp_programs
from ebcap.capture.packet_source import PacketSource, TcSource, XdpSource
from ebcap.capture.sources import list_sources
from ebcap.format.packet_headers import ETH_P_IP, IPPROTO_UDP

pytestmark = [pytest.mark.privileged, pytest.mark.network]

SIZES = [1, 18, 100, 300, 1000, 1400] * 8
HEADERS = 14 + 20 + 8  # Ethernet, IPv4 without options, UDP
SNAPLEN = 256


def _receiver(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((address, port))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[bytes]:
    received = []
    while True:
        try:
            received.append(sock.recv(65536))
        except BlockingIOError:
            return received


def _capture(
    source: PacketSource, transport: str, send: dict
) -> tuple[dict[str, np.ndarray], list[bytes], int, int]:
    """Record while ``send`` goes across; decoded columns (sorted by time), payloads, window."""
    window: list[int] = []

    def action() -> None:
        window.append(time.monotonic_ns())
        netns.send_udp(**send)
        window.append(time.monotonic_ns())

    payloads, drops = collect(source, transport, action)
    assert sum(drops) == 0
    events = structured(source, payloads)
    columns = {
        name: array.to_numpy(zero_copy_only=False) for name, array in source.decode(events).items()
    }
    columns["ts_ns"] = events["ts_ns"].copy()
    columns["cpu"] = events["cpu"].copy()
    order = np.argsort(columns["ts_ns"], kind="stable")
    columns = {name: values[order] for name, values in columns.items()}
    return columns, [payloads[i] for i in order], window[0], window[1]


def _check_datagrams(
    columns: dict[str, np.ndarray],
    payloads: list[bytes],
    t0: int,
    t1: int,
    *,
    ifindex: int,
    src: tuple[str, int],
    dst: tuple[str, int],
) -> None:
    """Exactly the datagrams of SIZES, in order, with the right headers and bytes."""
    assert len(payloads) == len(SIZES), f"captured {len(payloads)} packets, sent {len(SIZES)}"
    expected_len = np.array(SIZES) + HEADERS
    assert (columns["pkt_len"] == expected_len).all()
    assert (columns["cap_len"] == np.minimum(expected_len, SNAPLEN)).all()
    assert (columns["ifindex"] == ifindex).all()
    assert (columns["ethertype"] == ETH_P_IP).all()
    assert (columns["ip_proto"] == IPPROTO_UDP).all()
    assert set(columns["src_addr"]) == {src[0]} and set(columns["dst_addr"]) == {dst[0]}
    assert (columns["src_port"] == src[1]).all() and (columns["dst_port"] == dst[1]).all()
    assert set(columns["cpu"].tolist()) <= set(online_cpus())
    assert ((columns["ts_ns"] >= t0) & (columns["ts_ns"] <= t1)).all()
    for index, (size, raw) in enumerate(zip(SIZES, payloads, strict=True)):
        cap = int(columns["cap_len"][index])
        packet = raw[PACKET_OFFSET : PACKET_OFFSET + cap]
        assert packet[HEADERS:] == netns.payload(index, size)[: cap - HEADERS]


@pytest.mark.parametrize("mode", ["native", "generic"])
@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_xdp_sees_every_datagram(veth: netns.VethPair, transport: str, mode: str) -> None:
    before_progs, before_fds = source_programs(), open_fds()
    receiver = _receiver(veth.host_ip, 40001)
    send = dict(
        netns=veth.netns, src=veth.peer_ip, dst=veth.host_ip, sport=40000, dport=40001, sizes=SIZES
    )
    source = XdpSource(veth.host, mode=mode, snaplen=SNAPLEN)
    columns, payloads, t0, t1 = _capture(source, transport, send)
    _check_datagrams(
        columns, payloads, t0, t1, ifindex=veth.host_index,
        src=(veth.peer_ip, 40000), dst=(veth.host_ip, 40001),
    )  # fmt: skip
    assert (columns["rx_queue"] == 0).all()
    received = _drain(receiver)
    receiver.close()
    assert [len(r) for r in received] == SIZES, "XDP_PASS must hand every packet on"
    with IPRoute() as ipr:
        assert xdp_programs(ipr, veth.host_index) == []
    wait_programs_gone(before_progs)
    assert open_fds() == before_fds


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_tc_ingress_sees_every_datagram(veth: netns.VethPair, transport: str) -> None:
    before_progs = source_programs()
    receiver = _receiver(veth.host_ip, 40011)
    send = dict(
        netns=veth.netns, src=veth.peer_ip, dst=veth.host_ip, sport=40010, dport=40011, sizes=SIZES
    )
    source = TcSource(veth.host, "ingress", snaplen=SNAPLEN)
    columns, payloads, t0, t1 = _capture(source, transport, send)
    _check_datagrams(
        columns, payloads, t0, t1, ifindex=veth.host_index,
        src=(veth.peer_ip, 40010), dst=(veth.host_ip, 40011),
    )  # fmt: skip
    assert np.isnan(columns["rx_queue"]).all()  # veth records no receive queue
    received = _drain(receiver)
    receiver.close()
    assert [len(r) for r in received] == SIZES, "the filter must let every packet through"
    _assert_no_tc_left(veth)
    wait_programs_gone(before_progs)


@pytest.mark.parametrize("transport", ["perf", "ringbuf"])
def test_tc_egress_sees_every_datagram(veth: netns.VethPair, transport: str) -> None:
    before_progs = source_programs()
    send = dict(
        netns=None, src=veth.host_ip, dst=veth.peer_ip, sport=40020, dport=40021, sizes=SIZES
    )
    source = TcSource(veth.host, "egress", snaplen=SNAPLEN)
    columns, payloads, t0, t1 = _capture(source, transport, send)
    _check_datagrams(
        columns, payloads, t0, t1, ifindex=veth.host_index,
        src=(veth.host_ip, 40020), dst=(veth.peer_ip, 40021),
    )  # fmt: skip
    assert np.isnan(columns["rx_queue"]).all()  # sent packets have no receive queue
    _assert_no_tc_left(veth)
    wait_programs_gone(before_progs)


def _assert_no_tc_left(veth: netns.VethPair) -> None:
    with IPRoute() as ipr:
        assert tc_filters(ipr, veth.host_index) == []
        assert not has_clsact(ipr, veth.host_index)


def test_listing_packet_sources(veth: netns.VethPair) -> None:
    assert list_sources(veth.host) == [
        f"xdp:{veth.host}",
        f"tc:{veth.host}:ingress",
        f"tc:{veth.host}:egress",
    ]
    assert list_sources(f"tc:{veth.host}:e*") == [f"tc:{veth.host}:egress"]
    xdp = list_sources("xdp:*")
    assert f"xdp:{veth.host}" in xdp and all(spec.startswith("xdp:") for spec in xdp)
    assert "tracepoint:xdp:xdp_exception" in list_sources("tracepoint:xdp:*")
    assert veth.peer not in " ".join(list_sources())  # the other namespace's end
