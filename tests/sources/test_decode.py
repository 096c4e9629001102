"""Decoding without a kernel: events built byte by byte, columns checked value by value."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ebcap.bpf import tracefs
from ebcap.bpf.programs import packet as packet_program
from ebcap.bpf.programs import tracepoint as tp_program
from ebcap.capture.packet_decode import PACKET_FIELDS, RxQueue, decode_packets
from ebcap.capture.packet_source import TcSource, XdpSource
from ebcap.capture.tracepoint_source import TracepointSource
from ebcap.errors import UsageError

FIXTURES = Path(__file__).parent / "fixtures"


def source_for(name: str, category: str, string_bytes: int = 64) -> TracepointSource:
    fmt = tracefs.parse_format((FIXTURES / f"{name}.format").read_text(), category)
    return TracepointSource(category, fmt.name, fmt=fmt, string_bytes=string_bytes)


def events_of(source: TracepointSource, raw: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(raw), dtype=source.layout.dtype)


def event(
    source: TracepointSource,
    ts: int,
    cpu: int,
    record: bytes,
    slots: dict[str, bytes],
    status: dict[str, int] | None = None,
) -> bytes:
    """An event as the generated program writes it; a slot's head is ``status``, by default
    complete (text) or the length of its data (bytes)."""
    out = bytearray(source.event.size)
    struct.pack_into("<QI", out, 0, ts, cpu)
    out[tp_program.HEADER_SIZE : tp_program.HEADER_SIZE + len(record)] = record
    for slot in source.event.slots:
        data = slots[slot.name]
        default = tp_program.STRING_COMPLETE if slot.text else len(data)
        head = (status or {}).get(slot.name, default)
        struct.pack_into("<I", out, slot.offset, head)
        out[slot.data_offset : slot.data_offset + len(data)] = data
    return bytes(out)


def test_fork_strings_and_pids() -> None:
    source = source_for("sched_sched_process_fork", "sched")
    assert [s.name for s in source.event.slots] == ["parent_comm", "child_comm"]
    record = struct.pack("<HBBi", 0, 0, 0, 4242) + struct.pack("<IiIi", 0, 4242, 0, 4343)
    raw = [
        event(source, 10, 1, record, {"parent_comm": b"bash\0", "child_comm": b"bash\0"}),
        event(source, 11, 0, record, {"parent_comm": b"x" * 63 + b"\0", "child_comm": b"\0"}),
    ]
    columns = source.decode(events_of(source, raw))
    assert list(columns) == [
        "common_pid", "parent_comm", "parent_comm_truncated", "parent_pid",
        "child_comm", "child_comm_truncated", "child_pid",
    ]  # fmt: skip
    assert columns["parent_comm"].to_pylist() == ["bash", "x" * 63]
    assert columns["child_comm"].to_pylist() == ["bash", ""]
    assert columns["child_pid"].to_pylist() == [4343, 4343]
    assert columns["common_pid"].type == pa.int32()
    assert [f.name for f in source.arrow_fields()] == list(columns)


def test_ints_of_each_width_and_sign_pointers_and_bytes() -> None:
    source = source_for("sock_inet_sock_set_state", "sock")
    record = struct.pack(
        "<HBBiQiiHHHH4s4s16s16s", 0, 0, 0, -7, 0xFFFF_8880_0000_1000, -1, 10, 443, 65535, 2, 6,
        bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]), V6_SRC, b"\xff" * 16,
    )  # fmt: skip
    columns = source.decode(events_of(source, [event(source, 1, 0, record, {})]))
    types = {f.name: f.type for f in source.arrow_fields()}
    assert types["common_pid"] == pa.int32() and types["oldstate"] == pa.int32()
    assert types["skaddr"] == pa.uint64() and types["sport"] == pa.uint16()
    assert types["saddr"] == pa.binary()
    row = {name: array[0].as_py() for name, array in columns.items()}
    assert row["common_pid"] == -7
    assert row["skaddr"] == 0xFFFF_8880_0000_1000
    assert (row["oldstate"], row["newstate"]) == (-1, 10)
    assert (row["sport"], row["dport"], row["family"], row["protocol"]) == (443, 65535, 2, 6)
    assert row["saddr"] == bytes([192, 0, 2, 1]) and row["daddr"] == bytes([198, 51, 100, 2])
    assert row["daddr_v6"] == b"\xff" * 16


def test_int_array_dynamic_bytes_and_core_name_clash() -> None:
    sys_enter = source_for("raw_syscalls_sys_enter", "raw_syscalls")
    record = struct.pack("<HBBiq6Q", 0, 0, 0, 5, -1, 1, 2, 3, 4, 5, 2**64 - 1)
    columns = sys_enter.decode(events_of(sys_enter, [event(sys_enter, 1, 0, record, {})]))
    assert columns["id"].to_pylist() == [-1]
    assert columns["args"].type == pa.list_(pa.uint64(), 6)
    assert columns["args"].to_pylist() == [[1, 2, 3, 4, 5, 2**64 - 1]]

    ipi = source_for("ipi_ipi_send_cpumask", "ipi", string_bytes=8)
    record = struct.pack("<HBBiIIQQ", 0, 0, 0, 1, 0, 0, 0xAA, 0xBB)
    raw = [
        event(ipi, 1, 0, record, {"cpumask": b"\x03"}),
        event(ipi, 2, 0, record, {"cpumask": b""}),
        event(ipi, 3, 0, record, {"cpumask": bytes(range(8))}),
        event(ipi, 4, 0, record, {"cpumask": bytes(range(8))}, {"cpumask": 9}),  # cut
        event(ipi, 5, 0, record, {"cpumask": b""}, {"cpumask": tp_program.BYTES_UNREADABLE}),
    ]
    assert [f.name for f in ipi.arrow_fields()][:3] == [
        "common_pid",
        "cpumask",
        "cpumask_truncated",
    ]
    columns = ipi.decode(events_of(ipi, raw))
    assert columns["cpumask"].to_pylist() == [b"\x03", b"", bytes(range(8)), bytes(range(8)), None]
    assert columns["cpumask_truncated"].to_pylist() == [False, False, False, True, None]
    assert columns["callsite"].to_pylist() == [0xAA] * 5
    empty = ipi.decode(events_of(ipi, []))  # no events: empty columns, not an error
    assert {name: len(values) for name, values in empty.items()} == dict.fromkeys(columns, 0)

    cpuhp = source_for("cpuhp_cpuhp_enter", "cpuhp")
    assert "ev_cpu" in [f.name for f in cpuhp.arrow_fields()]
    record = struct.pack("<HBBiIiiIQ", 0, 0, 0, 9, 3, 1, 2, 0, 0x1234)
    columns = cpuhp.decode(events_of(cpuhp, [event(cpuhp, 1, 1, record, {})]))
    assert columns["ev_cpu"].to_pylist() == [3] and columns["fun"].to_pylist() == [0x1234]


def test_flexible_array_has_no_column_and_format_must_match() -> None:
    source = source_for("ftrace_bprint", "ftrace")
    assert [f.name for f in source.arrow_fields()] == ["common_pid", "ip", "fmt"]
    fmt = source.format
    with pytest.raises(UsageError):
        TracepointSource("sched", "other", fmt=fmt)
    with pytest.raises(UsageError):
        TracepointSource("ftrace", "bprint", fmt=fmt, string_bytes=4)


MADE_UP = """name: widths
ID: 9001
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:s8 small;\toffset:8;\tsize:1;\tsigned:1;
\tfield:u8 byte;\toffset:9;\tsize:1;\tsigned:0;
\tfield:short delta;\toffset:10;\tsize:2;\tsigned:1;
\tfield:unsigned int count;\toffset:12;\tsize:4;\tsigned:0;
\tfield:bool on;\toffset:16;\tsize:1;\tsigned:0;
\tfield:__rel_loc char[] label;\toffset:20;\tsize:4;\tsigned:0;
\tfield:__rel_loc u8[] blob;\toffset:24;\tsize:4;\tsigned:0;

