"""A program generated for one tracepoint: copy its record, resolve its strings, emit.

A BPF_PROG_TYPE_TRACEPOINT program receives a pointer to the raw record the
kernel fills for the event (the layout ``events/CAT/NAME/format`` describes).
The generated program builds the event in a per-CPU scratch slot (events can
be larger than the 512-byte BPF stack)::

    u64 ts_ns; u32 cpu; u32 pad;            the built-in header
    u8  record[record_bytes];               the fixed part, copied as is
    struct { u32 head; u8 data[string_bytes]; } slots[n];
                                            one per __data_loc / __rel_loc field
                                            and per user string (see below)

and hands it to the transport. The scratch value is reused by every event on
its CPU, and a string read stops at the NUL: each slot's data is first zeroed
with one ``bpf_probe_read_kernel`` from ``string_bytes`` zero bytes kept after
the event in the same value (nothing writes them), so no byte of an earlier,
longer string stays behind a shorter one.

The kernel overwrites the first 8 bytes of the record (the common header)
with a ``struct pt_regs *`` before it runs a BPF program
(``perf_trace_run_bpf_submit``), so ``common_type``, ``common_flags`` and
``common_preempt_count`` are lost: the program zeroes them (no kernel address
ends up in a file) and writes ``common_pid`` itself, from
``bpf_get_current_pid_tgid`` (the thread id, as the kernel would). The fixed part is copied with one
``bpf_probe_read_kernel`` (bounded by :data:`RECORD_MAX`); each dynamic field
is copied from where its u32 locator points: text with
``bpf_probe_read_kernel_str`` (always NUL-terminated, cut to the slot), bytes
with ``bpf_probe_read_kernel`` (at most the slot), the slot's ``head`` holding
the field's whole length (so a cut is known) or :data:`BYTES_UNREADABLE`. A
user string (a ``const char *`` syscall argument,
:attr:`FieldKind.USER_STRING`) is read from the calling process's memory with
``bpf_probe_read_user_str``.

The ``head`` of a text slot is its :data:`STRING_COMPLETE`,
:data:`STRING_TRUNCATED` (the text was longer than the slot: it holds the
first ``string_bytes - 1`` bytes) or :data:`STRING_UNREADABLE` (the read
failed: a NULL pointer, or user memory not paged in, which a tracepoint
program may not fault in). A data_loc string is truncated when its locator's
length (NUL included) exceeds the slot; a user string when the read filled
the slot and the byte the NUL replaced is not a NUL itself (one more
one-byte read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

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
    B,
    Instruction,
    Item,
    W,
    add64_imm,
    alu64_imm,
    alu64_reg,
    call,
    exit_,
    ja,
    jmp_imm,
    label,
    ld_map_fd,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    resolve,
    st_mem,
    stx_mem,
)
from ebcap.bpf.programs.common import emit_event
from ebcap.bpf.tracefs import LOC_LENGTH_SHIFT, LOC_OFFSET_MASK, FieldKind, TracepointFormat
from ebcap.errors import UsageError

HEADER_TS: Final = 0
HEADER_CPU: Final = 8
HEADER_SIZE: Final = 16
"""``u64 ts_ns; u32 cpu; u32 pad``: the header of every built-in event."""

COMMON_PID: Final = "common_pid"
COMMON_HEADER_SIZE: Final = 8
"""``struct trace_entry``: what the kernel replaces with a pointer for BPF."""
RECORD_MAX: Final = 1024
"""Bytes of the fixed record copied at most; fields beyond are not decoded."""
STRING_BYTES_DEFAULT: Final = 256
STRING_BYTES_MAX: Final = 4096
"""PATH_MAX: the longest string a slot holds (longer ones are truncated)."""
SLOT_HEAD_SIZE: Final = 4
"""Every slot starts with a u32: the field's length (bytes), or the string status (text)."""
STRING_COMPLETE: Final = 0
STRING_TRUNCATED: Final = 1
STRING_UNREADABLE: Final = 2
BYTES_UNREADABLE: Final = 0xFFFF_FFFF
"""Head of a bytes slot whose read failed: no locator length (16 bits) reaches it."""

_KEY_SLOT: Final = -8
_BYTE_SLOT: Final = -16
_DONE: Final = "done"


@dataclass(frozen=True)
class DynamicSlot:
    """Where the copy of one dynamic field or user string lives in the event."""

    name: str
    offset: int
    """Event offset of the slot's u32 head; the data follows it."""
    size: int
    """Bytes of data the slot holds."""
    text: bool

    @property
    def data_offset(self) -> int:
        return self.offset + SLOT_HEAD_SIZE


