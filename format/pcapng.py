"""Packets of an ebcap capture as pcapng, for Wireshark, tcpdump and friends.

One section: a Section Header Block, one Interface Description Block per
ifindex (link type Ethernet, the snaplen, ``if_tsresol`` = 9 so timestamps
keep their nanoseconds), then one Enhanced Packet Block per packet. The IDB
of the interface the capture's source names is written up front, so a
capture without packets is still a file readers open. The snaplen is the
``--snaplen`` of the capture (``snaplen`` in ``ebcap.source_layout``). Packet
timestamps are ``ts_ns`` (CLOCK_MONOTONIC) plus the capture's
``ebcap.realtime_offset_ns``: wall-clock time, as pcapng wants. A sample row
without ``cap_len``, ``pkt_len`` or ``ifindex`` (nulls another tool left)
has no block to go in: it is left out and counted (:attr:`PcapngWriter.incomplete`).

Block layouts follow draft-ietf-opsawg-pcapng; every block is written in
this machine's byte order (the byte-order magic tells readers which), here
little-endian. Only the writing is here; which bytes of an ebcap row are
the packet is named by the ``packet`` field of the source layout
(``ebcap.source_layout``), so this module needs nothing from the kernel side.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, Final

import numpy as np
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
    """Writes one pcapng section to a binary stream; interfaces appear on first use.

    With ``first_interface`` (a name, or "" for none) the first IDB is written
    at once and stands for the first ifindex written: a capture of one
    interface that saw no packet still gets its IDB.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        snaplen: int = 0,
        realtime_offset_ns: int = 0,
        application: str = "ebcap",
        os_name: str = "",
        interface_names: Mapping[int, str] | None = None,
        first_interface: str | None = None,
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
        self.incomplete = 0
        """Sample rows left out: null ``cap_len``, ``pkt_len`` or ``ifindex``."""
        options = [(OPT_SHB_USERAPPL, application.encode())]
        if os_name:
            options.append((OPT_SHB_OS, os_name.encode()))
        body = _SHB_BODY.pack(BYTE_ORDER_MAGIC, *VERSION, SECTION_LENGTH_UNKNOWN)
        out.write(_block(BLOCK_SHB, body + _options(options)))
        self._written = 0
        self._unbound: int | None = None
        if first_interface is not None:
            self._unbound = self._write_idb(first_interface)

    def _write_idb(self, name: str) -> int:
        options = [(OPT_IF_TSRESOL, bytes([TSRESOL_NS]))]
        if name:
            options.insert(0, (OPT_IF_NAME, name.encode()))
        body = _IDB_BODY.pack(LINKTYPE_ETHERNET, 0, self._snaplen) + _options(options)
        self._out.write(_block(BLOCK_IDB, body))
        self._written += 1
        return self._written - 1

    def interface_id(self, ifindex: int) -> int:
        """The pcapng interface id of ``ifindex``, writing its IDB the first time."""
        if ifindex not in self._interfaces:
            if self._unbound is not None:
                self._interfaces[ifindex], self._unbound = self._unbound, None
            else:
                self._interfaces[ifindex] = self._write_idb(self._names.get(ifindex, ""))
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


def capture_snaplen(metadata: Mapping[str, Any]) -> int | None:
    """The ``--snaplen`` a packet capture was recorded with; None if its metadata lacks it."""
    layout = metadata.get(s.META_SOURCE_LAYOUT)
    snaplen = layout.get(SNAPLEN_KEY) if isinstance(layout, Mapping) else None
    return int(snaplen) if snaplen is not None else None


def capture_writer(
    metadata: Mapping[str, Any],
    out: BinaryIO,
    *,
    snaplen: int | None = None,
    interface_names: Mapping[int, str] | None = None,
) -> PcapngWriter:
    """A writer for the packets of the capture ``metadata`` describes: the SHB and the
    IDB of the source's interface are written at once, so rows can follow in batches
    (:func:`write_packet_rows`). ``snaplen`` defaults to the capture's (0 if unknown)."""
    packet_offset(metadata)  # refuse a capture without packets before writing anything
    if snaplen is None:
        snaplen = capture_snaplen(metadata) or 0
    return PcapngWriter(
        out,
        snaplen=snaplen,
        realtime_offset_ns=int(metadata.get(s.META_REALTIME_OFFSET, 0)),
        os_name=f"Linux {metadata[s.META_KERNEL]}" if s.META_KERNEL in metadata else "",
        interface_names=interface_names,
        first_interface=_source_interface(metadata),
    )