print fmt: "made up"
"""
"""A format file made up for the widths no fixture has: int8, uint8, int16, uint32,
bool, and __rel_loc text and bytes."""


def test_small_ints_bool_and_rel_loc() -> None:
    fmt = tracefs.parse_format(MADE_UP, "test")
    assert [f.relative for f in fmt.fields if f.is_dynamic] == [True, True]
    source = TracepointSource("test", "widths", fmt=fmt, string_bytes=16)
    types = {f.name: f.type for f in source.arrow_fields()}
    assert types == {
        "common_pid": pa.int32(), "small": pa.int8(), "byte": pa.uint8(), "delta": pa.int16(),
        "count": pa.uint32(), "on": pa.bool_(), "label": pa.string(),
        "label_truncated": pa.bool_(), "blob": pa.binary(), "blob_truncated": pa.bool_(),
    }  # fmt: skip
    rows = [
        (-128, 0, -32768, 0, 0),
        (-5, 250, -30000, 4_000_000_000, 1),
        (127, 255, 32767, 2**32 - 1, 2),  # any non-zero byte is true
    ]
    raw = [
        event(
            source, i, 0, struct.pack("<HBBibBhIB3xII", 0, 0, 0, 1, *row, 0, 0),
            {"label": text, "blob": blob},
            {"label": status},
        )
        for i, (row, text, blob, status) in enumerate(
            zip(
                rows,
                [b"eth0\0", b"y" * 15 + b"\0", b"\0"],
                [b"", b"\x01\x02", bytes(range(16))],
                [tp_program.STRING_COMPLETE, tp_program.STRING_TRUNCATED,
                 tp_program.STRING_UNREADABLE],
                strict=True,
            )
        )
    ]  # fmt: skip
    columns = {k: v.to_pylist() for k, v in source.decode(events_of(source, raw)).items()}
    assert columns["small"] == [-128, -5, 127]
    assert columns["byte"] == [0, 250, 255]
    assert columns["delta"] == [-32768, -30000, 32767]
    assert columns["count"] == [0, 4_000_000_000, 2**32 - 1]
    assert columns["on"] == [False, True, True]
    assert columns["label"] == ["eth0", "y" * 15, None]
    assert columns["label_truncated"] == [False, True, None]
    assert columns["blob"] == [b"", b"\x01\x02", bytes(range(16))]
    assert columns["blob_truncated"] == [False, False, False]


def test_user_string_columns() -> None:
    """A syscall's ``const char *``: the text, its pointer, and whether it was cut."""
    source = source_for("syscalls_sys_enter_openat", "syscalls", string_bytes=8)
    names = [f.name for f in source.arrow_fields()]
    assert names[names.index("filename") :][:3] == [
        "filename", "filename_ptr", "filename_truncated",
    ]  # fmt: skip
    statuses = [tp_program.STRING_COMPLETE, tp_program.STRING_TRUNCATED,
                tp_program.STRING_UNREADABLE]  # fmt: skip
    raw = [
        event(
            source, 1, 0, struct.pack("<HBBii4xQQQQ", 0, 0, 0, 7, 257, 0, ptr, 0, 0),
            {"filename": text}, {"filename": status},
        )
        for ptr, text, status in zip(
            [0x7FFF_0000_1000, 0x7FFF_0000_2000, 0],
            [b"/etc\0", b"/usr/li\0", b"\0"],
            statuses,
            strict=True,
        )
    ]  # fmt: skip
    columns = {k: v.to_pylist() for k, v in source.decode(events_of(source, raw)).items()}
    assert columns["filename"] == ["/etc", "/usr/li", None]
    assert columns["filename_ptr"] == [0x7FFF_0000_1000, 0x7FFF_0000_2000, 0]
    assert columns["filename_truncated"] == [False, True, None]
    for data in ("buf", "u_msg_ptr", "msgp"):  # write, mq_timedsend, msgsnd: data, not text
        message = tracefs.parse_format(
            MADE_UP.replace("s8 small", f"const char * {data}"), "syscalls"
        )
        assert message.field(data).kind is tracefs.FieldKind.POINTER
        columns = {
            f.name for f in TracepointSource("syscalls", "widths", fmt=message).arrow_fields()
        }
        assert data in columns and f"{data}_ptr" not in columns
    text = tracefs.parse_format(MADE_UP.replace("s8 small", "const char * u_name"), "syscalls")
    assert text.field("u_name").kind is tracefs.FieldKind.USER_STRING  # mq_open's name
    other = tracefs.parse_format(MADE_UP.replace("s8 small", "const char * small"), "test")
    assert other.field("small").kind is tracefs.FieldKind.POINTER  # only syscall arguments


