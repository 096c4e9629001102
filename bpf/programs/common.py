"""What every built-in program ends with: hand the event to the transport, count drops.

Two transports carry events to user space: ``perf`` (a PERF_EVENT_ARRAY, one
ring per CPU, ``bpf_perf_event_output``) and ``ringbuf`` (one BPF_MAP_TYPE_RINGBUF
shared by all CPUs, ``bpf_ringbuf_output``). Either can refuse an event when
its ring is full; the program then adds one to a per-CPU drop counter (a
PERCPU_ARRAY with one u64 at key 0) so that no loss goes unseen.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

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
    Item,
    W,
    add64_imm,
    call,
    jmp_imm,
    label,
    ld_map_fd,
    ldx_mem,
    mov32_imm,
    mov64_imm,
    mov64_reg,
    st_mem,
    stx_mem,
)
from ebcap.errors import UsageError

TRANSPORT_PERF: Final = "perf"
TRANSPORT_RINGBUF: Final = "ringbuf"
TRANSPORT_MAP_TYPES: Final[Mapping[str, int]] = MappingProxyType(
    {
        TRANSPORT_PERF: _sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY,
        TRANSPORT_RINGBUF: _sys.BPF_MAP_TYPE_RINGBUF,
    }
)
"""Transport name -> the map type that carries its events."""

DROPS_KEY_SIZE: Final = 4
DROPS_VALUE_SIZE: Final = 8
DROPS_MAX_ENTRIES: Final = 1
"""The drop counter map: PERCPU_ARRAY, key u32 0, value u64 per CPU."""

EMIT_DONE: Final = "emit_done"


def check_transport(transport: str) -> str:
    """Return ``transport`` if it is ``perf`` or ``ringbuf``, else raise UsageError."""
    if transport not in TRANSPORT_MAP_TYPES:
        raise UsageError(f"unknown transport {transport!r}: use {' or '.join(TRANSPORT_MAP_TYPES)}")
    return transport


def output_call(
    transport: str, events_map_fd: int, *, ctx_reg: int, buf_reg: int, size: int
) -> list[Item]:
    """Send ``size`` bytes at ``buf_reg``; R0 = 0 on success. R1-R5 are clobbered.

    perf:    bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, buf, size)
    ringbuf: bpf_ringbuf_output(&events, buf, size, 0)
    """
    if check_transport(transport) == TRANSPORT_PERF:
        return [
            mov64_reg(R1, ctx_reg),
            ld_map_fd(R2, events_map_fd),
            mov32_imm(R3, _sys.BPF_F_CURRENT_CPU),  # 32-bit move: no sign extension
            mov64_reg(R4, buf_reg),
            mov64_imm(R5, size),
            call("BPF_FUNC_perf_event_output"),
        ]
    return [
        ld_map_fd(R1, events_map_fd),
        mov64_reg(R2, buf_reg),
        mov64_imm(R3, size),
        mov64_imm(R4, 0),
        call("BPF_FUNC_ringbuf_output"),
    ]


def increment_counter(map_fd: int, *, key_slot: int, field_off: int, skip: str) -> list[Item]:
    """``*(u64 *)(lookup(map, &(u32)0) + field_off) += 1``; jumps to ``skip`` if no value.

    ``key_slot`` is a free 4-byte stack slot (negative offset from FP) for the
    key. Per-CPU values need no atomics: the program is not migrated while it
    runs. R0-R5 are clobbered.
    """
    return [
        st_mem(W, FP, key_slot, 0),
        ld_map_fd(R1, map_fd),
        mov64_reg(R2, FP),
        add64_imm(R2, key_slot),
        call("BPF_FUNC_map_lookup_elem"),
        jmp_imm("jeq", R0, 0, skip),
        ldx_mem(DW, R1, R0, field_off),
        add64_imm(R1, 1),
        stx_mem(DW, R0, R1, field_off),
    ]


def emit_event(
    transport: str,
    events_map_fd: int,
    drops_map_fd: int,
    *,
    ctx_reg: int,
    buf_reg: int,
    size: int,
    key_slot: int,
) -> list[Item]:
    """Send the event at ``buf_reg``; on failure add one to the drop counter.

    ``ctx_reg`` holds the program's context (a callee-saved register), and
    ``buf_reg`` points at the event (stack or map value). Ends at the label
    :data:`EMIT_DONE`, so use it once per program.
    """
    return [
        *output_call(transport, events_map_fd, ctx_reg=ctx_reg, buf_reg=buf_reg, size=size),
        jmp_imm("jeq", R0, 0, EMIT_DONE),
        *increment_counter(drops_map_fd, key_slot=key_slot, field_off=0, skip=EMIT_DONE),
        label(EMIT_DONE),
    ]
