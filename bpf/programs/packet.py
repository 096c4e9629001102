"""Packet programs: XDP and tc (SCHED_CLS, direct-action) emit each packet's first bytes.

Both write the same event, built in a per-CPU scratch slot (a snapshot can be
larger than the 512-byte BPF stack)::

    u64 ts_ns; u32 cpu; u32 ifindex; u32 queue; u32 pkt_len; u32 cap_len;
    u16 vlan_proto; u16 vlan_tci;
    u8  packet[max(cap_len, PACKET_HEAD_BYTES)];

``cap_len = min(pkt_len, snaplen)`` bytes are copied with
``bpf_xdp_load_bytes`` / ``bpf_skb_load_bytes`` (which also read paged
fragments, unlike direct packet access). The first :data:`PACKET_HEAD_BYTES`
are always sent, zero-filled past ``cap_len``, so every event has a fixed
part to decode headers from; the event is ``32 + max(cap_len, 96)`` bytes.

``vlan_proto``/``vlan_tci`` are the outer VLAN tag the kernel took out of the
frame into the skb before tc saw it (``__sk_buff`` ``vlan_present``,
``vlan_proto``, ``vlan_tci``; 0 and 0 when none): every tagged frame on
ingress, and on egress through a device that inserts tags itself (veth
too). ``pkt_len`` and ``packet`` are the skb's, without the tag; the recorder
puts it back (:mod:`ebcap.capture.vlan_tags`). XDP sees tags in the frame and
writes 0 there.

``queue`` is what the hook offers, as is: XDP's ``rx_queue_index``; tc's
``skb->queue_mapping``, which on ingress holds the rx queue + 1 (0: none
recorded) and on egress whatever was there before the kernel picks the tx
queue (after the clsact hook). The decoder turns it into one meaning
(:class:`ebcap.capture.packet_decode.RxQueue`).

The programs only observe: XDP returns ``XDP_PASS``, tc returns
``TC_ACT_UNSPEC`` (continue with the next filter, pass when none) rather
than ``TC_ACT_OK``, which would end classification and skip the verdicts of
filters after ebcap's.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from ebcap.bpf import _sys
from ebcap.bpf.asm import (
    DW,
    FP,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    H,
    Instruction,
    Item,
    W,
    add64_imm,
    call,
    exit_,
    jmp_imm,
    label,
    ld_map_fd,
    ldx_mem,
    mov32_imm,
    mov64_imm,
    mov64_reg,
    resolve,
    st_mem,
    stx_mem,
    to_be,
)
from ebcap.bpf.programs.common import check_transport, increment_counter
from ebcap.errors import UsageError

# Helper ids (uapi enum bpf_func_id) not in _sys.BPF_FUNC_IDS.
BPF_FUNC_skb_load_bytes: Final = 26
BPF_FUNC_xdp_get_buff_len: Final = 188
BPF_FUNC_xdp_load_bytes: Final = 189

XDP_PASS: Final = 2  # enum xdp_action
TC_ACT_UNSPEC: Final = -1  # linux/pkt_cls.h

# struct xdp_md
XDP_MD_INGRESS_IFINDEX: Final = 12
XDP_MD_RX_QUEUE_INDEX: Final = 16
# struct __sk_buff
SKB_LEN: Final = 0
SKB_QUEUE_MAPPING: Final = 12
SKB_VLAN_PRESENT: Final = 20
SKB_VLAN_TCI: Final = 24
SKB_VLAN_PROTO: Final = 28
"""``skb->vlan_proto`` as stored: network byte order in the low 16 bits."""
SKB_IFINDEX: Final = 40

PACKET_HEAD_BYTES: Final = 96
"""Always sent: Ethernet, two VLAN tags, an IPv4 header with options, the ports."""
SNAPLEN_MIN: Final = 64
SNAPLEN_MAX: Final = 16384
SNAPLEN_DEFAULT: Final = 256

PACKET_EVENT: Final = np.dtype(
    [
        ("ts_ns", "<u8"),  # bpf_ktime_get_ns(): CLOCK_MONOTONIC
        ("cpu", "<u4"),  # bpf_get_smp_processor_id()
        ("ifindex", "<u4"),  # XDP: ingress_ifindex; tc: skb->dev
        ("queue", "<u4"),  # XDP: rx_queue_index; tc: skb->queue_mapping
        ("pkt_len", "<u4"),  # bytes on the wire (XDP: all fragments)
        ("cap_len", "<u4"),  # bytes copied: min(pkt_len, snaplen)
        ("vlan_proto", "<u2"),  # tc: TPID of the tag the kernel took out (0: none)
        ("vlan_tci", "<u2"),  # tc: its TCI (priority, DEI, VLAN id)
        ("packet", "u1", (PACKET_HEAD_BYTES,)),  # the first bytes, zero past cap_len
    ]
)
"""The fixed part of a packet event, packed little-endian: its one definition.
The bytes past ``packet`` (up to ``cap_len``) follow it in the payload."""

PACKET_OFFSET: Final = PACKET_EVENT.itemsize - PACKET_HEAD_BYTES  # 32
HOOK_XDP: Final = "xdp"
HOOK_TC: Final = "tc"

_KEY_SLOT: Final = -8
_DONE: Final = "done"
_EMITTED: Final = "emitted"


def field_offset(field: str) -> int:
    """Offset of ``field`` in the event (:data:`PACKET_EVENT`)."""
    fields = PACKET_EVENT.fields
    if fields is None:  # pragma: no cover - PACKET_EVENT is a structured dtype
        raise TypeError("PACKET_EVENT has no fields")
    return int(fields[field][1])


def check_snaplen(snaplen: int) -> int:
    """Return ``snaplen`` if it is in range, else raise UsageError."""
    if not SNAPLEN_MIN <= snaplen <= SNAPLEN_MAX:
        raise UsageError(f"snaplen {snaplen} out of range: use {SNAPLEN_MIN}..{SNAPLEN_MAX}")
    return snaplen


def scratch_size(snaplen: int) -> int:
    """Value size of the scratch map: the header and ``snaplen`` packet bytes."""
    return PACKET_OFFSET + max(check_snaplen(snaplen), PACKET_HEAD_BYTES)


def _skb_vlan_tag() -> list[Item]:
    """Store the tag the kernel took out of the frame (0, 0 when none). R1-R3 clobbered."""
    return [
        mov64_imm(R2, 0),
        mov64_imm(R3, 0),
        ldx_mem(W, R1, R6, SKB_VLAN_PRESENT),
        jmp_imm("jeq", R1, 0, "no_tag"),
        ldx_mem(W, R2, R6, SKB_VLAN_TCI),
        ldx_mem(W, R3, R6, SKB_VLAN_PROTO),
        to_be(R3, 16),  # the TPID as a number: 0x8100, 0x88a8
        label("no_tag"),
        stx_mem(H, R7, R3, field_offset("vlan_proto")),
        stx_mem(H, R7, R2, field_offset("vlan_tci")),
    ]


def _emit_sized(transport: str, events_map_fd: int, drops_map_fd: int) -> list[Item]:
    """Send R9 bytes at R7 (ctx in R6); on failure count a drop. R0-R5 clobbered."""
    if check_transport(transport) == "perf":
        output = [
            mov64_reg(R1, R6),
            ld_map_fd(R2, events_map_fd),
            mov32_imm(R3, _sys.BPF_F_CURRENT_CPU),
            mov64_reg(R4, R7),
            mov64_reg(R5, R9),
            call("BPF_FUNC_perf_event_output"),
        ]
    else:
        output = [
            ld_map_fd(R1, events_map_fd),
            mov64_reg(R2, R7),
            mov64_reg(R3, R9),
            mov64_imm(R4, 0),
            call("BPF_FUNC_ringbuf_output"),
        ]
    return [
        *output,
        jmp_imm("jeq", R0, 0, _EMITTED),
        *increment_counter(drops_map_fd, key_slot=_KEY_SLOT, field_off=0, skip=_EMITTED),
        label(_EMITTED),
    ]


def build_packet_program(
    hook: str,
    transport: str,
    events_map_fd: int,
    drops_map_fd: int,
    scratch_map_fd: int,
    snaplen: int = SNAPLEN_DEFAULT,
) -> list[Instruction]:
    """The XDP (``hook="xdp"``) or SCHED_CLS (``hook="tc"``) program, labels resolved.

    ``scratch_map_fd`` is a one-slot PERCPU_ARRAY of :func:`scratch_size` bytes.
    """
    check_snaplen(snaplen)
    meta: list[Item]
    if hook == HOOK_XDP:
        verdict = XDP_PASS
        meta = [
            ldx_mem(W, R1, R6, XDP_MD_INGRESS_IFINDEX),
            stx_mem(W, R7, R1, field_offset("ifindex")),
            ldx_mem(W, R1, R6, XDP_MD_RX_QUEUE_INDEX),
            stx_mem(W, R7, R1, field_offset("queue")),
            st_mem(W, R7, field_offset("vlan_proto"), 0),  # and vlan_tci: tags are in the frame
            mov64_reg(R1, R6),
            call(BPF_FUNC_xdp_get_buff_len),
            mov64_reg(R8, R0),
        ]
        load = BPF_FUNC_xdp_load_bytes
    elif hook == HOOK_TC:
        verdict = TC_ACT_UNSPEC
        meta = [
            ldx_mem(W, R1, R6, SKB_IFINDEX),
            stx_mem(W, R7, R1, field_offset("ifindex")),
            ldx_mem(W, R1, R6, SKB_QUEUE_MAPPING),
            stx_mem(W, R7, R1, field_offset("queue")),
            *_skb_vlan_tag(),
            ldx_mem(W, R8, R6, SKB_LEN),
        ]
        load = BPF_FUNC_skb_load_bytes
    else:
        raise UsageError(f"unknown packet hook {hook!r}: use {HOOK_XDP} or {HOOK_TC}")
    zero_head = [st_mem(W, R7, PACKET_OFFSET + i, 0) for i in range(0, PACKET_HEAD_BYTES, 4)]
    items: list[Item] = [
        mov64_reg(R6, R1),  # r6 = ctx, kept across calls
        st_mem(W, FP, _KEY_SLOT, 0),
        ld_map_fd(R1, scratch_map_fd),
        mov64_reg(R2, FP),
        add64_imm(R2, _KEY_SLOT),
        call("BPF_FUNC_map_lookup_elem"),
        jmp_imm("jeq", R0, 0, _DONE),
        mov64_reg(R7, R0),  # r7 = the event being built
        call("BPF_FUNC_ktime_get_ns"),
        stx_mem(DW, R7, R0, field_offset("ts_ns")),
        call("BPF_FUNC_get_smp_processor_id"),
        stx_mem(W, R7, R0, field_offset("cpu")),
        *meta,  # r8 = packet length
        stx_mem(W, R7, R8, field_offset("pkt_len")),
        mov64_reg(R9, R8),  # r9 = cap_len = min(pkt_len, snaplen)
        jmp_imm("jle", R9, snaplen, "capped"),
        mov64_imm(R9, snaplen),
        label("capped"),
        *zero_head,
        jmp_imm("jlt", R9, 1, "copied"),
        mov64_reg(R1, R6),
        mov64_imm(R2, 0),
        mov64_reg(R3, R7),
        add64_imm(R3, PACKET_OFFSET),
        mov64_reg(R4, R9),
        call(load),
        jmp_imm("jeq", R0, 0, "copied"),
        mov64_imm(R9, 0),  # the load failed: report nothing copied
        label("copied"),
        stx_mem(W, R7, R9, field_offset("cap_len")),
        jmp_imm("jge", R9, PACKET_HEAD_BYTES, "sized"),  # r9 = event size
        mov64_imm(R9, PACKET_HEAD_BYTES),
        label("sized"),
        add64_imm(R9, PACKET_OFFSET),
        *_emit_sized(transport, events_map_fd, drops_map_fd),
        label(_DONE),
        mov64_imm(R0, verdict),
        exit_(),
    ]
    return resolve(items)
