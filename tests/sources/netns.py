"""A veth pair with one end in a network namespace of its own, and UDP traffic across it.

Addresses come from 198.51.100.0/24 (a documentation range): one free /30
per pair, so concurrent test runs do not collide. (192.0.2.0/24 is not used
on the host side: this machine's own uplink sits in it.) IPv6 is off on both
ends and the neighbours are static, so the only packets on the link are the
ones a test sends (no router solicitations, no ARP). :func:`send_frames`
writes whole frames (:func:`tagged_udp_frame`: VLAN-tagged) onto the link
through a packet socket, which needs no VLAN device in the kernel.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kernel_helpers import run_in_thread
from pyroute2 import IPRoute, NetNS
from pyroute2 import netns as namespaces
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

SUBNET_BASE = "198.51.100."
PREFIX = 30
SUBNETS = 64


@dataclass
class VethPair:
    """``host`` lives in this namespace, ``peer`` in namespace ``netns``."""

    netns: str
    host: str
    peer: str
    host_index: int
    host_mac: str
    peer_mac: str
    host_ip: str
    peer_ip: str


def in_namespace(netns: str, work: Callable[[], None]) -> None:
    """Run ``work`` in a thread that entered ``netns`` (setns moves only the calling thread)."""

    def entered() -> None:
        namespaces.setns(netns, flags=0)
        work()

    run_in_thread(entered)


def _disable_ipv6(*names: str) -> None:
    for name in names:
        Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")


def _free_subnet(start: int) -> tuple[str, str]:
    """Host and peer address of a /30 in 198.51.100.0/24 that no interface here uses."""
    with IPRoute() as ipr:
        in_use = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}
    for step in range(SUBNETS):
        base = 4 * ((start + step) % SUBNETS)
        host, peer = f"{SUBNET_BASE}{base + 1}", f"{SUBNET_BASE}{base + 2}"
        if host not in in_use and peer not in in_use:
            return host, peer
    raise RuntimeError("no free /30 left in 198.51.100.0/24")


def create(tag: int) -> VethPair:
    """Namespace ``ebcap-<tag>`` and veth ``ebh<tag>`` (here) <-> ``ebn<tag>`` (there)."""
    netns, host, peer = f"ebcap-{tag}", f"ebh{tag}", f"ebn{tag}"
    host_ip, peer_ip = _free_subnet(tag)
    namespaces.create(netns)
    try:
        in_namespace(netns, lambda: _disable_ipv6("all", "default"))
        with IPRoute() as ipr, NetNS(netns, flags=0) as there:
            ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": netns})
            index = ipr.link_lookup(ifname=host)[0]
            _disable_ipv6(host)
            peer_index = there.link_lookup(ifname=peer)[0]
            host_mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
            peer_mac = there.get_links(peer_index)[0].get_attr("IFLA_ADDRESS")
            ipr.addr("add", index=index, address=host_ip, prefixlen=PREFIX)
            there.addr("add", index=peer_index, address=peer_ip, prefixlen=PREFIX)
            ipr.neigh("replace", dst=peer_ip, lladdr=peer_mac, ifindex=index, state=NUD_PERMANENT)
            there.neigh(
                "replace", dst=host_ip, lladdr=host_mac, ifindex=peer_index, state=NUD_PERMANENT
            )
            ipr.link("set", index=index, state="up")
            there.link("set", index=peer_index, state="up")
            there.link("set", index=there.link_lookup(ifname="lo")[0], state="up")
    except BaseException:
        destroy(netns, host)
        raise
    return VethPair(netns, host, peer, index, host_mac, peer_mac, host_ip, peer_ip)


def destroy(netns: str, host: str) -> None:
    with IPRoute() as ipr, contextlib.suppress(NetlinkError):  # never made, or gone already
        ipr.link("del", ifname=host)
    if netns_exists(netns):
        namespaces.remove(netns)


def netns_exists(netns: str) -> bool:
    return netns in namespaces.listnetns()


def payload(index: int, size: int) -> bytes:
    """The known bytes of datagram ``index``."""
    return bytes((index * 7 + k) % 256 for k in range(size))


_SENDER = textwrap.dedent(
    """
    import json, socket, sys
    spec = json.loads(sys.argv[1])
    if spec["netns"]:
        from pyroute2 import netns
        netns.setns(spec["netns"], flags=0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((spec["src"], spec["sport"]))
    for i, size in enumerate(spec["sizes"]):
        s.sendto(bytes((i * 7 + k) % 256 for k in range(size)), (spec["dst"], spec["dport"]))
    """
)


def send_udp(
    netns: str | None, src: str, dst: str, sport: int, dport: int, sizes: list[int]
) -> None:
    """Send one datagram per size from ``src:sport`` (inside ``netns`` when given)."""
    spec = json.dumps(
        {"netns": netns, "src": src, "dst": dst, "sport": sport, "dport": dport, "sizes": sizes}
    )
    subprocess.run([sys.executable, "-c", _SENDER, spec], check=True)
    time.sleep(0.05)


ETH_P_8021Q = 0x8100
ETH_P_IP = 0x0800

_FRAME_SENDER = textwrap.dedent(
    """
    import json, socket, sys
    spec = json.loads(sys.argv[1])
    from pyroute2 import netns
    netns.setns(spec["netns"], flags=0)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((spec["iface"], 0))
    for frame in spec["frames"]:
        s.send(bytes.fromhex(frame))
    """
)


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def tagged_udp_frame(
    pair: VethPair, tci: int, sport: int, dport: int, data: bytes, tpid: int = ETH_P_8021Q
) -> bytes:
    """A frame from the peer to the host end: an outer tag, IPv4 (peer_ip > host_ip), UDP."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    src, dst = socket.inet_aton(pair.peer_ip), socket.inet_aton(pair.host_ip)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0, src, dst)
    header = header[:10] + struct.pack("!H", _ip_checksum(header)) + header[12:]
    macs = bytes.fromhex(pair.host_mac.replace(":", "") + pair.peer_mac.replace(":", ""))
    return macs + struct.pack("!HHH", tpid, tci, ETH_P_IP) + header + udp


def send_frames(pair: VethPair, frames: list[bytes]) -> None:
    """Write ``frames`` as they are onto the peer end (inside the pair's namespace)."""
    spec = json.dumps(
        {"netns": pair.netns, "iface": pair.peer, "frames": [f.hex() for f in frames]}
    )
    subprocess.run([sys.executable, "-c", _FRAME_SENDER, spec], check=True)
    time.sleep(0.05)