# --- packets ------------------------------------------------------------------
def eth(ethertype: int, *vlans: int) -> bytes:
    head = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")
    for tpid in vlans:
        head += struct.pack(">HH", tpid, 100)
    return head + struct.pack(">H", ethertype)


def ipv4(
    proto: int, src: str, dst: str, payload: bytes, *, options: bytes = b"", frag: int = 0
) -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack(
        ">BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 1, frag, 64, proto, 0,
        bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")),
    )  # fmt: skip
    return header + options + payload


def ipv6(next_header: int, src: bytes, dst: bytes, payload: bytes) -> bytes:
    return struct.pack(">IHBB", 6 << 28, len(payload), next_header, 64) + src + dst + payload


def ports(sport: int, dport: int) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8, 0)


def packet_events(frames: list[bytes], caps: list[int] | None = None) -> np.ndarray:
    out = np.zeros(len(frames), dtype=packet_program.PACKET_EVENT)
    for i, frame in enumerate(frames):
        cap = min(len(frame), caps[i] if caps else len(frame), packet_program.PACKET_HEAD_BYTES)
        out[i]["ifindex"], out[i]["pkt_len"], out[i]["cap_len"] = 7, len(frame), cap
        out[i]["packet"][:cap] = np.frombuffer(frame[:cap], dtype=np.uint8)
    return out


