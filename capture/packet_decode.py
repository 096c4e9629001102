"""Packet events to columns: Ethernet, VLAN id, IPv4/IPv6 addresses, protocol, ports.

Vectorised over a batch with numpy: header offsets are computed per row, so
VLAN tags and IPv4 options need no per-packet Python. A header counts only
if its bytes were captured (``cap_len``); what was not captured is null.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Final

import numpy as np
import pyarrow as pa

from ebcap.format.packet_headers import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    IP_OFFSET_MASK,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    PacketBytes,
    network_header,
    outer_vlan_id,
)

_PORTED: Final = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE)


class RxQueue(enum.Enum):
    """How the event's ``queue`` field becomes the ``rx_queue`` column (null: unknown).

    The column always means what XDP's ``rx_queue_index`` means: the receive
    queue of the packet.
    """

    AS_IS = "as_is"
    """XDP: ``rx_queue_index``."""
    RECORDED_PLUS_ONE = "recorded_plus_one"
    """tc ingress: ``skb->queue_mapping`` holds rx queue + 1, 0 when none was recorded."""
    NONE = "none"
    """tc egress: no receive queue (and the tx queue is picked after the clsact hook)."""


PACKET_FIELDS: Final = (
    pa.field("ifindex", pa.uint32()),
    pa.field("rx_queue", pa.uint32()),
    pa.field("pkt_len", pa.uint32()),
    pa.field("cap_len", pa.uint32()),
    pa.field("ethertype", pa.uint16()),
    pa.field("vlan_id", pa.uint16()),
    pa.field("src_addr", pa.string()),
    pa.field("dst_addr", pa.string()),
    pa.field("ip_proto", pa.uint8()),
    pa.field("src_port", pa.uint16()),
    pa.field("dst_port", pa.uint16()),
)
"""Decoded columns of a packet capture (header fields null where not captured)."""


def decode_packets(events: np.ndarray, rx_queue: RxQueue = RxQueue.AS_IS) -> dict[str, pa.Array]:
    """Columns for packet events: Ethernet (with up to two VLAN tags, the outer one's id),
    IPv4/IPv6, ports.

    A header counts only if its bytes were captured (``cap_len``); IPv6
    extension headers are not followed (``ip_proto`` is the first next header).
    """
    head = np.ascontiguousarray(events["packet"])
    avail = np.minimum(events["cap_len"].astype(np.int64), head.shape[1])
    packet = PacketBytes(head)
    u8, be16 = packet.u8, packet.be16
    has_eth = avail >= ETH_HLEN
    ethertype, l3 = network_header(packet, avail)
    vlan_id, tagged = outer_vlan_id(packet, avail)
    ipv4 = has_eth & (ethertype == ETH_P_IP) & (avail >= l3 + 20) & (u8(l3) >> 4 == 4)
    ipv6 = has_eth & (ethertype == ETH_P_IPV6) & (avail >= l3 + 40)
    proto = np.where(ipv4, u8(l3 + 9), np.where(ipv6, u8(l3 + 6), 0))
    ihl = u8(l3) & 0xF
    l4 = np.where(ipv4, l3 + ihl * 4, l3 + 40)
    first_fragment = ~ipv4 | ((be16(l3 + 6) & IP_OFFSET_MASK) == 0)
    sane_header = ~ipv4 | (ihl >= 5)  # below 5 words, "ports" would be the IP header's
    ported = (ipv4 | ipv6) & np.isin(proto, _PORTED) & first_fragment & sane_header
    ported &= avail >= l4 + 4
    return {
        "ifindex": pa.array(events["ifindex"].astype(np.uint32)),
        "rx_queue": _rx_queue(events["queue"].astype(np.uint32), rx_queue),
        "pkt_len": pa.array(events["pkt_len"].astype(np.uint32)),
        "cap_len": pa.array(events["cap_len"].astype(np.uint32)),
        "ethertype": pa.array(ethertype.astype(np.uint16), mask=~has_eth),
        "vlan_id": pa.array(vlan_id.astype(np.uint16), mask=~tagged),
        "src_addr": _addresses(head, l3, ipv4, ipv6, 12, 8),
        "dst_addr": _addresses(head, l3, ipv4, ipv6, 16, 24),
        "ip_proto": pa.array(proto.astype(np.uint8), mask=~(ipv4 | ipv6)),
        "src_port": pa.array(be16(l4).astype(np.uint16), mask=~ported),
        "dst_port": pa.array(be16(l4 + 2).astype(np.uint16), mask=~ported),
    }


def _rx_queue(queue: np.ndarray, meaning: RxQueue) -> pa.Array:
    if meaning is RxQueue.AS_IS:
        return pa.array(queue)
    if meaning is RxQueue.RECORDED_PLUS_ONE:
        return pa.array(queue - 1, mask=queue == 0)
    return pa.nulls(len(queue), pa.uint32())


def _addresses(
    head: np.ndarray, l3: np.ndarray, ipv4: np.ndarray, ipv6: np.ndarray, at4: int, at6: int
) -> pa.Array:
    """IPv4/IPv6 addresses at header offsets ``at4``/``at6`` as text (null for non-IP)."""
    out = np.full(len(head), None, dtype=object)
    for is_family, at, width, kind in (
        (ipv4, at4, 4, ipaddress.IPv4Address),
        (ipv6, at6, 16, ipaddress.IPv6Address),
    ):
        rows = np.flatnonzero(is_family)
        if len(rows) == 0:
            continue
        raw = head[rows[:, None], l3[rows, None] + at + np.arange(width)]
        unique, inverse = np.unique(raw, axis=0, return_inverse=True)
        texts = np.array([str(kind(bytes(u))) for u in unique], dtype=object)
        out[rows] = texts[inverse.reshape(-1)]
    return pa.array(out, pa.string())
