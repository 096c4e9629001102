"""The packets of an xdp:/tc: capture as pcapng, streamed in either replay order.

The blocks are written by :mod:`ebcap.format.pcapng`: its capture writer
puts the section header and the source interface's description block
(with the capture's ``--snaplen``) first, so a capture without a packet
still makes a valid file, and packets follow one batch at a time, in arrival
order or in replay's exact time order (ts_ns, cpu, seq). Captures written
before the snapshot length was kept in the metadata get the largest length
of a cut-short packet, found by a first pass over the length columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

import pyarrow as pa

from ebcap.format.counts import sample_mask
from ebcap.format.pcapng import (
    PACKET_COLUMNS,
    capture_snaplen,
    capture_writer,
    largest_cut,
    packet_offset,
    require_packet_columns,
    write_packet_rows,
)
from ebcap.format.reader import CaptureReader
from ebcap.format.schema import META_REALTIME_OFFSET
from ebcap.replay.order import OrderReport, in_order
from ebcap.replay.scan import CORE_KEYS, scan_columns


class ByteSink(Protocol):
    """Where the blocks go (a file, stdout, an :class:`~ebcap.replay.sink.Output`)."""

    def write(self, data: bytes | bytearray | memoryview) -> object: ...


@dataclass(frozen=True)
class PcapngSummary:
    """What :func:`export_pcapng` wrote."""

    packets: int
    incomplete: int
    """Samples left out: no ``cap_len``, ``pkt_len`` or ``ifindex`` (another tool's nulls)."""
    wall_clock: bool = True
    """False: the capture lacks its realtime offset; packet times are CLOCK_MONOTONIC."""

    def notes(self) -> list[str]:
        """One line for each thing the user should know (nothing when all was written)."""
        notes = []
        if self.incomplete:
            rows = "row has" if self.incomplete == 1 else "rows have"
            notes.append(
                f"{self.incomplete:,} packet {rows} no cap_len, pkt_len or ifindex: "
                "left out of the pcapng"
            )
        if not self.wall_clock:
            notes.append(
                f"the capture has no {META_REALTIME_OFFSET}: packet times are "
                "CLOCK_MONOTONIC (since boot), not wall-clock"
            )
        return notes


def export_pcapng(
    reader: CaptureReader,
    out: ByteSink,
    *,
    in_time_order: bool = False,
    report: OrderReport | None = None,
) -> PcapngSummary:
    """Write the capture's packets to ``out``; say how many (loss rows are skipped, and
    samples without a length or interface counted)."""
    metadata = reader.metadata
    offset = packet_offset(metadata)
    require_packet_columns(reader.schema.names)
    snaplen = capture_snaplen(metadata)
    writer = capture_writer(
        metadata,
        cast(BinaryIO, out),  # the writer only calls write()
        snaplen=snaplen if snaplen is not None else _largest_cut(reader),
    )
    report = report if report is not None else OrderReport()
    columns = [name for name in PACKET_COLUMNS if name not in CORE_KEYS]
    stream = in_order(reader, in_time_order, report, columns)
    try:
        for batch in stream:
            write_packet_rows(writer, batch.rows, offset)
    finally:
        stream.close()
    wall_clock = META_REALTIME_OFFSET in metadata
    return PcapngSummary(writer.packets, writer.incomplete, wall_clock)


def _largest_cut(reader: CaptureReader) -> int:
    """:func:`~ebcap.format.pcapng.largest_cut` over the whole capture, a batch at a time."""
    snaplen = 0
    for part in scan_columns(reader, ("kind", "pkt_len", "cap_len")):
        part = part.filter(pa.array(sample_mask(part)))
        cap = part.column("cap_len").to_numpy(zero_copy_only=False)
        wire = part.column("pkt_len").to_numpy(zero_copy_only=False)
        snaplen = max(snaplen, largest_cut(cap, wire))
    return snaplen
