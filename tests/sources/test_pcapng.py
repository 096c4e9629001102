"""pcapng output, read back with a parser written from the specification here and with dpkt."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest
from sources import netns
from sources.pcapng_reader import parse_pcapng, read_with_dpkt
from sources.rings import collect, structured

from ebcap.bpf.programs.packet import PACKET_OFFSET
from ebcap.capture.packet_source import XdpSource
from ebcap.errors import UsageError
from ebcap.format import schema as s
from ebcap.format.pcapng import (
    PcapngWriter,
    capture_writer,
    packet_offset,
    write_packet_rows,
    write_pcapng,
)


def test_writer_blocks() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(
        out, snaplen=256, realtime_offset_ns=1_700_000_000_000_000_000, os_name="Linux 6.18",
        interface_names={4: "veth0"},
    )  # fmt: skip
    writer.write_packet(4, 123, b"\x01\x02\x03", 60)
    writer.write_packet(9, 2**33, b"\xaa" * 8, 8)
    writer.write_packet(4, 124, b"", 0)
    parsed = parse_pcapng(out.getvalue())
    assert parsed["shb_options"] == {4: b"ebcap", 3: b"Linux 6.18"}
    assert parsed["interfaces"] == [
        {"linktype": 1, "snaplen": 256, 2: b"veth0", 9: b"\x09"},
        {"linktype": 1, "snaplen": 256, 9: b"\x09"},
    ]
    base = 1_700_000_000_000_000_000
    assert parsed["packets"] == [
        (0, base + 123, 60, b"\x01\x02\x03"),
        (1, base + 2**33, 8, b"\xaa" * 8),
        (0, base + 124, 0, b""),
    ]
    assert writer.packets == 3
    with pytest.raises(UsageError):
        writer.write_packet(4, 1, b"1234", 3)
    with pytest.raises(UsageError):
        PcapngWriter(io.BytesIO(), snaplen=-1)


def _layout_meta(source: XdpSource) -> dict:
    return {
        s.META_SOURCE: source.spec,
        s.META_SOURCE_LAYOUT: json.loads(source.layout.to_json()),
        s.META_REALTIME_OFFSET: 1_000,
        s.META_KERNEL: "6.18-test",
    }


def _empty_packet_table(source: XdpSource) -> pa.Table:
    fields = [pa.field(n, t) for n, t in (("ts_ns", pa.uint64()), ("data", pa.binary()))]
    return pa.schema(fields + source.arrow_fields()).empty_table()


@pytest.mark.parametrize("spec", ["xdp:veth7", "tc:veth7:egress"])
def test_no_packets_still_gets_its_interface(spec: str) -> None:
    """A capture that saw no packet: the IDB of its interface, with the capture's snaplen."""
    source = XdpSource("veth7", snaplen=300)
    meta = {**_layout_meta(source), s.META_SOURCE: spec}
    out = io.BytesIO()
    assert write_pcapng(_empty_packet_table(source), meta, out) == 0
    parsed = parse_pcapng(out.getvalue())
    assert parsed["interfaces"] == [{"linktype": 1, "snaplen": 300, 2: b"veth7", 9: b"\x09"}]
    assert parsed["packets"] == []
    view = read_with_dpkt(out.getvalue())
    assert (view.snaplen, view.linktype, view.packets) == (300, 1, [])


def test_snaplen_comes_from_the_capture_not_the_packets() -> None:
    """Nothing was cut (every packet shorter than --snaplen): the IDB still says 200;
    a capture from before the metadata had it falls back to the largest cut packet."""
    source = XdpSource("veth7", snaplen=200)
    frame = bytes(range(60))
    payload = bytes(PACKET_OFFSET) + frame + bytes(96 - len(frame))
    rows = pa.table(
        {
            "ts_ns": pa.array([5], pa.uint64()),
            "data": pa.array([payload], pa.binary()),
            "ifindex": pa.array([3], pa.uint32()),
            "pkt_len": pa.array([60], pa.uint32()),
            "cap_len": pa.array([60], pa.uint32()),
        }
    )
    out = io.BytesIO()
    assert write_pcapng(rows, _layout_meta(source), out) == 1
    view = read_with_dpkt(out.getvalue())
    assert view.snaplen == 200 and [b for _, b in view.packets] == [frame]
    old = _layout_meta(source)
    del old[s.META_SOURCE_LAYOUT]["snaplen"]
    cut = rows.set_column(3, "pkt_len", pa.array([1500], pa.uint32()))
    out = io.BytesIO()
    write_pcapng(cut, old, out)
    assert read_with_dpkt(out.getvalue()).snaplen == 60


