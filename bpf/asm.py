"""A small eBPF assembler: plain instructions, builder functions, jump labels.

Programs are lists of :class:`Instruction` and :class:`Label` built with the
functions below (named after the instruction classes of the kernel's
``Documentation/bpf/standardization/instruction-set.rst``), then turned into
bytecode by :func:`assemble`, which resolves labels. No clang or libbpf is
needed at run time, and a built-in program reads top to bottom like the
kernel's own ``BPF_*()`` macros.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

from ebcap.bpf import _sys
from ebcap.errors import UsageError

# Registers. R0 return value, R1-R5 arguments (clobbered by calls), R6-R9 kept
# across calls, R10 the read-only frame pointer (stack grows down from it).
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
FP: Final = R10
MAX_STACK: Final = 512

# Instruction classes.
BPF_LD: Final = 0x00
BPF_LDX: Final = 0x01
BPF_ST: Final = 0x02
BPF_STX: Final = 0x03
BPF_ALU: Final = 0x04
BPF_JMP: Final = 0x05
BPF_ALU64: Final = 0x07

# Sizes of loads and stores, as the kernel names them (BPF_W, BPF_H, ...).
W: Final = 0x00
H: Final = 0x08
B: Final = 0x10
DW: Final = 0x18
SIZE_BYTES: Final[Mapping[int, int]] = MappingProxyType({B: 1, H: 2, W: 4, DW: 8})

# Modes and operand sources.
BPF_IMM: Final = 0x00
BPF_MEM: Final = 0x60
BPF_K: Final = 0x00
BPF_X: Final = 0x08
BPF_PSEUDO_MAP_FD: Final = 1

ALU_OPS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
        "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0,
        "arsh": 0xC0,
    }
)  # fmt: skip
"""BPF_ADD ... BPF_ARSH by lower-case name."""

JMP_OPS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50, "jsgt": 0x60,
        "jsge": 0x70, "jlt": 0xA0, "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0,
    }
)  # fmt: skip
"""Conditional jumps BPF_JEQ ... BPF_JSLE by lower-case name (unsigned unless 's')."""

BPF_END: Final = 0xD0
BPF_TO_BE: Final = 0x08
"""Byte-order conversion (``BPF_ALU | BPF_END``): to big-endian, from this host's order."""
ENDIAN_BITS: Final = (16, 32, 64)

BPF_JA: Final = 0x00
BPF_CALL: Final = 0x80
BPF_EXIT: Final = 0x90

_INSN: Final = struct.Struct("<BBhi")
INSN_SIZE: Final = _INSN.size  # 8
_INT16: Final = range(-(1 << 15), 1 << 15)
_IMM32: Final = range(-(1 << 31), 1 << 32)
_S32: Final = range(-(1 << 31), 1 << 31)
_IMM64: Final = range(-(1 << 63), 1 << 64)


@dataclass(frozen=True)
class Instruction:
    """One eBPF instruction; ``target`` names the label a jump goes to until assembled.

    A 64-bit immediate load (``ld_imm64``, ``ld_map_fd``) is one Instruction
    with the whole value in ``imm`` that encodes to two 8-byte slots.
    """

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.dst <= R10 and 0 <= self.src <= R10):
            raise UsageError(f"bad register r{self.dst}/r{self.src}: registers are r0..r10")
        if self.off not in _INT16:
            raise UsageError(f"offset {self.off} does not fit in 16 bits")
        if self.imm not in (_IMM64 if self.is_wide else _IMM32):
            raise UsageError(f"immediate {self.imm} does not fit in the instruction")
        if self.imm not in _S32 and self.sign_extends_imm:
            raise UsageError(
                f"immediate {self.imm:#x} of a 64-bit operation or store would be sign-extended to "
                f"{(self.imm - (1 << 32)) & ((1 << 64) - 1):#x}: give it as "
                f"{self.imm - (1 << 32)}, or load it with ld_imm64"
            )

    @property
    def sign_extends_imm(self) -> bool:
        """A 64-bit ALU operation, comparison or store with an immediate: the kernel
        widens the 32-bit immediate with its sign, so 0xffffffff means -1 there."""
        cls, op = self.opcode & 0x07, self.opcode & 0xF0
        if self.opcode == BPF_ST | BPF_MEM | DW:
            return True
        if self.opcode & BPF_X:
            return False
        return cls == BPF_ALU64 or (cls == BPF_JMP and op in JMP_OPS.values())

    @property
    def is_wide(self) -> bool:
        """A 16-byte BPF_LD | BPF_IMM | BPF_DW instruction."""
        return self.opcode == BPF_LD | BPF_IMM | DW

    @property
    def slots(self) -> int:
        return 2 if self.is_wide else 1

    def encode(self) -> bytes:
        if self.target is not None:
            raise UsageError(f"jump to label {self.target!r} is not resolved; use assemble()")
        regs = (self.src << 4) | self.dst
        if self.is_wide:
            value = self.imm & 0xFFFF_FFFF_FFFF_FFFF
            low, high = _as_s32(value & 0xFFFF_FFFF), _as_s32(value >> 32)
            return _INSN.pack(self.opcode, regs, self.off, low) + _INSN.pack(0, 0, 0, high)
        return _INSN.pack(self.opcode, regs, self.off, _as_s32(self.imm & 0xFFFF_FFFF))


@dataclass(frozen=True)
class Label:
    """A jump target: marks the position of the next instruction."""

    name: str


Item = Instruction | Label


def _as_s32(u: int) -> int:
    return u - (1 << 32) if u & (1 << 31) else u


