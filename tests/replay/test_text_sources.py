"""Replay lines of packet and tracepoint captures: summaries and fields that read well."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from synthetic import Collect, Synthetic, metadata, parse, write_table
from synthetic_packets import FRAMES, LOST_AT, packet_capture

from ebcap.bpf.programs.packet import PACKET_OFFSET
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.player import ReplayOptions, write_replay


@pytest.mark.parametrize("order", ["arrival", "time"])
def test_packet_rows_read_like_tcpdump(tmp_path: Path, order: str) -> None:
    packet_capture(tmp_path / "p.arrow")
    assert PACKET_OFFSET == 28  # where the summary finds the packet: from the layout
    sink = Collect()
    with CaptureReader(tmp_path / "p.arrow") as reader:
        write_replay(reader, sink, ReplayOptions(order=order))
    bodies = [parse(line)["body"] for line in sink.lines()]
    expected = [f"{summary} ifindex=3 rx_queue=0" for *_, summary in FRAMES]
    expected.insert(LOST_AT, "*** CPU 0 lost 7 events ***")
    assert bodies == expected


def test_tracepoint_fields_are_name_value_with_strings_quoted(tmp_path: Path) -> None:
    """Columns as a tracepoint source makes them: integers, strings, bytes, int arrays."""
    rows = [
        (42, "bash", "a b", -1, b"\x00\xff", [1, 2, 3]),
        (7, 'say "hi"', "tab\there", 0, b"", [0, 0, 0]),
        (None, None, None, None, None, None),
    ]
    names = ("common_pid", "prev_comm", "next_comm", "prev_state", "buf", "args")
    types = (
        pa.int32(),
        pa.string(),
        pa.string(),
        pa.int64(),
        pa.binary(),
        pa.list_(pa.int32(), 3),
    )
    n = len(rows)
    spec = Synthetic(extra_meta={fs.META_SOURCE: "tracepoint:sched:sched_switch"})
    fields = [pa.field(name, kind) for name, kind in zip(names, types, strict=True)]
    table = pa.Table.from_arrays(
        [
            pa.array(range(n), pa.uint64()),
            pa.array([1] * n, pa.uint16()),
            pa.array([10 + i for i in range(n)], pa.uint64()),
            pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), pa.array(list(fs.KINDS))),
            pa.array([0] * n, pa.uint64()),
            pa.array([0] * n, pa.uint32()),
            pa.array([b"\x01"] * n, pa.binary()),
            *(pa.array([r[i] for r in rows], kind) for i, kind in enumerate(types)),
        ],
        schema=fs.make_schema(fields, metadata=metadata(spec)),
    )
    write_table(tmp_path / "tp.arrow", table)
    sink = Collect()
    with CaptureReader(tmp_path / "tp.arrow") as reader:
        write_replay(reader, sink, ReplayOptions())
    assert [parse(line)["body"] for line in sink.lines()] == [
        'common_pid=42 prev_comm="bash" next_comm="a b" prev_state=-1 buf=00ff args=[1,2,3]',
        'common_pid=7 prev_comm="say \\"hi\\"" next_comm="tab\\there" prev_state=0 buf= '
        "args=[0,0,0]",
        "common_pid=- prev_comm=- next_comm=- prev_state=- buf=- args=-",
    ]
