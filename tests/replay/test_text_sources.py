"""Replay lines of packet and tracepoint captures: summaries and fields that read well."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from synthetic import Collect, Synthetic, metadata, parse, write_table
from synthetic_packets import FRAMES, LOST_AT, packet_capture, packets_with_nulls

from ebcap.bpf.programs.packet import PACKET_OFFSET
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.player import ReplayOptions, write_replay


@pytest.mark.parametrize("order", ["arrival", "time"])
def test_packet_rows_read_like_tcpdump(tmp_path: Path, order: str) -> None:
    packet_capture(tmp_path / "p.arrow")
    assert PACKET_OFFSET == 32  # where the summary finds the packet: from the layout
    sink = Collect()
    with CaptureReader(tmp_path / "p.arrow") as reader:
        write_replay(reader, sink, ReplayOptions(order=order))
    bodies = [parse(line)["body"] for line in sink.lines()]
    tagged = [frame[12:14] == b"\x81\x00" for frame, *_ in FRAMES]  # VLAN 100
    expected = [
        f"{summary} ifindex=3 rx_queue=0 vlan_id={100 if vlan else '-'}"
        for vlan, (*_, summary) in zip(tagged, FRAMES, strict=True)
    ]
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
    spec = Synthetic(extra_meta={fs.META_SOURCE: "tracepoint:sched:sched_switch"})
    columns = {
        name: pa.array([r[i] for r in rows], kind)
        for i, (name, kind) in enumerate(zip(names, types, strict=True))
    }
    table = _core_table(len(rows), columns, spec)
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


def _core_table(n: int, extra: dict[str, pa.Array], spec: Synthetic | None = None) -> pa.Table:
    """``n`` sample rows on CPU 1 with the source columns ``extra`` (metadata of ``spec``)."""
    fields = [pa.field(name, values.type) for name, values in extra.items()]
    return pa.Table.from_arrays(
        [
            pa.array(range(n), pa.uint64()),
            pa.array([1] * n, pa.uint16()),
            pa.array([10 + i for i in range(n)], pa.uint64()),
            pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), pa.array(list(fs.KINDS))),
            pa.array([0] * n, pa.uint64()),
            pa.array([0] * n, pa.uint32()),
            pa.array([b"\x01"] * n, pa.binary()),
            *extra.values(),
        ],
        schema=fs.make_schema(fields, metadata=metadata(spec or Synthetic())),
    )


@pytest.mark.parametrize("order", ["arrival", "time"])
def test_a_syscall_column_that_is_not_text_shows_as_fields(tmp_path: Path, order: str) -> None:
    """A ``--layout ts:u64,cpu:u32,syscall:u32,arg0:u64,...`` capture names its columns like
    the syscalls source: a number in ``syscall`` is a field, not a call's name."""
    args = {f"arg{i}": pa.array([i, 16 + i], pa.uint64()) for i in range(6)}
    table = _core_table(2, {"syscall": pa.array([257, None], pa.uint32()), **args})
    write_table(tmp_path / "nr.arrow", table)
    sink = Collect()
    with CaptureReader(tmp_path / "nr.arrow") as reader:
        write_replay(reader, sink, ReplayOptions(order=order))
    assert [parse(line)["body"] for line in sink.lines()] == [
        "syscall=257 arg0=0 arg1=1 arg2=2 arg3=3 arg4=4 arg5=5",
        "syscall=- arg0=16 arg1=17 arg2=18 arg3=19 arg4=20 arg5=21",
    ]


def test_syscall_text_with_arguments_that_are_not_integers_shows_as_fields(
    tmp_path: Path,
) -> None:
    args = {f"arg{i}": pa.array([f"a{i}"], pa.string()) for i in range(6)}
    table = _core_table(1, {"syscall": pa.array(["openat"]), **args})
    write_table(tmp_path / "s.arrow", table)
    sink = Collect()
    with CaptureReader(tmp_path / "s.arrow") as reader:
        write_replay(reader, sink, ReplayOptions())
    body = 'syscall="openat" ' + " ".join(f'arg{i}="a{i}"' for i in range(6))
    assert [parse(line)["body"] for line in sink.lines()] == [body]


def test_a_large_string_syscall_column_reads_as_a_call(tmp_path: Path) -> None:
    args = {f"arg{i}": pa.array([i], pa.int64()) for i in range(6)}
    table = _core_table(1, {"syscall": pa.array(["read"], pa.large_string()), **args})
    write_table(tmp_path / "l.arrow", table)
    sink = Collect()
    with CaptureReader(tmp_path / "l.arrow") as reader:
        write_replay(reader, sink, ReplayOptions())
    assert [parse(line)["body"] for line in sink.lines()] == ["read(0x0, 0x1, 0x2, 0x3, 0x4, 0x5)"]


def test_packets_without_lengths_say_unknown(tmp_path: Path) -> None:
    packets_with_nulls(tmp_path / "p.arrow")
    sink = Collect()
    with CaptureReader(tmp_path / "p.arrow") as reader:
        write_replay(reader, sink, ReplayOptions())
    bodies = [parse(line)["body"] for line in sink.lines()]
    assert bodies[1] == (
        "IPv4 198.51.100.1.51234 > 198.51.100.2.443: TCP, frame 98 ifindex=3 rx_queue=0 vlan_id=-"
    )  # no cap_len: the flags, read from the captured bytes, are unknown
    assert bodies[2] == (
        "IPv4 198.51.100.1.5353 > 198.51.100.2.53: UDP, frame length unknown (captured 128), "
        "fragment id 4660 at 0 (more follow) ifindex=3 rx_queue=0 vlan_id=-"
    )
    assert bodies[6].endswith(", frame 118 ifindex=- rx_queue=0 vlan_id=-")