def _op(table: Mapping[str, int], kind: str, op: str) -> int:
    try:
        return table[op]
    except KeyError:
        raise UsageError(f"unknown {kind} op {op!r}; one of {', '.join(table)}") from None


def _size(size: int) -> int:
    if size not in SIZE_BYTES:
        raise UsageError(f"bad access size {size:#x}; use B, H, W or DW")
    return size


def label(name: str) -> Label:
    return Label(name)


def alu64_imm(op: str, dst: int, imm: int) -> Instruction:
    return Instruction(BPF_ALU64 | _op(ALU_OPS, "ALU", op) | BPF_K, dst=dst, imm=imm)


def alu64_reg(op: str, dst: int, src: int) -> Instruction:
    return Instruction(BPF_ALU64 | _op(ALU_OPS, "ALU", op) | BPF_X, dst=dst, src=src)


def alu32_imm(op: str, dst: int, imm: int) -> Instruction:
    """32-bit ALU: the result is zero-extended into the 64-bit register."""
    return Instruction(BPF_ALU | _op(ALU_OPS, "ALU", op) | BPF_K, dst=dst, imm=imm)


def mov64_imm(dst: int, imm: int) -> Instruction:
    """dst = imm, sign-extended from 32 bits."""
    return alu64_imm("mov", dst, imm)


def mov32_imm(dst: int, imm: int) -> Instruction:
    """dst = (u32)imm, zero-extended: how to load e.g. BPF_F_CURRENT_CPU."""
    return alu32_imm("mov", dst, imm)


def mov64_reg(dst: int, src: int) -> Instruction:
    return alu64_reg("mov", dst, src)


def add64_imm(dst: int, imm: int) -> Instruction:
    return alu64_imm("add", dst, imm)


def to_be(dst: int, bits: int) -> Instruction:
    """dst = htobe``bits``(dst), the upper bits cleared: a network-order field as a number."""
    if bits not in ENDIAN_BITS:
        raise UsageError(f"bad byte-order width {bits}; use 16, 32 or 64")
    return Instruction(BPF_ALU | BPF_END | BPF_TO_BE, dst=dst, imm=bits)


def ldx_mem(size: int, dst: int, src: int, off: int) -> Instruction:
    """dst = *(size *)(src + off)."""
    return Instruction(BPF_LDX | BPF_MEM | _size(size), dst=dst, src=src, off=off)


def stx_mem(size: int, dst: int, src: int, off: int) -> Instruction:
    """*(size *)(dst + off) = src."""
    return Instruction(BPF_STX | BPF_MEM | _size(size), dst=dst, src=src, off=off)


def st_mem(size: int, dst: int, off: int, imm: int) -> Instruction:
    """*(size *)(dst + off) = imm (a DW store widens imm with its sign)."""
    return Instruction(BPF_ST | BPF_MEM | _size(size), dst=dst, off=off, imm=imm)


def jmp_imm(op: str, dst: int, imm: int, target: str) -> Instruction:
    """if (dst op imm) goto target."""
    return Instruction(BPF_JMP | _op(JMP_OPS, "jump", op) | BPF_K, dst=dst, imm=imm, target=target)


def jmp_reg(op: str, dst: int, src: int, target: str) -> Instruction:
    """if (dst op src) goto target."""
    return Instruction(BPF_JMP | _op(JMP_OPS, "jump", op) | BPF_X, dst=dst, src=src, target=target)


def ja(target: str) -> Instruction:
    """goto target."""
    return Instruction(BPF_JMP | BPF_JA, target=target)


def helper_id(helper: str | int) -> int:
    """A helper's id from its uapi name (``"BPF_FUNC_ktime_get_ns"``) or the id itself."""
    if isinstance(helper, int):
        return helper
    try:
        return _sys.BPF_FUNC_IDS[helper]
    except KeyError:
        raise UsageError(f"unknown BPF helper {helper!r}") from None


def call(helper: str | int) -> Instruction:
    """R0 = helper(R1, ..., R5); R1-R5 are clobbered."""
    return Instruction(BPF_JMP | BPF_CALL, imm=helper_id(helper))


def exit_() -> Instruction:
    """return R0."""
    return Instruction(BPF_JMP | BPF_EXIT)


def ld_imm64(dst: int, value: int) -> Instruction:
    """dst = 64-bit value (two slots)."""
    return Instruction(BPF_LD | BPF_IMM | DW, dst=dst, imm=value)


def ld_map_fd(dst: int, fd: int) -> Instruction:
    """dst = the map behind ``fd`` (two slots; the verifier turns it into a map pointer)."""
    return Instruction(BPF_LD | BPF_IMM | DW, dst=dst, src=BPF_PSEUDO_MAP_FD, imm=fd)


def resolve(items: Sequence[Item]) -> list[Instruction]:
    """Instructions with every label target turned into a relative offset."""
    positions: dict[str, int] = {}
    slot = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in positions:
                raise UsageError(f"label {item.name!r} defined twice")
            positions[item.name] = slot
        else:
            slot += item.slots
    out: list[Instruction] = []
    slot = 0
    for item in items:
        if isinstance(item, Label):
            continue
        if item.target is not None:
            if item.target not in positions:
                raise UsageError(f"jump to undefined label {item.target!r}")
            off = positions[item.target] - (slot + 1)
            if off not in _INT16:
                raise UsageError(f"jump to {item.target!r} is {off} slots away: out of range")
            item = replace(item, off=off, target=None)
        out.append(item)
        slot += item.slots
    return out


def assemble(items: Sequence[Item]) -> bytes:
    """Bytecode for a program: labels resolved, 8 bytes per slot."""
    return b"".join(insn.encode() for insn in resolve(items))