V6_SRC = bytes.fromhex("20010db8000000000000000000000001")
V6_DST = bytes.fromhex("20010db8000000000000000000000002")


def test_packet_headers() -> None:
    frames = [
        eth(0x0800) + ipv4(17, "192.0.2.1", "198.51.100.2", ports(53, 40000)),
        eth(0x0800) + ipv4(6, "198.51.100.9", "192.0.2.7", ports(443, 1), options=b"\x01" * 40),
        eth(0x86DD) + ipv6(17, V6_SRC, V6_DST, ports(5353, 5353)),
        eth(0x0800, 0x8100) + ipv4(17, "192.0.2.3", "192.0.2.4", ports(1, 2)),
        eth(0x86DD, 0x88A8, 0x8100) + ipv6(6, V6_DST, V6_SRC, ports(22, 50000)),
        eth(0x0806) + b"\0" * 28,
        eth(0x0800) + ipv4(1, "192.0.2.5", "192.0.2.6", b"\x08\0" + b"\0" * 6),
        eth(0x0800) + ipv4(17, "192.0.2.5", "192.0.2.6", ports(9, 9), frag=185),
        eth(0x0800) + ipv4(17, "192.0.2.8", "192.0.2.9", ports(7, 8)),  # cut in the IP header
        eth(0x0800)[:10],  # not even an Ethernet header
        eth(0x0800) + bytes([0x42]) + ipv4(6, "192.0.2.10", "192.0.2.11", ports(80, 81))[1:],
    ]  # the last: IHL 2, below the 20-byte minimum: no ports from inside the IP header
    caps = [999] * 8 + [14 + 16, 10, 999]
    columns = {k: v.to_pylist() for k, v in decode_packets(packet_events(frames, caps)).items()}
    assert list(columns) == [f.name for f in PACKET_FIELDS]
    assert columns["ethertype"] == [
        0x0800,
        0x0800,
        0x86DD,
        0x0800,
        0x86DD,
        0x0806,
        0x0800,
        0x0800,
        0x0800,
        None,
        0x0800,
    ]
    assert columns["src_addr"] == [
        "192.0.2.1", "198.51.100.9", "2001:db8::1", "192.0.2.3", "2001:db8::2", None,
        "192.0.2.5", "192.0.2.5", None, None, "192.0.2.10",
    ]  # fmt: skip
    assert columns["dst_addr"][:5] == [
        "198.51.100.2",
        "192.0.2.7",
        "2001:db8::2",
        "192.0.2.4",
        "2001:db8::1",
    ]
    assert columns["vlan_id"] == [None, None, None, 100, 100, None, None, None, None, None, None]
    assert columns["ip_proto"] == [17, 6, 17, 17, 6, None, 1, 17, None, None, 6]
    assert columns["src_port"] == [53, 443, 5353, 1, 22, None, None, None, None, None, None]
    assert columns["dst_port"] == [40000, 1, 5353, 2, 50000, None, None, None, None, None, None]
    assert columns["pkt_len"] == [len(f) for f in frames]
    assert columns["cap_len"] == [min(len(f), c) for f, c in zip(frames, caps, strict=True)]
    assert set(columns["ifindex"]) == {7}


