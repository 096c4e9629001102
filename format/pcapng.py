"""Packets of an ebcap capture as pcapng, for Wireshark, tcpdump and friends.

One section: a Section Header Block, one Interface Description Block per
ifindex (link type Ethernet, the snaplen, ``if_tsresol`` = 9 so timestamps
keep their nanoseconds), then one Enhanced Packet Block per packet. Packet
timestamps are ``ts_ns`` (CLOCK_MONOTONIC) plus the capture's
``ebcap.realtime_offset_ns``: wall-clock time, as pcapng wants.

Block layouts follow draft-ietf-opsawg-pcapng; every block is written in
this machine's byte order (the byte-order magic tells readers which), here
little-endian. Only the writing is here; which bytes of an ebcap row are
the packet is named by the ``packet`` field of the source layout
(``ebcap.source_layout``), so this module needs nothing from the kernel side.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.compute as pc

from ebcap.errors import BadFileError, UsageError
from ebcap.format import schema as s

BLOCK_SHB: Final = 0x0A0D0D0A
BLOCK_IDB: Final = 0x00000001
BLOCK_EPB: Final = 0x00000006
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
VERSION: Final = (1, 0)
SECTION_LENGTH_UNKNOWN: Final = -1

OPT_ENDOFOPT: Final = 0
OPT_SHB_HARDWARE: Final = 2
OPT_SHB_OS: Final = 3
OPT_SHB_USERAPPL: Final = 4
OPT_IF_NAME: Final = 2
OPT_IF_TSRESOL: Final = 9
TSRESOL_NS: Final = 9
"""``if_tsresol`` value: 10^-9 s per timestamp unit."""

LINKTYPE_ETHERNET: Final = 1

_BLOCK_HEAD: Final = struct.Struct("<II")  # block type, block total length
_BLOCK_TAIL: Final = struct.Struct("<I")  # block total length again
_SHB_BODY: Final = struct.Struct("<IHHq")  # magic, major, minor, section length
_IDB_BODY: Final = struct.Struct("<HHI")  # link type, reserved, snaplen
_EPB_BODY: Final = struct.Struct("<IIIII")  # interface id, ts high, ts low, captured, original
_OPTION: Final = struct.Struct("<HH")  # code, length

PACKET_FIELD: Final = "packet"
"""Name of the layout field where the packet bytes of a row start."""
SNAPLEN_KEY: Final = "snaplen"
"""Key of the capture's snaplen in the source layout metadata."""
PACKET_COLUMNS: Final = ("ts_ns", "ifindex", "pkt_len", "cap_len", "data")


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    out = b"".join(_OPTION.pack(code, len(value)) + _pad4(value) for code, value in options)
    return out + _OPTION.pack(OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = _BLOCK_HEAD.size + len(body) + _BLOCK_TAIL.size
    return _BLOCK_HEAD.pack(block_type, total) + body + _BLOCK_TAIL.pack(total)


class PcapngWriter:
    """Writes one pcapng section to a binary stream; interfaces appear on first use."""

    def __init__(
        self,
        out: BinaryIO,
        *,
        snaplen: int = 0,
        realtime_offset_ns: int = 0,
        application: str = "ebcap",
        os_name: str = "",
        interface_names: Mapping[int, str] | None = None,
    ) -> None:
        """``snaplen`` 0 means unknown/unlimited, as pcapng defines it."""
        if not 0 <= snaplen < 1 << 32:
            raise UsageError(f"snaplen {snaplen} does not fit pcapng's 32 bits")
        self._out = out
        self._snaplen = snaplen
        self._offset = realtime_offset_ns
        self._names = dict(interface_names or {})
        self._interfaces: dict[int, int] = {}
        self.packets = 0
        options = [(OPT_SHB_USERAPPL, application.encode())]
        if os_name:
            options.append((OPT_SHB_OS, os_name.encode()))
        body = _SHB_BODY.pack(BYTE_ORDER_MAGIC, *VERSION, SECTION_LENGTH_UNKNOWN)
        out.write(_block(BLOCK_SHB, body + _options(options)))

    def interface_id(self, ifindex: int) -> int:
        """The pcapng interface id of ``ifindex``, writing its IDB the first time."""
        if ifindex not in self._interfaces:
            options = [(OPT_IF_TSRESOL, bytes([TSRESOL_NS]))]
            if ifindex in self._names:
                options.insert(0, (OPT_IF_NAME, self._names[ifindex].encode()))
            body = _IDB_BODY.pack(LINKTYPE_ETHERNET, 0, self._snaplen) + _options(options)
            self._out.write(_block(BLOCK_IDB, body))
            self._interfaces[ifindex] = len(self._interfaces)
        return self._interfaces[ifindex]

    def write_packet(self, ifindex: int, ts_ns: int, data: bytes, orig_len: int) -> None:
        """One Enhanced Packet Block: ``data`` as captured, ``orig_len`` as on the wire."""
        if orig_len < len(data):
            raise UsageError(f"packet of {orig_len} bytes cannot carry {len(data)} captured bytes")
        iface = self.interface_id(ifindex)
        wall = ts_ns + self._offset
        if not 0 <= wall < 1 << 64:
            raise UsageError(f"timestamp {ts_ns} + offset {self._offset} is not a pcapng time")
        body = _EPB_BODY.pack(iface, wall >> 32, wall & 0xFFFF_FFFF, len(data), orig_len)
        self._out.write(_block(BLOCK_EPB, body + _pad4(data)))
        self.packets += 1


def packet_offset(metadata: Mapping[str, Any]) -> int:
    """Where the packet starts in a row's ``data``, from the source layout metadata."""
    layout = metadata.get(s.META_SOURCE_LAYOUT)
    fields = layout.get("fields", []) if isinstance(layout, Mapping) else []
    for field in fields:
        if isinstance(field, Mapping) and field.get("name") == PACKET_FIELD:
            return int(field["offset"])
    source = metadata.get(s.META_SOURCE, "?")
    raise UsageError(
        f"source {source!r} did not record packets: pcapng needs an xdp: or tc: capture"
    )


def write_pcapng(
    table: pa.Table,
    metadata: Mapping[str, Any],
    out: BinaryIO,
    *,
    snaplen: int | None = None,
    interface_names: Mapping[int, str] | None = None,
) -> int:
    """Write the packet rows of a capture ``table`` to ``out``; return how many.

    ``metadata`` is the decoded schema metadata. Rows that are not samples
    (``lost`` rows) are skipped. Without ``snaplen``, the largest ``cap_len``
    of a truncated packet is used (0, unlimited, if none was truncated).
    Without ``interface_names``, a capture of one interface names it after
    the source (``xdp:eth0`` -> ``eth0``).
    """
    offset = packet_offset(metadata)
    missing = [c for c in PACKET_COLUMNS if c not in table.column_names]
    if missing:
        raise UsageError(f"not a packet capture: no column {', '.join(missing)}")
    if "kind" in table.column_names:
        table = table.filter(pc.equal(table["kind"].cast(pa.string()), s.KIND_SAMPLE))
    cap = table["cap_len"].to_numpy(zero_copy_only=False)
    wire = table["pkt_len"].to_numpy(zero_copy_only=False)
    if snaplen is None:
        truncated = cap[cap < wire]
        snaplen = int(truncated.max()) if len(truncated) else 0
    ts = table["ts_ns"].to_numpy(zero_copy_only=False)
    ifindex = table["ifindex"].to_numpy(zero_copy_only=False)
    if interface_names is None:
        interface_names = _names_from_source(metadata, {int(i) for i in ifindex})
    writer = PcapngWriter(
        out,
        snaplen=snaplen,
        realtime_offset_ns=int(metadata.get(s.META_REALTIME_OFFSET, 0)),
        os_name=f"Linux {metadata[s.META_KERNEL]}" if s.META_KERNEL in metadata else "",
        interface_names=interface_names,
    )
    for i, payload in enumerate(table["data"].to_pylist()):
        length = int(cap[i])
        packet = payload[offset : offset + length]
        if len(packet) != length:
            raise BadFileError(f"row {i}: payload holds {len(packet)} of {length} captured bytes")
        writer.write_packet(int(ifindex[i]), int(ts[i]), packet, int(wire[i]))
    return writer.packets


def _names_from_source(metadata: Mapping[str, Any], ifindexes: set[int]) -> dict[int, str]:
    """``{ifindex: name}`` when the source spec names the one interface seen."""
    kind, _, rest = str(metadata.get(s.META_SOURCE, "")).partition(":")
    name = rest.split(":")[0]
    if kind in ("xdp", "tc") and name and len(ifindexes) == 1:
        return {next(iter(ifindexes)): name}
    return {}
