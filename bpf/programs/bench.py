"""A synthetic event producer for benchmarks: one fixed-size event per run.

A SOCKET_FILTER program driven by BPF_PROG_TEST_RUN with a large ``repeat``
produces events as fast as the kernel can run it, with contents a consumer
can check: a per-CPU sequence number that counts every attempt (so a gap is
a drop) and padding derived from the timestamp. It matches the C producer
of the anchor benchmark (``bench.bpf.c``) byte for byte, so both can feed
the same consumer.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from ebcap.bpf.asm import (
    DW,
    FP,
    R0,
    R1,
    R2,
    R3,
    R6,
    R7,
    R8,
    R9,
    Instruction,
    Item,
    W,
    add64_imm,
    alu64_reg,
    call,
    exit_,
    ja,
    jmp_imm,
    label,
    ld_imm64,
    ld_map_fd,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    resolve,
    st_mem,
    stx_mem,
)
from ebcap.bpf.programs.common import TRANSPORT_RINGBUF, check_transport, output_call
from ebcap.errors import UsageError

MIN_SIZE: Final = 16
MAX_SIZE: Final = 4096
STACK_EVENT_MAX: Final = 496
"""Largest perf event built on the 512-byte stack (below two 8-byte slots); bigger
ones use a scratch map value."""

PAD_MAGIC: Final = 0x5A5AA5A5C3C33C3C
"""Every padding word is ``ts ^ PAD_MAGIC``."""

BENCH_STATS: Final = np.dtype([("invocations", "<u8"), ("drops", "<u8")])
"""Value of the per-CPU stats map (PERCPU_ARRAY, key u32 0): attempts and drops."""
STATS_INVOCATIONS, STATS_DROPS = 0, 1
"""Which u64 of a :data:`BENCH_STATS` value counts attempts and which drops."""

_KEY_SLOT: Final = -8  # u32 key 0 for the stats and scratch lookups
_CPU_SLOT: Final = -16  # u32 CPU number, kept across the next call
_SKIP: Final = "skip"
_FILL: Final = "fill"


def check_size(size: int) -> int:
    """Return ``size`` if it is a multiple of 8 in 16..4096, else raise UsageError."""
    if not MIN_SIZE <= size <= MAX_SIZE or size % 8:
        raise UsageError(f"event size {size}: must be a multiple of 8 in {MIN_SIZE}..{MAX_SIZE}")
    return size


def bench_event_dtype(size: int) -> np.dtype:
    """The event layout for ``size`` bytes: ts, cpu, seq, then (size - 16) / 8 pad words."""
    fields: list[tuple[str, str] | tuple[str, str, tuple[int]]] = [
        ("ts", "<u8"),  # bpf_ktime_get_ns(): CLOCK_MONOTONIC
        ("cpu", "<u4"),  # bpf_get_smp_processor_id()
        ("seq", "<u4"),  # per-CPU invocation number from 0, drops included
    ]
    pad_words = (check_size(size) - MIN_SIZE) // 8
    if pad_words:
        fields.append(("pad", "<u8", (pad_words,)))
    return np.dtype(fields)


def needs_scratch_map(transport: str, size: int) -> bool:
    """True when the perf program needs a scratch PERCPU_ARRAY (value ``size`` bytes)."""
    return check_transport(transport) != TRANSPORT_RINGBUF and check_size(size) > STACK_EVENT_MAX


def _fill(buf: int, size: int) -> list[Item]:
    """Write the event at ``buf`` from r9 = ts, the CPU slot and r8 = seq (clobbers r1)."""
    items: list[Item] = [
        stx_mem(DW, buf, R9, 0),
        ldx_mem(W, R1, FP, _CPU_SLOT),
        stx_mem(W, buf, R1, 8),
        stx_mem(W, buf, R8, 12),
    ]
    if size > MIN_SIZE:
        items += [ld_imm64(R1, PAD_MAGIC), alu64_reg("xor", R1, R9)]
        items += [stx_mem(DW, buf, R1, off) for off in range(MIN_SIZE, size, 8)]
    return items


def build_bench_program(
    transport: str,
    size: int,
    events_map_fd: int,
    stats_map_fd: int,
    *,
    scratch_map_fd: int | None = None,
) -> list[Instruction]:
    """The producer (BPF_PROG_TYPE_SOCKET_FILTER, returns 0), labels resolved.

    ``scratch_map_fd`` (a PERCPU_ARRAY, key u32, value ``size`` bytes, 1 entry)
    is needed when :func:`needs_scratch_map` says so.
    """
    check_size(size)
    scratch = needs_scratch_map(transport, size)
    if scratch and scratch_map_fd is None:
        raise UsageError(f"a {size}-byte perf event needs a scratch map (over {STACK_EVENT_MAX})")
    items: list[Item] = [
        mov64_reg(R6, R1),  # r6 = ctx
        # r7 = &stats[0]; r8 = seq = stats->invocations++
        st_mem(W, FP, _KEY_SLOT, 0),
        ld_map_fd(R1, stats_map_fd),
        mov64_reg(R2, FP),
        add64_imm(R2, _KEY_SLOT),
        call("BPF_FUNC_map_lookup_elem"),
        jmp_imm("jeq", R0, 0, _SKIP),
        mov64_reg(R7, R0),
        ldx_mem(DW, R8, R7, 8 * STATS_INVOCATIONS),
        mov64_reg(R1, R8),
        add64_imm(R1, 1),
        stx_mem(DW, R7, R1, 8 * STATS_INVOCATIONS),
        call("BPF_FUNC_get_smp_processor_id"),
        stx_mem(W, FP, R0, _CPU_SLOT),
        call("BPF_FUNC_ktime_get_ns"),
        mov64_reg(R9, R0),  # r9 = ts
    ]
    drops = 8 * STATS_DROPS
    drop = [ldx_mem(DW, R1, R7, drops), add64_imm(R1, 1), stx_mem(DW, R7, R1, drops)]
    if transport == TRANSPORT_RINGBUF:
        items += [
            ld_map_fd(R1, events_map_fd),
            mov64_imm(R2, size),
            mov64_imm(R3, 0),
            call("BPF_FUNC_ringbuf_reserve"),
            jmp_imm("jne", R0, 0, _FILL),
            *drop,
            ja(_SKIP),
            label(_FILL),
            *_fill(R0, size),
            mov64_reg(R1, R0),
            mov64_imm(R2, 0),
            call("BPF_FUNC_ringbuf_submit"),
        ]
    else:
        if scratch_map_fd is not None and scratch:
            items += [
                ld_map_fd(R1, scratch_map_fd),
                mov64_reg(R2, FP),
                add64_imm(R2, _KEY_SLOT),
                call("BPF_FUNC_map_lookup_elem"),
                jmp_imm("jeq", R0, 0, _SKIP),
            ]
        else:
            items += [mov64_reg(R0, FP), add64_imm(R0, _CPU_SLOT - size)]
        items += [
            *_fill(R0, size),
            mov64_reg(R9, R0),  # r9 = &event (ts is written)
            *output_call(transport, events_map_fd, ctx_reg=R6, buf_reg=R9, size=size),
            jmp_imm("jeq", R0, 0, _SKIP),
            *drop,
        ]
    items += [label(_SKIP), mov64_imm(R0, 0), exit_()]
    return resolve(items)
