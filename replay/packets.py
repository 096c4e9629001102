"""One-line summaries of packet rows (xdp:/tc: captures), in the manner of tcpdump.

::

    IPv4 198.51.100.1.443 > 198.51.100.2.51234: TCP [P.], frame 98
    IPv6 2001:db8::1 > 2001:db8::2: ICMPv6 echo request, frame 118
    IPv4 198.51.100.1 > 198.51.100.2: UDP, frame 562, fragment id 4660 at 1480 (last)
    ARP, Request who-has 198.51.100.2 tell 198.51.100.1, frame 42
    LLDP, frame 60 (captured 54)

``frame`` is the frame's length on the wire (``pkt_len``, ``unknown`` where
another tool left it null; tcpdump's ``length`` is the payload's, so the word
differs); ``captured`` appears when the snapshot kept
less. Addresses, protocol and ports come from the columns the recorder
decoded (capture/packet_decode.py); TCP flags, ICMP types, IPv4 fragments
and ARP come from the packet's first
bytes in ``data`` (where they start is in the capture's source layout). A
batch formats each distinct summary once: the packets of a flow repeat it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.errors import UsageError
from ebcap.format.packet_headers import (
    ETH_ALEN,
    ETH_P_802_3_MIN,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IP_OFFSET_MASK,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    PacketBytes,
    network_header,
)
from ebcap.format.pcapng import packet_offset
from ebcap.replay.lines import string_parts

SUMMARISED: Final = (
    "ethertype",
    "src_addr",
    "dst_addr",
    "ip_proto",
    "src_port",
    "dst_port",
    "pkt_len",
    "cap_len",
)
"""Packet columns the summary shows; the others (ifindex, rx_queue) follow as fields."""

HEAD_BYTES: Final = 96
"""Bytes of each packet looked at, as many as every event holds: Ethernet, two VLAN tags,
an IPv4 header with options or an IPv6 header, then TCP flags; ARP."""
ETHERTYPE_NAMES: Final = {
    0x0800: "IPv4",
    0x0806: "ARP",
    0x0842: "Wake-on-LAN",
    0x22F0: "AVTP",
    0x8035: "RARP",
    0x809B: "AppleTalk",
    0x8100: "802.1Q",
    0x86DD: "IPv6",
    0x8808: "Ethernet flow control",
    0x8809: "Slow protocols (LACP)",
    0x8847: "MPLS unicast",
    0x8848: "MPLS multicast",
    0x8863: "PPPoE discovery",
    0x8864: "PPPoE session",
    0x888E: "EAPOL",
    0x88A8: "802.1ad",
    0x88CC: "LLDP",
    0x88E5: "MACsec",
    0x88F7: "PTP",
    0x8906: "FCoE",
}
IP_PROTO_NAMES: Final = {
    1: "ICMP",
    2: "IGMP",
    4: "IPIP",
    6: "TCP",
    17: "UDP",
    41: "IPv6",
    43: "IPv6-route",
    44: "IPv6-frag",
    47: "GRE",
    50: "ESP",
    51: "AH",
    58: "ICMPv6",
    59: "IPv6-nonxt",
    60: "IPv6-opts",
    89: "OSPF",
    103: "PIM",
    112: "VRRP",
    132: "SCTP",
    136: "UDPLite",
}
ICMP_TYPES: Final = {
    0: "echo reply",
    3: "unreachable",
    5: "redirect",
    8: "echo request",
    11: "time exceeded",
    12: "parameter problem",
}
ICMPV6_TYPES: Final = {
    1: "unreachable",
    2: "packet too big",
    3: "time exceeded",
    4: "parameter problem",
    128: "echo request",
    129: "echo reply",
    133: "router solicitation",
    134: "router advertisement",
    135: "neighbor solicitation",
    136: "neighbor advertisement",
}
TCP_FLAGS: Final = (
    (0x01, "F"),
    (0x02, "S"),
    (0x04, "R"),
    (0x08, "P"),
    (0x20, "U"),
    (0x40, "E"),
    (0x80, "W"),
    (0x10, "."),
)
"""TCP flag bits as tcpdump prints them, ACK (``.``) last: ``[S.]`` is a SYN-ACK."""
IP_MF: Final = 0x2000
IP_OFFSET_UNIT: Final = 8
"""The IPv4 fragment offset counts 8-byte units."""
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2
ARP_ETHER_IPV4: Final = (1, ETH_P_IP, ETH_ALEN, 4)
"""hardware type, protocol type, hardware and protocol address lengths of Ethernet/IPv4 ARP."""
NO_VALUE: Final = -1

_KEY: Final = np.dtype(
    [
        ("ethertype", "<i8"),
        ("src", "<i8"),
        ("dst", "<i8"),
        ("proto", "<i8"),
        ("sport", "<i8"),
        ("dport", "<i8"),
        ("pkt_len", "<i8"),
        ("cap_len", "<i8"),
        ("fragment", "<i8"),
        ("ident", "<i8"),
        ("tcp_flags", "<i8"),
        ("icmp_type", "<i8"),
        ("arp", "V32"),
    ]
)
"""Everything a summary shows, per row (strings as codes), so equal rows are found at once."""


def is_packet_capture(schema: pa.Schema, metadata: Mapping[str, Any]) -> bool:
    """Whether rows are packets: the packet columns are there and the layout says where."""
    if not all(name in schema.names for name in SUMMARISED):
        return False
    try:
        packet_offset(metadata)
    except UsageError:
        return False
    return True


class PacketSummaries:
    """Turns packet rows into summary lines; needs :data:`SUMMARISED` and ``data``."""

    columns: Final = (*SUMMARISED, "data")

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self.offset = packet_offset(metadata)

    def summaries(self, rows: pa.RecordBatch) -> pa.Array:
        """One summary per row, each distinct one formatted once."""
        n = rows.num_rows
        if n == 0:
            return pa.array([], pa.string())
        head = packet_heads(rows.column("data"), self.offset, HEAD_BYTES)
        cap = _ints(rows.column("cap_len"))
        ethertype = _ints(rows.column("ethertype"))
        fields = _header_fields(head, np.minimum(cap, HEAD_BYTES), ethertype)
        src = pc.dictionary_encode(rows.column("src_addr"), null_encoding="encode")
        dst = pc.dictionary_encode(rows.column("dst_addr"), null_encoding="encode")
        keys = np.zeros(n, dtype=_KEY)
        keys["ethertype"] = ethertype
        keys["src"] = src.indices.to_numpy()
        keys["dst"] = dst.indices.to_numpy()
        keys["proto"] = _ints(rows.column("ip_proto"))
        keys["sport"] = _ints(rows.column("src_port"))
        keys["dport"] = _ints(rows.column("dst_port"))
        keys["pkt_len"] = _ints(rows.column("pkt_len"))
        keys["cap_len"] = cap
        for name in ("fragment", "ident", "tcp_flags", "icmp_type"):
            keys[name] = fields[name]
        keys["arp"] = np.ascontiguousarray(fields["arp"]).view("V32").reshape(n)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        sources, targets = src.dictionary.to_pylist(), dst.dictionary.to_pylist()
        texts = [
            _summary(keys[i], sources[keys["src"][i]], targets[keys["dst"][i]], fields["arp"][i])
            for i in first
        ]
        return pa.array(texts, pa.string()).take(pa.array(inverse.reshape(-1)))


def packet_heads(data: pa.Array, offset: int, width: int) -> np.ndarray:
    """The first ``width`` packet bytes of each row, starting ``offset`` into ``data`` (zeros
    where a payload is shorter)."""
    offsets, raw = string_parts(data)
    starts = offsets[:-1] + offset
    lengths = np.clip(offsets[1:] - starts, 0, width)
    columns = np.arange(width)
    present = columns[None, :] < lengths[:, None]
    if not len(raw):
        return np.zeros((len(starts), width), dtype=np.uint8)
    where = np.minimum(starts[:, None] + columns[None, :], len(raw) - 1)
    return np.where(present, raw[where], 0).astype(np.uint8)


def _ints(column: pa.Array) -> np.ndarray:
    """An integer column as int64, null as :data:`NO_VALUE`."""
    return np.asarray(pc.fill_null(column.cast(pa.int64()), NO_VALUE).to_numpy())


def _header_fields(head: np.ndarray, avail: np.ndarray, ethertype: np.ndarray) -> dict[str, Any]:
    """What the summary needs beyond the decoded columns, from each packet's first bytes."""
    n = len(head)
    packet = PacketBytes(head)
    u8, be16 = packet.u8, packet.be16

    def have(at: np.ndarray) -> np.ndarray:
        return avail >= at

    _, l3 = network_header(packet, avail)  # as the recorder found it
    first = u8(l3)  # version and header length: as the recorder's decoder, 4 and >= 5 words
    ipv4 = (ethertype == ETH_P_IP) & have(l3 + 20) & (first >> 4 == 4) & ((first & 0xF) >= 5)
    word = be16(l3 + 6)
    fragment = np.where(ipv4, word & (IP_MF | IP_OFFSET_MASK), 0)
    ident = np.where(ipv4 & (fragment != 0), be16(l3 + 4), NO_VALUE)
    proto = np.where(ipv4, u8(l3 + 9), np.where(ethertype == ETH_P_IPV6, u8(l3 + 6), NO_VALUE))
    l4 = np.where(ipv4, l3 + (u8(l3) & 0xF) * 4, l3 + 40)
    whole = (word & IP_OFFSET_MASK) == 0
    first_part = ~ipv4 | whole
    ip = ipv4 | ((ethertype == ETH_P_IPV6) & have(l3 + 40))
    tcp = ip & (proto == IPPROTO_TCP) & first_part & have(l4 + 14)
    icmp = ip & np.isin(proto, (IPPROTO_ICMP, IPPROTO_ICMPV6)) & first_part & have(l4 + 1)
    arp = np.zeros((n, 32), dtype=np.uint8)
    is_arp = (ethertype == ETH_P_ARP) & have(l3 + 28)
    if is_arp.any():
        picked = np.flatnonzero(is_arp)
        body = head[picked[:, None], np.minimum(l3[picked, None] + np.arange(28), HEAD_BYTES - 1)]
        arp[picked, :28] = body
        arp[picked, 31] = 1  # marks "ARP body present"
    return {
        "fragment": fragment,
        "ident": ident,
        "tcp_flags": np.where(tcp, u8(l4 + 13), NO_VALUE),
        "icmp_type": np.where(icmp, u8(l4), NO_VALUE),
        "arp": arp,
    }


