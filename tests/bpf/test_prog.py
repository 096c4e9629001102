"""Programs on the real kernel: load, verifier rejections, test runs, id listing."""

from __future__ import annotations

import errno
import os

import pytest

from ebcap.bpf import _sys
from ebcap.bpf.asm import (
    DW,
    R0,
    R1,
    R3,
    R10,
    W,
    add64_imm,
    exit_,
    jmp_imm,
    label,
    ldx_mem,
    mov64_imm,
    stx_mem,
)
from ebcap.bpf.prog import (
    LOG_CUT,
    U32_MAX,
    Program,
    loaded_program_ids,
    program_name_by_id,
    verifier_summary,
)
from ebcap.errors import (
    BpfObjectNotFoundError,
    ClosedError,
    NotSupportedError,
    UsageError,
    VerifierError,
)

pytestmark = pytest.mark.privileged

SOCKET_FILTER = _sys.BPF_PROG_TYPE_SOCKET_FILTER
SKB_LEN_OFFSET = 0  # struct __sk_buff: __u32 len at offset 0
ETH_HLEN = 14  # a socket filter test run sees the packet after its Ethernet header


def test_test_run_returns_the_programs_value() -> None:
    with Program.load(SOCKET_FILTER, [mov64_imm(R0, 42), exit_()], name="ebcap_t_ret") as prog:
        result = prog.test_run(bytes(64), repeat=1000)
        assert result.retval == 42
        assert result.duration_ns < 1_000_000  # mean per run, not the total


def test_test_run_refuses_a_repeat_beyond_u32() -> None:
    """2**32 + 3 in the u32 field would run the program 3 times: refused before the call."""
    with Program.load(SOCKET_FILTER, [mov64_imm(R0, 42), exit_()], name="ebcap_t_ret") as prog:
        with pytest.raises(UsageError, match=r"repeat must be 1\.\.4294967295, not 4294967299"):
            prog.test_run(bytes(64), repeat=2**32 + 3)
        assert prog.test_run(bytes(64), repeat=U32_MAX // 1_000_000).retval == 42


def test_test_run_sees_the_input_packet() -> None:
    program = [ldx_mem(W, R0, R1, SKB_LEN_OFFSET), add64_imm(R0, 1000), exit_()]
    with Program.load(SOCKET_FILTER, program) as prog:
        assert prog.test_run(bytes(77)).retval == 1000 + 77 - ETH_HLEN
        assert prog.test_run(b"\xff" * 200, repeat=3).retval == 1000 + 200 - ETH_HLEN


def test_info_and_listing_by_id() -> None:
    with Program.load(SOCKET_FILTER, [mov64_imm(R0, 0), exit_()], name="ebcap_t_info") as prog:
        assert prog.info.type == SOCKET_FILTER
        assert prog.info.name == "ebcap_t_info"
        assert len(prog.info.tag) == 16
        assert prog.id in loaded_program_ids()
        assert program_name_by_id(prog.id) == "ebcap_t_info"
        prog_id = prog.id
    assert prog.closed
    assert prog_id not in loaded_program_ids()
    with pytest.raises(BpfObjectNotFoundError):
        program_name_by_id(prog_id)


def test_rejected_program_carries_the_verifier_log() -> None:
    # Reads R0 before anything wrote it.
    with pytest.raises(VerifierError) as err:
        Program.load(SOCKET_FILTER, [exit_()], name="ebcap_t_bad")
    exc = err.value
    assert "R0 !read_ok" in exc.log
    assert "processed" in exc.log
    assert str(exc) == "program 'ebcap_t_bad' rejected by the verifier: R0 !read_ok (see .log)"
    assert exc.errno != 0


def test_rejected_stack_access_names_the_problem() -> None:
    # Reads above the frame pointer: outside the 512-byte stack.
    program = [ldx_mem(DW, R0, R10, 8), exit_()]
    with pytest.raises(VerifierError, match="invalid read from stack") as err:
        Program.load(SOCKET_FILTER, program, log_level=1)
    assert "invalid read from stack" in err.value.log


def test_log_level_keeps_the_log_of_a_good_load() -> None:
    program = [mov64_imm(R0, 0), stx_mem(DW, R10, R0, -8), exit_()]
    with Program.load(SOCKET_FILTER, program, log_level=1) as prog:
        assert "processed 3 insns" in prog.verifier_log
    with Program.load(SOCKET_FILTER, program) as quiet:
        assert quiet.verifier_log == ""


LONG_LOOP = [
    mov64_imm(R0, 0),
    mov64_imm(R1, 0),
    label("loop"),
    add64_imm(R1, 1),
    jmp_imm("jlt", R1, 60_000, "loop"),  # verified pass by pass: a log of tens of MiB
]


def test_a_log_longer_than_its_buffer_does_not_reject_a_good_program() -> None:
    """The kernel fails a load whose log overflows (ENOSPC): the program itself is fine."""
    with Program.load(SOCKET_FILTER, [*LONG_LOOP, exit_()], log_level=1) as prog:
        assert prog.verifier_log.startswith(LOG_CUT)
        assert "processed" in prog.verifier_log[-4096:]  # the end of the log is kept


@pytest.mark.parametrize("log_level", [0, 1])
def test_a_cut_log_keeps_the_real_reason_of_a_rejection(log_level: int) -> None:
    program = [*LONG_LOOP, ldx_mem(DW, R0, R3, 0), exit_()]  # R3 was never written
    with pytest.raises(VerifierError) as err:
        Program.load(SOCKET_FILTER, program, log_level=log_level)
    assert err.value.errno == errno.EACCES, "ENOSPC says only that the log was cut"
    assert err.value.log.startswith(LOG_CUT)
    assert "R3 !read_ok" in str(err.value)


def test_a_type_without_test_runs_is_named() -> None:
    program = [mov64_imm(R0, 0), exit_()]
    with (
        Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, program) as prog,
        pytest.raises(NotSupportedError) as err,
    ):
        prog.test_run(bytes(64))
    assert str(err.value) == (
        "bpf(BPF_PROG_TEST_RUN): BPF_PROG_TYPE_TRACEPOINT programs have no test runs on this kernel"
    )


def test_bad_bytecode_length_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="multiple of 8"):
        Program.load(SOCKET_FILTER, b"\x95\x00\x00")
    with pytest.raises(UsageError):
        Program.load(SOCKET_FILTER, b"")


def test_close_is_idempotent() -> None:
    prog = Program.load(SOCKET_FILTER, [mov64_imm(R0, 0), exit_()])
    fd = prog.fd
    prog.close()
    prog.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ClosedError):
        prog.test_run(bytes(64))


def test_verifier_summary_skips_statistics() -> None:
    log = "0: (95) exit\nR0 !read_ok\nprocessed 1 insns (limit 1000000)\n\n"
    assert verifier_summary(log) == "R0 !read_ok"
    assert verifier_summary("") == "no reason given"
