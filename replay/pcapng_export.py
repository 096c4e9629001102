"""The packets of an xdp:/tc: capture as pcapng, streamed in either replay order.

The blocks themselves are written by :mod:`ebcap.format.pcapng`'s
:class:`~ebcap.format.pcapng.PcapngWriter`. An interface's description
block (written before its first packet) carries the snapshot length, which
depends on every packet, so a first pass reads only the length columns;
the second streams the packets in arrival order or in replay's exact time
order (ts_ns, cpu, seq), one batch at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO, Final, Protocol, cast

import numpy as np
import pyarrow as pa

from ebcap.errors import BadFileError, UsageError
from ebcap.format import schema as fs
from ebcap.format.pcapng import PACKET_COLUMNS, PcapngWriter, packet_offset
from ebcap.format.reader import CaptureReader
from ebcap.replay.order import OrderReport, arrival_order, time_order
from ebcap.replay.scan import CORE_KEYS, is_sample, scan_columns

PACKET_SOURCES: Final = ("xdp", "tc")
"""Source kinds whose spec names the interface: ``xdp:eth0``, ``tc:eth0:ingress``."""


class ByteSink(Protocol):
    """Where the blocks go (a file, stdout, an :class:`~ebcap.replay.sink.Output`)."""

    def write(self, data: bytes | bytearray | memoryview) -> object: ...


def export_pcapng(
    reader: CaptureReader,
    out: ByteSink,
    *,
    in_time_order: bool = False,
    report: OrderReport | None = None,
) -> int:
    """Write the capture's packets to ``out``; return how many (loss rows are skipped)."""
    metadata = reader.metadata
    offset = packet_offset(metadata)
    missing = [name for name in PACKET_COLUMNS if name not in reader.schema.names]
    if missing:
        raise UsageError(f"not a packet capture: no column {', '.join(missing)}")
    snaplen, interfaces = _scan(reader)
    writer = PcapngWriter(
        cast(BinaryIO, out),  # the writer only calls write()
        snaplen=snaplen,
        realtime_offset_ns=int(metadata.get(fs.META_REALTIME_OFFSET, 0)),
        os_name=f"Linux {metadata[fs.META_KERNEL]}" if fs.META_KERNEL in metadata else "",
        interface_names=interface_names(metadata, interfaces),
    )
    report = report if report is not None else OrderReport()
    columns = [name for name in PACKET_COLUMNS if name not in CORE_KEYS]
    stream = (
        time_order(reader, columns=columns, report=report)
        if in_time_order
        else arrival_order(reader, columns, report)
    )
    try:
        for batch in stream:
            _write_batch(writer, batch.rows.filter(pa.array(is_sample(batch.rows))), offset)
    finally:
        stream.close()
    return writer.packets


def _scan(reader: CaptureReader) -> tuple[int, set[int]]:
    """(snapshot length, interfaces seen): the largest length of a cut-short packet (0 when
    none was cut: unlimited, as pcapng says), and the ifindexes."""
    snaplen = 0
    interfaces: set[int] = set()
    for part in scan_columns(reader, ("kind", "ifindex", "pkt_len", "cap_len")):
        part = part.filter(pa.array(is_sample(part)))
        cap = part.column("cap_len").to_numpy(zero_copy_only=False)
        wire = part.column("pkt_len").to_numpy(zero_copy_only=False)
        cut = cap[cap < wire]
        if len(cut):
            snaplen = max(snaplen, int(cut.max()))
        interfaces.update(np.unique(part.column("ifindex").to_numpy(zero_copy_only=False)).tolist())
    return snaplen, interfaces


def interface_names(metadata: Mapping[str, Any], interfaces: set[int]) -> dict[int, str]:
    """``{ifindex: name}`` when the source spec names the one interface seen."""
    kind, _, rest = str(metadata.get(fs.META_SOURCE, "")).partition(":")
    name = rest.split(":")[0]
    if kind in PACKET_SOURCES and name and len(interfaces) == 1:
        return {next(iter(interfaces)): name}
    return {}


def _write_batch(writer: PcapngWriter, rows: pa.RecordBatch, offset: int) -> None:
    cap = rows.column("cap_len").to_numpy(zero_copy_only=False)
    wire = rows.column("pkt_len").to_numpy(zero_copy_only=False)
    ts = rows.column("ts_ns").to_numpy(zero_copy_only=False)
    ifindex = rows.column("ifindex").to_numpy(zero_copy_only=False)
    seq = rows.column("seq").to_numpy(zero_copy_only=False)
    for i, payload in enumerate(rows.column("data").to_pylist()):
        length = int(cap[i])
        packet = payload[offset : offset + length]
        if len(packet) != length:
            raise BadFileError(
                f"row with seq {int(seq[i])}: payload holds {len(packet)} of {length} "
                "captured bytes"
            )
        writer.write_packet(int(ifindex[i]), int(ts[i]), packet, int(wire[i]))