def require_packet_columns(names: Sequence[str]) -> None:
    """UsageError unless ``names`` hold every column a packet is written from."""
    missing = [c for c in PACKET_COLUMNS if c not in names]
    if missing:
        raise UsageError(f"not a packet capture: no column {', '.join(missing)}")


def largest_cut(cap_len: np.ndarray, pkt_len: np.ndarray) -> int:
    """The largest captured length of a packet cut short (0, unlimited, if none was): the
    snapshot length of a capture whose metadata does not hold its ``--snaplen``."""
    cut = cap_len[cap_len < pkt_len]
    return int(cut.max()) if len(cut) else 0


def _samples(rows: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """The sample rows, without the ``kind`` column: taking them again costs nothing."""
    if "kind" not in rows.column_names:
        return rows
    samples = rows.filter(pc.equal(rows["kind"].cast(pa.string()), s.KIND_SAMPLE))
    return samples.drop_columns(["kind"])


def write_packet_rows(writer: PcapngWriter, rows: pa.Table | pa.RecordBatch, offset: int) -> int:
    """Write the sample rows of a capture's table or batch; return how many.

    ``offset`` is :func:`packet_offset` of the capture; ``lost`` rows are skipped,
    and so are samples without a length or an interface (counted in
    ``writer.incomplete``).
    """
    require_packet_columns(rows.column_names)
    rows = _samples(rows)
    known = [pc.is_valid(rows[name]) for name in ("cap_len", "pkt_len", "ifindex")]
    complete = pc.and_(pc.and_(known[0], known[1]), known[2])
    kept = pc.sum(complete).as_py() or 0  # None: no rows
    if kept != rows.num_rows:
        writer.incomplete += rows.num_rows - kept
        rows = rows.filter(complete)
    cap = rows["cap_len"].to_numpy(zero_copy_only=False)
    wire = rows["pkt_len"].to_numpy(zero_copy_only=False)
    ts = rows["ts_ns"].to_numpy(zero_copy_only=False)
    ifindex = rows["ifindex"].to_numpy(zero_copy_only=False)
    for i, payload in enumerate(rows["data"].to_pylist()):
        length = int(cap[i])
        packet = payload[offset : offset + length]
        if len(packet) != length:
            raise BadFileError(f"row {i}: payload holds {len(packet)} of {length} captured bytes")
        writer.write_packet(int(ifindex[i]), int(ts[i]), packet, int(wire[i]))
    return rows.num_rows


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
    (``lost`` rows) are skipped. Without ``snaplen``, the capture's
    ``--snaplen`` is used; for a capture whose metadata lacks it, the largest
    ``cap_len`` of a truncated packet (0, unlimited, if none was truncated).
    The source's interface is named after the source (``xdp:eth0`` -> ``eth0``).
    """
    offset = packet_offset(metadata)
    table = _samples(table)
    if snaplen is None and capture_snaplen(metadata) is None and "cap_len" in table.column_names:
        snaplen = largest_cut(
            table["cap_len"].to_numpy(zero_copy_only=False),
            table["pkt_len"].to_numpy(zero_copy_only=False),
        )
    writer = capture_writer(metadata, out, snaplen=snaplen, interface_names=interface_names)
    write_packet_rows(writer, table, offset)
    return writer.packets


def _source_interface(metadata: Mapping[str, Any]) -> str:
    """The interface an ``xdp:``/``tc:`` source spec names ("" for other sources)."""
    kind, _, rest = str(metadata.get(s.META_SOURCE, "")).partition(":")
    return rest.split(":")[0] if kind in ("xdp", "tc") else ""
