"""A packet capture built the way the recorder builds one, for replay and export tests.

Each event is the XDP/tc program's layout (header, the packet's first
bytes, the rest of the snapshot), decoded by the recorder's own packet
decoder, with the source layout in the metadata. Each frame comes with the
one-line summary replay should print for it, written out by hand.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from synthetic import Synthetic, metadata, write_table

from ebcap.bpf.programs.packet import PACKET_EVENT, PACKET_HEAD_BYTES
from ebcap.capture.layout import PayloadLayout
from ebcap.capture.packet_decode import PACKET_FIELDS, decode_packets
from ebcap.format import schema as fs

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A, IP_B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])
IP6_A = bytes.fromhex("20010db8000000000000000000000001")
IP6_B = bytes.fromhex("20010db8000000000000000000000002")


def ethernet(ethertype: int, payload: bytes, *, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return MAC_B + MAC_A + tag + struct.pack("!H", ethertype) + payload


def ipv4(proto: int, payload: bytes, *, ident: int = 1, flags_offset: int = 0x4000) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags_offset, 64, proto, 0, IP_A, IP_B
    )
    return header + payload


def ipv6(next_header: int, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, IP6_A, IP6_B) + payload
    )


def tcp(sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + data


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def arp(operation: int, sender_ip: bytes, target_ip: bytes, target_mac: bytes) -> bytes:
    return (
        struct.pack("!HHBBH", 1, 0x0800, 6, 4, operation)
        + MAC_A
        + sender_ip
        + target_mac
        + target_ip
    )


# (frame, bytes on the wire, snapshot length, the summary expected)
FRAMES = [
    (
        ethernet(0x0800, ipv4(6, tcp(443, 51234, 0x12))),
        54,
        256,
        "IPv4 198.51.100.1.443 > 198.51.100.2.51234: TCP [S.], frame 54",
    ),
    (
        ethernet(0x0800, ipv4(6, tcp(51234, 443, 0x18, b"x" * 44))),
        98,
        256,
        "IPv4 198.51.100.1.51234 > 198.51.100.2.443: TCP [P.], frame 98",
    ),
    (
        ethernet(0x0800, ipv4(17, udp(5353, 53, b"q" * 1472), ident=4660, flags_offset=0x2000)),
        1514,
        128,
        "IPv4 198.51.100.1.5353 > 198.51.100.2.53: UDP, frame 1514 (captured 128), "
        "fragment id 4660 at 0 (more follow)",
    ),
    (
        ethernet(0x0800, ipv4(17, b"q" * 528, ident=4660, flags_offset=185)),
        562,
        1024,
        "IPv4 198.51.100.1 > 198.51.100.2: UDP, frame 562, fragment id 4660 at 1480 (last)",
    ),
    (
        ethernet(0x0800, ipv4(1, struct.pack("!BBHHH", 0, 0, 0, 7, 1) + b"p" * 56)),
        98,
        256,
        "IPv4 198.51.100.1 > 198.51.100.2: ICMP echo reply, frame 98",
    ),
    (
        ethernet(0x86DD, ipv6(58, struct.pack("!BBHHH", 128, 0, 0, 7, 1) + b"p" * 56)),
        118,
        256,
        "IPv6 2001:db8::1 > 2001:db8::2: ICMPv6 echo request, frame 118",
    ),
    (
        ethernet(0x86DD, ipv6(17, udp(546, 547, b"d" * 30))),
        92,
        256,
        "IPv6 2001:db8::1.546 > 2001:db8::2.547: UDP, frame 92",
    ),
    (
        ethernet(0x0800, ipv4(17, udp(40000, 53, b"q" * 20)), vlan=100),
        66,
        256,
        "IPv4 198.51.100.1.40000 > 198.51.100.2.53: UDP, frame 66",
    ),
    (
        ethernet(0x0806, arp(1, IP_A, IP_B, bytes(6))),
        42,
        256,
        "ARP, Request who-has 198.51.100.2 tell 198.51.100.1, frame 42",
    ),
    (
        ethernet(0x0806, arp(2, IP_B, IP_A, MAC_A)),
        42,
        256,
        "ARP, Reply 198.51.100.2 is-at 02:00:00:00:00:01, frame 42",
    ),
    (
        ethernet(0x86DD, ipv6(6, tcp(443, 51234, 0x12))),  # flags at byte 67 of the frame
        74,
        256,
        "IPv6 2001:db8::1.443 > 2001:db8::2.51234: TCP [S.], frame 74",
    ),
    (
        ethernet(0x0800, bytes([0x42]) + ipv4(6, tcp(80, 81, 0x02))[1:]),  # IHL 2: bogus
        54,
        256,
        "IPv4 198.51.100.1 > 198.51.100.2: TCP, frame 54",
    ),
    (ethernet(0x88CC, b"\x02\x07" + b"l" * 104), 120, 64, "LLDP, frame 120 (captured 64)"),
    (ethernet(0x88B5, b"e" * 46), 60, 256, "ethertype 0x88b5, frame 60"),
    (ethernet(0x002E, b"\xaa\xaa\x03" + b"s" * 43), 60, 256, "802.3 LLC, frame 60"),
]


LOST_AT = 4
"""Row of the loss record among the packets."""


def packet_capture(path: Path) -> pa.Table:
    """The frames above as an xdp: capture on ifindex 3, one loss record among them."""
    events = np.zeros(len(FRAMES), dtype=PACKET_EVENT)
    payloads = []
    for i, (frame, wire, snaplen, _) in enumerate(FRAMES):
        frame = frame.ljust(wire, b"\0")
        cap = min(wire, snaplen)
        events[i]["ts_ns"] = 1_000_000_000 + 1000 * i
        events[i]["ifindex"], events[i]["pkt_len"], events[i]["cap_len"] = 3, wire, cap
        head = frame[:cap][:PACKET_HEAD_BYTES]
        events[i]["packet"][: len(head)] = np.frombuffer(head, np.uint8)
        payloads.append(events[i].tobytes() + frame[PACKET_HEAD_BYTES:cap])
    columns = decode_packets(events)
    n = len(FRAMES)
    rows = list(range(n))
    lost_at = LOST_AT
    rows.insert(lost_at, -1)
    kind = [1 if r < 0 else 0 for r in rows]
    take = pa.array([max(r, 0) for r in rows])
    lost = pa.array([r < 0 for r in rows])
    decoded = {
        name: pc.if_else(lost, pa.scalar(None, arr.type), arr.take(take))
        for name, arr in columns.items()
    }
    layout = PayloadLayout(PACKET_EVENT, "ts_ns", "cpu").to_json()
    spec = Synthetic(extra_meta={fs.META_SOURCE: "xdp:veth0", fs.META_SOURCE_LAYOUT: layout})
    schema = fs.make_schema(list(PACKET_FIELDS), metadata=metadata(spec))
    table = pa.Table.from_arrays(
        [
            pa.array(range(len(rows)), pa.uint64()),
            pa.array([0] * len(rows), pa.uint16()),
            pa.array(
                [1_000_000_000 + (1000 * r if r >= 0 else 1000 * lost_at - 500) for r in rows],
                pa.uint64(),
            ),
            pa.DictionaryArray.from_arrays(pa.array(kind, pa.int8()), pa.array(list(fs.KINDS))),
            pa.array([7 if r < 0 else 0 for r in rows], pa.uint64()),
            pa.array([0] * len(rows), pa.uint32()),
            pa.array([b"" if r < 0 else payloads[r] for r in rows], pa.binary()),
            *(decoded[f.name] for f in PACKET_FIELDS),
        ],
        schema=schema,
    )
    write_table(path, table, batch_rows=5)
    return table


def packets_with_nulls(path: Path) -> tuple[pa.Table, list[int]]:
    """The packet capture with null cap_len, pkt_len or ifindex on three samples (as
    another tool may leave them); returns the table and those rows."""
    table = packet_capture(path)
    holes = {"cap_len": 1, "pkt_len": 2, "ifindex": 6}
    for name, row in holes.items():
        index = table.schema.get_field_index(name)
        hole = pa.array([i == row for i in range(table.num_rows)])
        column = table.column(name).combine_chunks()
        column = pc.if_else(hole, pa.scalar(None, column.type), column)
        table = table.set_column(index, table.schema.field(index), column)
    write_table(path, table, batch_rows=5)
    return table, sorted(holes.values())