def test_vlan_id_is_the_outer_tags_without_its_priority() -> None:
    """The outer tag's 12 id bits (priority and DEI left out); null where the tag was not
    captured whole."""
    frame = eth(0x0800) + ipv4(17, "192.0.2.1", "192.0.2.2", ports(1, 2))
    tagged = frame[:12] + struct.pack(">HH", 0x88A8, 7 << 13 | 1 << 12 | 4094) + frame[12:]
    columns = decode_packets(packet_events([tagged, tagged], [99, 17]))
    assert columns["vlan_id"].to_pylist() == [4094, None]
    assert columns["ethertype"].to_pylist() == [0x0800, 0x88A8]


def test_rx_queue_means_the_receive_queue_at_every_hook() -> None:
    """XDP's rx_queue_index as is; tc ingress queue_mapping minus one (0: none
    recorded); tc egress none."""
    events = packet_events([eth(0x0806) + bytes(28)] * 4)
    events["queue"] = [0, 1, 2, 5]
    decoded = {
        meaning: decode_packets(events, meaning)["rx_queue"].to_pylist() for meaning in RxQueue
    }
    assert decoded == {
        RxQueue.AS_IS: [0, 1, 2, 5],
        RxQueue.RECORDED_PLUS_ONE: [None, 0, 1, 4],
        RxQueue.NONE: [None] * 4,
    }
    assert decode_packets(events)["rx_queue"].to_pylist() == [0, 1, 2, 5]
    assert XdpSource("eth9").decode(events)["rx_queue"].to_pylist() == [0, 1, 2, 5]
    assert TcSource("eth9", "ingress").decode(events)["rx_queue"].to_pylist() == [None, 0, 1, 4]
    assert TcSource("eth9", "egress").decode(events)["rx_queue"].null_count == 4


def test_packet_source_arguments_are_checked() -> None:
    for snaplen in (0, packet_program.SNAPLEN_MIN - 1, packet_program.SNAPLEN_MAX + 1):
        with pytest.raises(UsageError, match="snaplen"):
            XdpSource("lo", snaplen=snaplen)
        with pytest.raises(UsageError, match="snaplen"):
            TcSource("lo", "egress", snaplen=snaplen)
    for snaplen in (packet_program.SNAPLEN_MIN, packet_program.SNAPLEN_MAX):
        assert TcSource("lo", "ingress", snaplen=snaplen).snaplen == snaplen
        layout = XdpSource("lo", snaplen=snaplen).layout
        assert json.loads(layout.to_json())["snaplen"] == snaplen
        assert layout.description()["snaplen"] == snaplen  # what the recorder stores
    with pytest.raises(UsageError, match="XDP mode"):
        XdpSource("lo", mode="offload")
    with pytest.raises(UsageError, match="direction"):
        TcSource("lo", direction="both")
    assert XdpSource("eth9").spec == "xdp:eth9"
    assert TcSource("eth9", "egress").spec == "tc:eth9:egress"
    with pytest.raises(UsageError, match="hook"):
        packet_program.build_packet_program("socket", "perf", 0, 0, 0)
