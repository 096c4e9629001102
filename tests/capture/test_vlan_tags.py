"""Putting back the VLAN tag tc found in the skb, on events built by hand (no kernel)."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

from ebcap.bpf.programs.packet import PACKET_EVENT, PACKET_HEAD_BYTES, PACKET_OFFSET
from ebcap.capture.assemble import RowAssembler
from ebcap.capture.batch import EventBatch
from ebcap.capture.packet_source import TcSource, XdpSource
from ebcap.capture.vlan_tags import reinsert_tags
from ebcap.format import schema as fs
from ebcap.format.counts import CpuCounts
from ebcap.format.packet_headers import ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP
from ebcap.format.schema import KIND_LOST_CODE, KIND_SAMPLE_CODE, make_schema

SNAPLEN = 128
HEADER = struct.Struct("<QIIIIIHH")  # ts_ns, cpu, ifindex, queue, pkt_len, cap_len, proto, tci
MACS = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")


def frame(size: int, ethertype: int = ETH_P_IP) -> bytes:
    """A frame of ``size`` bytes without the outer tag: MACs, ethertype, then known bytes."""
    return MACS + struct.pack("!H", ethertype) + bytes(i % 251 for i in range(size - 14))


def tagged(untagged: bytes, tpid: int, tci: int) -> bytes:
    return untagged[:12] + struct.pack("!HH", tpid, tci) + untagged[12:]


def event(wire: bytes, cap: int, proto: int = 0, tci: int = 0, pad: int = 0) -> bytes:
    """What the tc program sends for the frame ``wire`` of which ``cap`` bytes were copied."""
    head = HEADER.pack(1, 0, 3, 0, len(wire), cap, proto, tci)
    packet = wire[:cap] + bytes(max(PACKET_HEAD_BYTES - cap, 0))
    return head + packet + b"\xee" * pad  # pad: a perf sample's stale alignment bytes


def batch(payloads: list[bytes | None]) -> EventBatch:
    """Samples, and a lost row for each None."""
    lengths = [len(p) if p is not None else 0 for p in payloads]
    return EventBatch(
        cpu=np.zeros(len(payloads), dtype=np.uint16),
        ts_ns=np.arange(len(payloads), dtype=np.uint64),
        kind=np.array(
            [KIND_LOST_CODE if p is None else KIND_SAMPLE_CODE for p in payloads], np.int8
        ),
        lost=np.array([3 if p is None else 0 for p in payloads], dtype=np.uint64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        values=np.frombuffer(b"".join(p or b"" for p in payloads), dtype=np.uint8).copy(),
    )


def lengths_of(payload: bytes) -> tuple[int, int, int, int]:
    """pkt_len, cap_len, vlan_proto, vlan_tci of an event."""
    return HEADER.unpack_from(payload)[4:]


def test_the_layout_is_what_the_test_builds() -> None:
    assert PACKET_OFFSET == HEADER.size == 32 and PACKET_EVENT.itemsize == 32 + PACKET_HEAD_BYTES


def test_a_batch_without_tags_is_kept_as_it_is() -> None:
    plain = batch([event(frame(60), 60), None, event(frame(300), SNAPLEN)])
    assert reinsert_tags(plain, SNAPLEN) is plain
    assert reinsert_tags(EventBatch.empty(), SNAPLEN).offsets.tolist() == [0]


def test_tags_go_back_after_the_mac_addresses_within_the_snaplen() -> None:
    small, big, qinq = frame(60), frame(300), frame(80, ETH_P_8021Q)
    qinq = qinq[:14] + struct.pack("!HH", 7, ETH_P_IP) + qinq[18:]  # inner tag, VLAN 7
    rows: list[bytes | None] = [
        event(frame(70), 70),  # untagged: untouched
        event(small, 60, ETH_P_8021Q, 100),
        None,
        event(big, SNAPLEN, ETH_P_8021Q, 5 << 13 | 100, pad=4),  # cut at the snaplen
        event(qinq, 80, ETH_P_8021AD, 200),
        event(frame(60), 0, ETH_P_8021Q, 100),  # the copy failed: nothing to put it in
        event(frame(126), 126, ETH_P_8021Q, 100),  # 130 on the wire: the tag cuts it
    ]
    out = reinsert_tags(batch(rows), SNAPLEN)
    got = [out.payload(i) for i in range(len(out))]
    assert got[0] == rows[0] and got[2] == b"" and out.lost.tolist()[2] == 3
    check(got[1], tagged(small, ETH_P_8021Q, 100), 64)
    check(got[3], tagged(big, ETH_P_8021Q, 5 << 13 | 100), SNAPLEN)
    check(got[4], tagged(qinq, ETH_P_8021AD, 200), 84)
    check(got[6], tagged(frame(126), ETH_P_8021Q, 100), SNAPLEN)
    assert lengths_of(got[5]) == (64, 0, ETH_P_8021Q, 100)
    assert got[5][PACKET_OFFSET:] == bytes(PACKET_HEAD_BYTES)
    assert got[3].endswith(b"\xee" * 4), "a perf sample's padding stays at the end"
    assert (out.ts_ns == np.arange(len(rows))).all()


def check(payload: bytes, whole: bytes, cap: int) -> None:
    """``payload`` holds the first ``cap`` bytes of the tagged frame ``whole``, zeros after."""
    proto, tci = struct.unpack_from("!HH", whole, 12)
    assert lengths_of(payload) == (len(whole), cap, proto, tci)
    packet = payload[PACKET_OFFSET:]
    assert packet[:cap] == whole[:cap]
    assert not any(packet[cap : max(cap, PACKET_HEAD_BYTES) + 4]), "bytes past cap_len are zero"


def test_the_recorder_stores_and_decodes_tc_frames_with_their_tag() -> None:
    """Through the row assembler, as ``ebcap record`` writes rows: tc puts the tag back,
    XDP (whose frames carry their tags) leaves events as they are."""
    wire = frame(300)
    rows: list[bytes | None] = [event(wire, SNAPLEN, ETH_P_8021Q, 100), None]
    for source in (TcSource("veth7", "ingress", snaplen=SNAPLEN), XdpSource("veth7")):
        schema = make_schema(source.arrow_fields(), {fs.META_TRANSPORT: "perf"})
        record = RowAssembler(source, schema, CpuCounts()).assemble(batch(rows), round_no=0)
        assert record is not None
        table = pa.Table.from_batches([record])
        data = table["data"].to_pylist()
        if isinstance(source, XdpSource):
            assert data[0] == rows[0] and table["vlan_id"].to_pylist() == [None, None]
            continue
        whole = tagged(wire, ETH_P_8021Q, 100)
        assert data[0][PACKET_OFFSET : PACKET_OFFSET + SNAPLEN] == whole[:SNAPLEN]
        assert table["pkt_len"].to_pylist() == [304, None]
        assert table["cap_len"].to_pylist() == [SNAPLEN, None]
        assert table["vlan_id"].to_pylist() == [100, None]
        assert table["ethertype"].to_pylist() == [ETH_P_IP, None]