def _summary(key: np.void, src: str | None, dst: str | None, arp: np.ndarray) -> str:
    """The summary of one row (see the module docstring for the forms)."""
    ethertype = int(key["ethertype"])
    wire, cap = int(key["pkt_len"]), int(key["cap_len"])
    length = f", frame {wire}" if wire != NO_VALUE else ", frame length unknown"
    if cap != NO_VALUE and (cap < wire or wire == NO_VALUE):
        length += f" (captured {cap})"
    if ethertype == NO_VALUE:
        return f"frame shorter than an Ethernet header{length}"
    if ethertype in (ETH_P_IP, ETH_P_IPV6):
        family = "IPv4" if ethertype == ETH_P_IP else "IPv6"
        if src is None or dst is None:
            return f"{family}, header not captured or not valid{length}"
        return _ip_summary(key, family, src, dst, length)
    if ethertype == ETH_P_ARP and arp[31]:
        return _arp_summary(arp) + length
    if ethertype < ETH_P_802_3_MIN:
        return f"802.3 LLC{length}"
    return (ETHERTYPE_NAMES.get(ethertype) or f"ethertype 0x{ethertype:04x}") + length


def _ip_summary(key: np.void, family: str, src: str, dst: str, length: str) -> str:
    sport, dport, proto = int(key["sport"]), int(key["dport"]), int(key["proto"])
    ends = f"{src}.{sport} > {dst}.{dport}" if sport >= 0 and dport >= 0 else f"{src} > {dst}"
    what = IP_PROTO_NAMES.get(proto, f"ip-proto-{proto}")
    flags = int(key["tcp_flags"])
    if flags >= 0:
        what += " [" + ("".join(c for bit, c in TCP_FLAGS if flags & bit) or "none") + "]"
    icmp = int(key["icmp_type"])
    if icmp >= 0:
        names = ICMP_TYPES if proto == IPPROTO_ICMP else ICMPV6_TYPES
        what += " " + names.get(icmp, f"type {icmp}")
    fragment = int(key["fragment"])
    part = ""
    if fragment > 0:
        at = (fragment & IP_OFFSET_MASK) * IP_OFFSET_UNIT
        more = "more follow" if fragment & IP_MF else "last"
        part = f", fragment id {int(key['ident'])} at {at} ({more})"
    return f"{family} {ends}: {what}{length}{part}"


def _arp_summary(body: np.ndarray) -> str:
    """``ARP, Request who-has T tell S`` / ``ARP, Reply S is-at MAC`` (Ethernet/IPv4 ARP)."""
    hardware = (int(body[0]) << 8) | int(body[1])
    protocol = (int(body[2]) << 8) | int(body[3])
    operation = (int(body[6]) << 8) | int(body[7])
    if (hardware, protocol, int(body[4]), int(body[5])) != ARP_ETHER_IPV4:
        return f"ARP, hardware type {hardware}, protocol 0x{protocol:04x}"
    sender_mac = ":".join(f"{b:02x}" for b in body[8:14])
    sender = str(ipaddress.IPv4Address(bytes(body[14:18])))
    target = str(ipaddress.IPv4Address(bytes(body[24:28])))
    if operation == ARP_REQUEST:
        return f"ARP, Request who-has {target} tell {sender}"
    if operation == ARP_REPLY:
        return f"ARP, Reply {sender} is-at {sender_mac}"
    return f"ARP, operation {operation}"
