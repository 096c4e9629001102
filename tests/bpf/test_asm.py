"""The assembler against hand-checked encodings (as ``llvm-objdump -d`` prints them)."""

from __future__ import annotations

import pytest

from ebcap.bpf import _sys
from ebcap.bpf.asm import (
    DW,
    FP,
    R0,
    R1,
    R2,
    R3,
    R10,
    B,
    Instruction,
    W,
    add64_imm,
    alu64_imm,
    assemble,
    call,
    exit_,
    ja,
    jmp_imm,
    jmp_reg,
    label,
    ld_imm64,
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
from ebcap.errors import UsageError


def test_return_zero() -> None:
    assert assemble([mov64_imm(R0, 0), exit_()]) == bytes.fromhex(
        "b700000000000000 9500000000000000"
    )


@pytest.mark.parametrize(
    ("insn", "encoding"),
    [
        (mov64_imm(R1, -1), "b701 0000 ffffffff"),
        (mov32_imm(R3, _sys.BPF_F_CURRENT_CPU), "b403 0000 ffffffff"),
        (mov64_reg(R1, R10), "bfa1 0000 00000000"),
        (add64_imm(R2, -16), "0702 0000 f0ffffff"),
        (alu64_imm("rsh", R0, 32), "7700 0000 20000000"),
        (ldx_mem(DW, R1, R0, 8), "7901 0800 00000000"),
        (ldx_mem(W, R0, R1, 4), "6110 0400 00000000"),
        (stx_mem(W, FP, R1, -4), "631a fcff 00000000"),
        (stx_mem(B, R1, R2, 3), "7321 0300 00000000"),
        (st_mem(W, FP, -8, 7), "620a f8ff 07000000"),
        (call("BPF_FUNC_perf_event_output"), "8500 0000 19000000"),
        (call("BPF_FUNC_ringbuf_reserve"), "8500 0000 83000000"),
        (call(5), "8500 0000 05000000"),
        (to_be(R3, 16), "dc03 0000 10000000"),
    ],
)
def test_single_slot_encodings(insn: Instruction, encoding: str) -> None:
    assert insn.encode() == bytes.fromhex(encoding)
    assert insn.slots == 1


def test_wide_immediates_take_two_slots() -> None:
    wide = ld_imm64(R1, 0x1122334455667788)
    assert wide.encode() == bytes.fromhex("1801 0000 88776655 0000 0000 44332211")
    assert wide.slots == 2
    # The map fd load marks src_reg = BPF_PSEUDO_MAP_FD (1): r1 = map fd 5.
    assert ld_map_fd(R1, 5).encode() == bytes.fromhex("1811 0000 05000000 0000 0000 00000000")


def test_labels_resolve_forward_and_backward_counting_wide_slots() -> None:
    program = [
        label("top"),
        jmp_imm("jeq", R1, 0, "out"),  # slot 0 -> out at slot 4: off 3
        ld_imm64(R2, 1),  # slots 1-2
        ja("top"),  # slot 3 -> 0: off -4
        label("out"),
        jmp_reg("jgt", R1, R2, "out"),  # slot 4 -> 4: off -1
        exit_(),
    ]
    offsets = [insn.off for insn in resolve(program)]
    assert offsets == [3, 0, -4, -1, 0]
    code = assemble(program)
    assert len(code) == 6 * 8
    assert code[:8] == bytes.fromhex("1501 0300 00000000")
    assert code[24:32] == bytes.fromhex("0500 fcff 00000000")
    assert code[32:40] == bytes.fromhex("2d21 ffff 00000000")


def test_undefined_label() -> None:
    with pytest.raises(UsageError, match="undefined label 'nowhere'"):
        assemble([ja("nowhere"), exit_()])


def test_duplicate_label() -> None:
    with pytest.raises(UsageError, match="label 'x' defined twice"):
        assemble([label("x"), mov64_imm(R0, 0), label("x"), exit_()])


def test_jump_out_of_range() -> None:
    program = [ja("far"), *[mov64_imm(R0, 0)] * 40000, label("far"), exit_()]
    with pytest.raises(UsageError, match="out of range"):
        assemble(program)


def test_unresolved_jump_cannot_be_encoded() -> None:
    with pytest.raises(UsageError, match="not resolved"):
        ja("x").encode()


@pytest.mark.parametrize(
    "build",
    [
        lambda: mov64_imm(11, 0),
        lambda: mov64_imm(R0, 1 << 32),
        lambda: ldx_mem(DW, R0, R1, 1 << 15),
        lambda: ldx_mem(0x20, R0, R1, 0),
        lambda: alu64_imm("rotate", R0, 1),
        lambda: jmp_imm("jbetween", R0, 1, "x"),
        lambda: call("BPF_FUNC_no_such_helper"),
        lambda: ld_imm64(R0, 1 << 64),
        lambda: to_be(R0, 8),
    ],
)
def test_bad_operands_are_usage_errors(build: object) -> None:
    with pytest.raises(UsageError):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    "build",
    [
        lambda: jmp_imm("jeq", R1, 0xFFFF_FFFF, "x"),
        lambda: add64_imm(R0, 0x8000_0000),
        lambda: mov64_imm(R0, 0xFFFF_FFFF),
        lambda: st_mem(DW, R10, -8, 0xFFFF_FFFF),
        lambda: st_mem(DW, R1, 0, 0x8000_0000),
    ],
)
def test_64_bit_operations_refuse_immediates_they_would_sign_extend(build: object) -> None:
    with pytest.raises(UsageError, match=r"sign-extended to 0xffffffff.*give it as -"):
        build()  # type: ignore[operator]


def test_32_bit_operations_and_stores_take_the_whole_unsigned_range() -> None:
    assert mov32_imm(R0, 0xFFFF_FFFF).encode() == bytes.fromhex("b4000000ffffffff")
    assert st_mem(W, R1, 0, 0xFFFF_FFFF).encode() == bytes.fromhex("62010000ffffffff")
    assert jmp_imm("jeq", R1, -1, "x").imm == -1  # what 0xffffffff means there
    assert st_mem(DW, R10, -8, -1).encode() == bytes.fromhex("7a0af8ffffffffff")
    assert st_mem(DW, R10, -8, 0x7FFF_FFFF).imm == 0x7FFF_FFFF


def test_instructions_are_frozen_values() -> None:
    insn = mov64_imm(R0, 3)
    assert insn == mov64_imm(R0, 3)
    with pytest.raises(AttributeError):
        insn.imm = 4  # type: ignore[misc]
