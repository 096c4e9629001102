"""A pcapng reader written from the specification, to check the writer independently,
and the view of a real pcap library (dpkt) on the same bytes."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import dpkt


@dataclass
class DpktView:
    """What dpkt's pcapng reader makes of a file."""

    snaplen: int
    linktype: int
    packets: list[tuple[float, bytes]]


def read_with_dpkt(data: bytes) -> DpktView:
    """Open ``data`` with dpkt (it refuses a file without an Interface Description Block)."""
    reader = dpkt.pcapng.Reader(io.BytesIO(data))
    return DpktView(reader.snaplen, reader.datalink(), [(ts, bytes(b)) for ts, b in reader])


def parse_pcapng(data: bytes) -> dict:
    """Sections, interfaces and packets of a little-endian pcapng file."""
    out: dict = {"interfaces": [], "packets": [], "shb_options": {}}
    pos = 0
    while pos < len(data):
        block_type, total = struct.unpack_from("<II", data, pos)
        assert total % 4 == 0 and total >= 12
        assert struct.unpack_from("<I", data, pos + total - 4)[0] == total
        body = data[pos + 8 : pos + total - 4]
        if block_type == 0x0A0D0D0A:
            magic, major, minor, length = struct.unpack_from("<IHHq", body)
            assert (magic, major, minor, length) == (0x1A2B3C4D, 1, 0, -1)
            out["shb_options"] = options(body[16:])
        elif block_type == 1:
            linktype, _, snaplen = struct.unpack_from("<HHI", body)
            out["interfaces"].append(
                {"linktype": linktype, "snaplen": snaplen, **options(body[8:])}
            )
        elif block_type == 6:
            iface, high, low, cap, orig = struct.unpack_from("<IIIII", body)
            assert len(body) == 20 + cap + (-cap % 4)
            out["packets"].append((iface, high << 32 | low, orig, body[20 : 20 + cap]))
        else:
            raise AssertionError(f"unexpected block type {block_type:#x}")
        pos += total
    return out


def options(raw: bytes) -> dict[int, bytes]:
    found, pos = {}, 0
    while pos < len(raw):
        code, length = struct.unpack_from("<HH", raw, pos)
        if code == 0:
            break
        found[code] = raw[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)
    return found