def test_batches_stream_into_one_file() -> None:
    """The writer a capture's metadata describes takes rows batch by batch."""
    source = XdpSource("veth7", snaplen=128)
    meta = _layout_meta(source)
    frames = [bytes([i]) * (20 + i) for i in range(5)]
    batches = [
        pa.record_batch(
            {
                "ts_ns": pa.array([i], pa.uint64()),
                "data": pa.array([bytes(PACKET_OFFSET) + f + bytes(96)], pa.binary()),
                "ifindex": pa.array([3], pa.uint32()),
                "pkt_len": pa.array([len(f)], pa.uint32()),
                "cap_len": pa.array([len(f)], pa.uint32()),
            }
        )
        for i, f in enumerate(frames)
    ]
    out = io.BytesIO()
    writer = capture_writer(meta, out)
    assert sum(write_packet_rows(writer, b, packet_offset(meta)) for b in batches) == 5
    parsed = parse_pcapng(out.getvalue())
    assert len(parsed["interfaces"]) == 1 and parsed["interfaces"][0][2] == b"veth7"
    assert [p[3] for p in parsed["packets"]] == frames
    assert [b for _, b in read_with_dpkt(out.getvalue()).packets] == frames


def test_files_of_the_older_packet_layout_export_as_before() -> None:
    """Before ``vlan_proto``/``vlan_tci``, packets started at offset 28: the layout says so."""
    meta = _layout_meta(XdpSource("veth7", snaplen=128))
    fields = meta[s.META_SOURCE_LAYOUT]["fields"]
    meta[s.META_SOURCE_LAYOUT]["fields"] = [
        {**f, "offset": 28} if f["name"] == "packet" else f
        for f in fields
        if f["name"] not in ("vlan_proto", "vlan_tci")
    ]
    frame = bytes(range(60))
    rows = pa.table(
        {
            "ts_ns": pa.array([5], pa.uint64()),
            "data": pa.array([bytes(28) + frame + bytes(36)], pa.binary()),
            "ifindex": pa.array([3], pa.uint32()),
            "pkt_len": pa.array([60], pa.uint32()),
            "cap_len": pa.array([60], pa.uint32()),
        }
    )
    out = io.BytesIO()
    assert write_pcapng(rows, meta, out) == 1
    assert [b for _, b in read_with_dpkt(out.getvalue()).packets] == [frame]


def test_write_pcapng_refuses_other_captures() -> None:
    with pytest.raises(UsageError, match="did not record packets"):
        write_pcapng(pa.table({"ts_ns": [1]}), {s.META_SOURCE: "syscalls"}, io.BytesIO())
    meta = _layout_meta(XdpSource("eth9"))
    with pytest.raises(UsageError, match="no column"):
        write_pcapng(pa.table({"ts_ns": [1]}), meta, io.BytesIO())


@pytest.mark.privileged
@pytest.mark.network
def test_captured_datagrams_to_pcapng(veth: netns.VethPair) -> None:
    """XDP capture of known datagrams -> rows -> pcapng: frames and times survive exactly."""
    sizes = [5, 200, 1200, 60]  # distinct, so each datagram is known by its length
    snaplen, headers = 128, 42
    source = XdpSource(veth.host, mode="generic", snaplen=snaplen)
    send = dict(netns=veth.netns, src=veth.peer_ip, dst=veth.host_ip, sport=41000, dport=41001)
    payloads, _ = collect(source, "ringbuf", lambda: netns.send_udp(**send, sizes=sizes))
    events = structured(source, payloads)
    samples = pa.table(
        {
            "ts_ns": pa.array(events["ts_ns"]),
            "kind": _kinds([0] * len(events)),
            "data": pa.array(payloads, pa.binary()),
            **source.decode(events),
        }
    )
    lost_row = pa.table(
        {field.name: pa.nulls(1, field.type) for field in samples.schema}
    ).set_column(1, "kind", _kinds([1]))
    table = pa.concat_tables([samples, lost_row])  # a lost row is no packet
    out = io.BytesIO()
    assert write_pcapng(table, _layout_meta(source), out) == len(sizes)
    parsed = parse_pcapng(out.getvalue())
    assert parsed["interfaces"] == [
        {"linktype": 1, "snaplen": snaplen, 2: veth.host.encode(), 9: b"\x09"}
    ]
    assert len(parsed["packets"]) == len(sizes)
    view = read_with_dpkt(out.getvalue())
    assert (view.snaplen, view.linktype) == (snaplen, 1)
    assert [b for _, b in view.packets] == [p[3] for p in parsed["packets"]]
    for row, (iface, ts, orig, frame) in enumerate(parsed["packets"]):
        cap = int(events["cap_len"][row])
        assert (iface, ts, orig) == (
            0,
            int(events["ts_ns"][row]) + 1_000,
            int(events["pkt_len"][row]),
        )
        assert frame == payloads[row][PACKET_OFFSET : PACKET_OFFSET + cap]
        index = sizes.index(orig - headers)
        assert cap == min(orig, snaplen)
        assert frame[headers:] == netns.payload(index, sizes[index])[: cap - headers]


def _kinds(codes: list[int]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(s.KINDS))
