"""Packet header constants and the header walk shared by decoding and summaries.

The recorder decodes packet columns from each event's first bytes
(:mod:`ebcap.capture.packet_decode`); replay summarises packets from the same
bytes kept in ``data`` (:mod:`ebcap.replay.packets`). Both read big-endian
fields at per-row offsets and find the network header past up to two VLAN
tags the same way, vectorised over a batch.
"""

from __future__ import annotations

from typing import Final

import numpy as np

ETH_HLEN: Final = 14
ETH_ALEN: Final = 6
ETH_P_802_3_MIN: Final = 0x0600
"""Below this the Ethernet type field is an 802.3 length."""
ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
ETH_P_8021Q: Final = 0x8100
ETH_P_8021AD: Final = 0x88A8
VLAN_TYPES: Final = (ETH_P_8021Q, ETH_P_8021AD)
VLAN_HLEN: Final = 4
VLAN_VID_MASK: Final = 0x0FFF
"""The VLAN id bits of a tag's TCI (the rest: priority and DEI)."""
MAX_VLAN_TAGS: Final = 2
IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
IPPROTO_SCTP: Final = 132
IPPROTO_UDPLITE: Final = 136
IP_OFFSET_MASK: Final = 0x1FFF
"""IPv4 fragment offset bits: only the first fragment carries the ports."""


class PacketBytes:
    """Big-endian reads at one offset per row into packets' first bytes (``head``: one row
    of uint8 per packet); an offset past the copied bytes reads the last one."""

    def __init__(self, head: np.ndarray) -> None:
        self.head = head
        self._rows = np.arange(len(head))
        self._last = head.shape[1] - 1

    def u8(self, at: np.ndarray) -> np.ndarray:
        return self.head[self._rows, np.minimum(at, self._last)].astype(np.int64)

    def be16(self, at: np.ndarray) -> np.ndarray:
        return (self.u8(at) << 8) | self.u8(at + 1)


def outer_vlan_id(packet: PacketBytes, avail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(VLAN id, whether there is one) of each packet's outer 802.1Q/802.1ad tag, where
    the tag was captured (``avail``: bytes captured per packet)."""
    tagged = np.isin(packet.be16(np.full(len(packet.head), ETH_HLEN - 2)), VLAN_TYPES)
    tagged &= avail >= ETH_HLEN + VLAN_HLEN
    return packet.be16(np.full(len(packet.head), ETH_HLEN)) & VLAN_VID_MASK, tagged


def network_header(packet: PacketBytes, avail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ethertype, offset of the network header) of each packet, past up to two VLAN tags
    whose bytes were captured (``avail``: bytes captured per packet)."""
    l3 = np.full(len(packet.head), ETH_HLEN, dtype=np.int64)
    ethertype = packet.be16(l3 - 2)
    for _ in range(MAX_VLAN_TAGS):
        tagged = np.isin(ethertype, VLAN_TYPES) & (avail >= l3 + VLAN_HLEN)
        ethertype = np.where(tagged, packet.be16(l3 + 2), ethertype)
        l3 = np.where(tagged, l3 + VLAN_HLEN, l3)
    return ethertype, l3
