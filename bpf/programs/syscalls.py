"""Every syscall entry, system-wide: the raw tracepoint ``sys_enter`` program.

The raw tracepoint hands the program ``u64 args[2]``: a ``struct pt_regs *``
of the calling task and the syscall number. The program records who called
(tgid, tid, comm), where and when (CPU, CLOCK_MONOTONIC ns), the number and
the six argument registers of the x86-64 syscall ABI.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
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
    Instruction,
    Item,
    W,
    add64_imm,
    alu64_imm,
    call,
    exit_,
    jmp_imm,
    jmp_reg,
    label,
    ld_imm64,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    resolve,
    stx_mem,
)
from ebcap.bpf.programs.common import emit_event
from ebcap.errors import UsageError

RAW_TRACEPOINT: Final = "sys_enter"
COMM_LEN: Final = 16  # TASK_COMM_LEN
NUM_ARGS: Final = 6

SYSCALL_EVENT: Final = np.dtype(
    [
        ("ts_ns", "<u8"),  # bpf_ktime_get_ns(): CLOCK_MONOTONIC
        ("cpu", "<u4"),  # bpf_get_smp_processor_id()
        ("pid", "<u4"),  # tgid: the process
        ("tid", "<u4"),  # the thread
        ("nr", "<u4"),  # syscall number (raw tracepoint args[1])
        ("comm", f"S{COMM_LEN}"),  # bpf_get_current_comm()
        ("args", "<u8", (NUM_ARGS,)),  # di, si, dx, r10, r8, r9 of the caller's pt_regs
    ]
)
"""The event, 88 bytes, packed little-endian: its one definition."""

PT_REGS_ARG_OFFSETS: Final = (112, 104, 96, 56, 72, 64)
"""x86-64 ``struct pt_regs`` offsets of di, si, dx, r10, r8, r9: syscall args 1-6."""

RAW_TP_ARGS: Final[Mapping[str, int]] = MappingProxyType({"regs": 0, "id": 8})
"""sys_enter raw tracepoint context: ``u64 args[]`` = (struct pt_regs *regs, long id)."""

_EVENT_SIZE: Final = SYSCALL_EVENT.itemsize
_EVENT: Final = -_EVENT_SIZE  # the event lives at FP - 88 ...
_KEY_SLOT: Final = _EVENT - 8  # ... and the drop counter's key just below it
_SKIP: Final = "skip"


def _at(field: str, index: int = 0) -> int:
    """Stack offset (from FP) of ``field`` (element ``index`` of an array field)."""
    fields = SYSCALL_EVENT.fields
    if fields is None:  # pragma: no cover - SYSCALL_EVENT is a structured dtype
        raise TypeError("SYSCALL_EVENT has no fields")
    sub, offset = fields[field][:2]
    return _EVENT + int(offset) + index * int(sub.base.itemsize)


def build_syscalls_program(
    transport: str,
    events_map_fd: int,
    drops_map_fd: int,
    *,
    exclude_tgid: int = 0,
    only_tgid: int = 0,
    only_comm: bytes = b"",
) -> list[Instruction]:
    """The sys_enter program (BPF_PROG_TYPE_RAW_TRACEPOINT), labels resolved.

    ``exclude_tgid`` drops the events of one process (ebcap's own);
    ``only_tgid``, when not 0, keeps the events of that process only;
    ``only_comm``, when not empty, keeps the events of tasks of that name only
    (compared on the kernel's first 15 bytes, as ``comm`` is truncated).
    """
    for name, tgid in (("exclude_tgid", exclude_tgid), ("only_tgid", only_tgid)):
        if not 0 <= tgid < 1 << 31:
            raise UsageError(f"{name} {tgid} is not a process id")
    if b"\0" in only_comm:
        raise UsageError(f"process name {only_comm!r} contains a NUL byte")
    items: list[Item] = [
        mov64_reg(R6, R1),  # r6 = ctx, kept across calls
        call("BPF_FUNC_get_current_pid_tgid"),
        mov64_reg(R7, R0),  # r7 = tgid << 32 | tid
        mov64_reg(R8, R0),
        alu64_imm("rsh", R8, 32),  # r8 = tgid
    ]
    if exclude_tgid:
        items.append(jmp_imm("jeq", R8, exclude_tgid, _SKIP))
    if only_tgid:
        items.append(jmp_imm("jne", R8, only_tgid, _SKIP))
    items += [
        mov64_reg(R1, FP),
        add64_imm(R1, _at("comm")),
        mov64_imm(R2, COMM_LEN),
        call("BPF_FUNC_get_current_comm"),  # NUL-padded to 16 bytes
    ]
    if only_comm:
        wanted = only_comm[: COMM_LEN - 1].ljust(COMM_LEN, b"\0")
        for half in (0, 8):
            items += [
                ldx_mem(DW, R1, FP, _at("comm") + half),
                ld_imm64(R2, int.from_bytes(wanted[half : half + 8], "little")),
                jmp_reg("jne", R1, R2, _SKIP),
            ]
    items += [
        stx_mem(W, FP, R8, _at("pid")),
        stx_mem(W, FP, R7, _at("tid")),  # a 32-bit store keeps the low half: tid
        ldx_mem(DW, R1, R6, RAW_TP_ARGS["id"]),
        stx_mem(W, FP, R1, _at("nr")),
        call("BPF_FUNC_ktime_get_ns"),
        stx_mem(DW, FP, R0, _at("ts_ns")),
        call("BPF_FUNC_get_smp_processor_id"),
        stx_mem(W, FP, R0, _at("cpu")),
        ldx_mem(DW, R7, R6, RAW_TP_ARGS["regs"]),  # r7 = struct pt_regs *
    ]
    for index, reg_offset in enumerate(PT_REGS_ARG_OFFSETS):
        # bpf_probe_read_kernel(&event.args[index], 8, &regs->reg); zero-fills on failure
        items += [
            mov64_reg(R1, FP),
            add64_imm(R1, _at("args", index)),
            mov64_imm(R2, 8),
            mov64_reg(R3, R7),
            add64_imm(R3, reg_offset),
            call("BPF_FUNC_probe_read_kernel"),
        ]
    items += [
        mov64_reg(R7, FP),
        add64_imm(R7, _EVENT),  # r7 = &event
        *emit_event(
            transport,
            events_map_fd,
            drops_map_fd,
            ctx_reg=R6,
            buf_reg=R7,
            size=_EVENT_SIZE,
            key_slot=_KEY_SLOT,
        ),
        label(_SKIP),
        mov64_imm(R0, 0),
        exit_(),
    ]
    return resolve(items)