@dataclass(frozen=True)
class TracepointEventLayout:
    """Byte positions of a tracepoint event as the generated program writes it."""

    record_bytes: int
    """Bytes of the record copied after the header (a multiple of 8)."""
    slots: tuple[DynamicSlot, ...]
    size: int

    @property
    def record_offset(self) -> int:
        return HEADER_SIZE

    @property
    def zeros_offset(self) -> int:
        """Scratch offset of the zero bytes a slot is cleared from (after the event)."""
        return self.size

    @property
    def scratch_size(self) -> int:
        """Bytes of the scratch value: the event, then a slot's worth of zeros."""
        return self.size + max((slot.size for slot in self.slots), default=0)


def event_layout(fmt: TracepointFormat, string_bytes: int) -> TracepointEventLayout:
    """Where everything goes for ``fmt``, strings truncated to ``string_bytes``."""
    if not 8 <= string_bytes <= STRING_BYTES_MAX:
        raise UsageError(f"string size {string_bytes} out of range: use 8..{STRING_BYTES_MAX}")
    record_bytes = min(-(-fmt.record_size // 8) * 8, RECORD_MAX)
    offset = HEADER_SIZE + record_bytes
    slots = []
    for field in fmt.fields:
        if not field.has_slot or field.end > record_bytes:
            continue
        text = field.kind is not FieldKind.DYNAMIC_BYTES
        slots.append(DynamicSlot(field.name, offset, string_bytes, text))
        offset += SLOT_HEAD_SIZE + string_bytes
    return TracepointEventLayout(record_bytes, tuple(slots), -(-offset // 8) * 8)


def _string_status(slot: DynamicSlot, truncated: Sequence[Item], done: str) -> list[Item]:
    """Set the head of a text slot after a *_str read (r0): unreadable, or what
    ``truncated`` (which jumps to ``done`` when complete) finds."""
    failed, complete = f"failed_{slot.name}", f"complete_{slot.name}"
    return [
        jmp_imm("jslt", R0, 0, failed),
        *truncated,
        st_mem(W, R7, slot.offset, STRING_TRUNCATED),
        ja(done),
        label(failed),
        st_mem(W, R7, slot.offset, STRING_UNREADABLE),
        ja(done),
        label(complete),
        st_mem(W, R7, slot.offset, STRING_COMPLETE),
        label(done),
    ]


def _copy_user_string(fmt: TracepointFormat, slot: DynamicSlot) -> list[Item]:
    """Read the user string a pointer field points to: r6 = record, r7 = event; R0-R3, R8."""
    field = fmt.field(slot.name)
    done, complete = f"done_{slot.name}", f"complete_{slot.name}"
    check_last_byte: list[Item] = [
        jmp_imm("jlt", R0, slot.size, complete),  # r0 counts the NUL: it fitted
        mov64_reg(R1, FP),
        add64_imm(R1, _BYTE_SLOT),
        mov64_imm(R2, 1),
        mov64_reg(R3, R8),
        add64_imm(R3, slot.size - 1),
        call("BPF_FUNC_probe_read_user"),  # the byte the NUL replaced
        jmp_imm("jne", R0, 0, f"truncated_{slot.name}"),
        ldx_mem(B, R1, FP, _BYTE_SLOT),
        jmp_imm("jeq", R1, 0, complete),
        label(f"truncated_{slot.name}"),
    ]
    return [
        ldx_mem(DW, R8, R6, field.offset),  # r8 = the user pointer
        mov64_reg(R1, R7),
        add64_imm(R1, slot.data_offset),
        mov64_imm(R2, slot.size),
        mov64_reg(R3, R8),
        call("BPF_FUNC_probe_read_user_str"),
        *_string_status(slot, check_last_byte, done),
    ]


def _clear_slot(slot: DynamicSlot, zeros_offset: int) -> list[Item]:
    """Zero a slot's data from the scratch value's zero bytes (r7 = event; R0-R3)."""
    return [
        mov64_reg(R1, R7),
        add64_imm(R1, slot.data_offset),
        mov64_imm(R2, slot.size),
        mov64_reg(R3, R7),
        add64_imm(R3, zeros_offset),
        call("BPF_FUNC_probe_read_kernel"),
    ]


def _copy_dynamic(fmt: TracepointFormat, slot: DynamicSlot) -> list[Item]:
    """Copy one dynamic field into its (zeroed) slot: r6 = record, r7 = event; R0-R3,
    R8 clobbered."""
    field = fmt.field(slot.name)
    if field.kind is FieldKind.USER_STRING:
        return _copy_user_string(fmt, slot)
    items: list[Item] = [
        ldx_mem(W, R8, R6, field.offset),  # r8 = length << 16 | offset
        mov64_reg(R3, R8),
        alu64_imm("and", R3, LOC_OFFSET_MASK),
    ]
    if field.relative:
        items.append(add64_imm(R3, field.end))
    items.append(alu64_reg("add", R3, R6))  # r3 = record + offset
    data_at = slot.data_offset
    if slot.text:
        complete = f"complete_{slot.name}"
        fits = [
            alu64_imm("rsh", R8, LOC_LENGTH_SHIFT),  # r8 = length, NUL included
            jmp_imm("jle", R8, slot.size, complete),
        ]
        return [
            *items,
            mov64_reg(R1, R7),
            add64_imm(R1, data_at),
            mov64_imm(R2, slot.size),
            call("BPF_FUNC_probe_read_kernel_str"),
            *_string_status(slot, fits, f"done_{slot.name}"),
        ]
    clamped = f"clamped_{slot.name}"
    empty = f"empty_{slot.name}"
    return [
        *items,
        alu64_imm("rsh", R8, LOC_LENGTH_SHIFT),  # r8 = length
        stx_mem(W, R7, R8, slot.offset),  # the whole length: more than the slot = cut
        jmp_imm("jle", R8, slot.size, clamped),
        mov64_imm(R8, slot.size),
        label(clamped),
        jmp_imm("jlt", R8, 1, empty),
        mov64_reg(R1, R7),
        add64_imm(R1, data_at),
        mov64_reg(R2, R8),
        call("BPF_FUNC_probe_read_kernel"),
        jmp_imm("jeq", R0, 0, empty),
        st_mem(W, R7, slot.offset, BYTES_UNREADABLE - (1 << 32)),  # the imm is signed
        label(empty),
    ]


def build_tracepoint_program(
    fmt: TracepointFormat,
    layout: TracepointEventLayout,
    transport: str,
    events_map_fd: int,
    drops_map_fd: int,
    scratch_map_fd: int,
) -> list[Instruction]:
    """The TRACEPOINT program for ``fmt``, labels resolved.

    ``scratch_map_fd`` is a one-slot PERCPU_ARRAY whose value holds
    ``layout.scratch_size`` bytes: the event is built there, not on the stack.
    """
    items: list[Item] = [
        mov64_reg(R6, R1),  # r6 = the raw record, kept across calls
        st_mem(W, FP, _KEY_SLOT, 0),
        ld_map_fd(R1, scratch_map_fd),
        mov64_reg(R2, FP),
        add64_imm(R2, _KEY_SLOT),
        call("BPF_FUNC_map_lookup_elem"),
        jmp_imm("jeq", R0, 0, _DONE),
        mov64_reg(R7, R0),  # r7 = the event being built
        # The verifier bounds this load, not the zeros read through a helper: a value
        # too small for them fails the load instead of copying what lies beyond it.
        ldx_mem(B, R0, R7, layout.scratch_size - 1),
        call("BPF_FUNC_ktime_get_ns"),
        stx_mem(DW, R7, R0, HEADER_TS),
        call("BPF_FUNC_get_smp_processor_id"),
        stx_mem(W, R7, R0, HEADER_CPU),
        st_mem(W, R7, HEADER_CPU + 4, 0),
        mov64_reg(R1, R7),
        add64_imm(R1, layout.record_offset),
        mov64_imm(R2, layout.record_bytes),
        mov64_reg(R3, R6),
        call("BPF_FUNC_probe_read_kernel"),  # zero-fills on failure
        st_mem(DW, R7, layout.record_offset, 0),  # the struct pt_regs * of the kernel
    ]
    if any(field.name == COMMON_PID for field in fmt.fields):
        items += [
            call("BPF_FUNC_get_current_pid_tgid"),
            stx_mem(W, R7, R0, layout.record_offset + fmt.field(COMMON_PID).offset),  # the tid
        ]
    for slot in layout.slots:
        items += [*_clear_slot(slot, layout.zeros_offset), *_copy_dynamic(fmt, slot)]
    items += [
        *emit_event(
            transport,
            events_map_fd,
            drops_map_fd,
            ctx_reg=R6,
            buf_reg=R7,
            size=layout.size,
            key_slot=_KEY_SLOT,
        ),
        label(_DONE),
        mov64_imm(R0, 0),
        exit_(),
    ]
    return resolve(items)
