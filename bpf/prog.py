"""Loading BPF programs, running them on test input, and listing what is loaded.

A rejected program raises :class:`~ebcap.errors.VerifierError` carrying the
verifier's log: the first load goes without a log (fast path), and only a
failure is repeated with logging on, as libbpf does.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Self

from ebcap.bpf import _sys
from ebcap.bpf._fd import OwnedFd
from ebcap.bpf.asm import INSN_SIZE, Item, assemble
from ebcap.bpf.maps import encode_obj_name
from ebcap.errors import KernelError, NotSupportedError, UsageError, VerifierError

PROG_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {v: k for k, v in vars(_sys).items() if k.startswith("BPF_PROG_TYPE_")}
)
"""Program type number -> uapi name, for messages."""

PROG_TYPE_CAPABILITIES: Final[Mapping[int, tuple[str, ...]]] = MappingProxyType(
    {
        _sys.BPF_PROG_TYPE_SOCKET_FILTER: ("CAP_BPF",),
        _sys.BPF_PROG_TYPE_SCHED_CLS: ("CAP_BPF", "CAP_NET_ADMIN"),
        _sys.BPF_PROG_TYPE_XDP: ("CAP_BPF", "CAP_NET_ADMIN"),
        _sys.BPF_PROG_TYPE_TRACEPOINT: ("CAP_BPF", "CAP_PERFMON"),
        _sys.BPF_PROG_TYPE_RAW_TRACEPOINT: ("CAP_BPF", "CAP_PERFMON"),
    }
)
"""What BPF_PROG_LOAD checks per program type (bpf_prog_load in kernel/bpf/syscall.c:
CAP_BPF, plus CAP_NET_ADMIN for networking types and CAP_PERFMON for tracing ones)."""

VERIFIER_LOG_SIZE: Final = 4 << 20
"""Bytes of verifier log kept when a load fails (the kernel keeps the tail)."""
LOG_CUT: Final = f"[the verifier's log was longer than {VERIFIER_LOG_SIZE >> 20} MiB: its end]\n"
"""Put before a log the kernel cut (it answers ENOSPC, and keeps the end)."""

U32_MAX: Final = 0xFFFF_FFFF
"""The largest ``repeat`` and input size of a test run (u32 fields of bpf_attr)."""

_LOG_NOISE: Final = ("processed ", "verification time", "stack depth", "max_states_per_insn")


@dataclass(frozen=True)
class ProgramInfo:
    """What the kernel reports about a loaded program (struct bpf_prog_info)."""

    id: int
    type: int
    name: str
    tag: str


@dataclass(frozen=True)
class TestRunResult:
    """Outcome of BPF_PROG_TEST_RUN: the program's return value and mean ns per run."""

    __test__ = False  # not a pytest class despite the name

    retval: int
    duration_ns: int


def prog_type_name(prog_type: int) -> str:
    """``BPF_PROG_TYPE_XDP`` for 6; ``program type N`` for a number ebcap does not name."""
    return PROG_TYPE_NAMES.get(prog_type, f"program type {prog_type}")


def verifier_summary(log: str) -> str:
    """The line of a verifier log that says what went wrong.

    The kernel ends a rejection with the reason followed by statistics
    ("processed N insns ..."); the reason is the last line that is not one.
    """
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(_LOG_NOISE):
            return line
    return "no reason given"


class Program(OwnedFd):
    """One loaded BPF program fd. Build with :meth:`load`."""

    kind = "program"

    def __init__(self, fd: int, verifier_log: str = "") -> None:
        """Take ownership of ``fd``; it is closed if reading its info fails."""
        super().__init__(fd)
        self.verifier_log = verifier_log
        """The verifier's log of a load with ``log_level`` > 0, else empty."""
        try:
            self._info = _read_info(fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def load(
        cls,
        prog_type: int,
        instructions: bytes | Sequence[Item],
        *,
        license: str = "GPL",
        name: str = "",
        expected_attach_type: int = 0,
        log_level: int = 0,
    ) -> Self:
        """BPF_PROG_LOAD; a rejection raises VerifierError with the verifier log."""
        code = instructions if isinstance(instructions, bytes) else assemble(instructions)
        if not code or len(code) % INSN_SIZE:
            raise UsageError(f"program of {len(code)} bytes: need a non-empty multiple of 8")
        code_buf = ctypes.create_string_buffer(code, len(code))
        license_buf = ctypes.create_string_buffer(license.encode())
        attr = _sys.ProgLoadAttr(
            prog_type=prog_type,
            insn_cnt=len(code) // INSN_SIZE,
            insns=ctypes.addressof(code_buf),
            license=ctypes.addressof(license_buf),
            prog_name=encode_obj_name(name),
            expected_attach_type=expected_attach_type,
        )
        log_buf = ctypes.create_string_buffer(VERIFIER_LOG_SIZE) if log_level else None
        try:
            fd = _load(attr, log_level, log_buf)
        except KernelError as exc:
            if exc.errno == errno.EPERM:
                raise  # a missing capability: no verifier log would say more (EACCES would)
            failure = exc
        else:
            return cls(fd, _text(log_buf))
        cut = False
        if log_buf is not None and failure.errno == errno.ENOSPC:
            # The log outgrew its buffer, which alone fails a load: try without one.
            cut = True
            try:
                fd = _load(attr, 0)
            except KernelError as exc:
                failure = exc  # the real reason; the buffer holds the end of its log
            else:
                return cls(fd, LOG_CUT + _text(log_buf))
        elif log_buf is None:  # load again with the log on, to say why
            log_buf = ctypes.create_string_buffer(VERIFIER_LOG_SIZE)
            try:
                fd = _load(attr, 1, log_buf)
            except KernelError as exc:
                cut = exc.errno == errno.ENOSPC  # a cut log: the first errno is the reason
                if not cut:
                    failure = exc
            else:
                return cls(fd)
        log = _text(log_buf)
        if not log.strip():
            if failure.errno == errno.EINVAL:  # no log: the kernel refused before verifying
                kind = prog_type_name(prog_type)
                raise KernelError(
                    f"bpf(BPF_PROG_LOAD) of a {kind} program: invalid argument (this kernel "
                    f"may not know {kind}, or the attach type does not fit it)",
                    failure.errno,
                ) from None
            raise failure
        label = f"program {name!r}" if name else "program"
        raise VerifierError(
            f"{label} rejected by the verifier: {verifier_summary(log)} (see .log)",
            LOG_CUT + log if cut else log,
            failure.errno,
        )

    @property
    def info(self) -> ProgramInfo:
        return self._info

    @property
    def id(self) -> int:
        return self._info.id

    def test_run(self, data: bytes, repeat: int = 1, ctx: bytes | None = None) -> TestRunResult:
        """BPF_PROG_TEST_RUN: run the program ``repeat`` times on ``data`` (and ``ctx``)."""
        check_test_run_input(len(data), repeat, None if ctx is None else len(ctx))
        data_buf = ctypes.create_string_buffer(data, len(data))
        attr = _sys.ProgTestRunAttr(
            prog_fd=self.fd,
            data_size_in=len(data),
            data_in=ctypes.addressof(data_buf),
            repeat=repeat,
        )
        if ctx is not None:
            ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
            attr.ctx_size_in = len(ctx)
            attr.ctx_in = ctypes.addressof(ctx_buf)
        try:
            _sys.bpf(_sys.BPF_PROG_TEST_RUN, attr)
        except NotSupportedError as exc:  # the command exists; this program type has none
            kind = prog_type_name(self._info.type)
            raise NotSupportedError(
                f"bpf(BPF_PROG_TEST_RUN): {kind} programs have no test runs on this kernel",
                f"BPF_PROG_TEST_RUN of {kind}",
                exc.errno,
            ) from None
        return TestRunResult(retval=attr.retval, duration_ns=attr.duration)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        kind = prog_type_name(self._info.type)
        return f"<Program {self._info.name!r} id={self._info.id} {kind} {state}>"


def check_test_run_input(data_size: int, repeat: int, ctx_size: int | None = None) -> None:
    """UsageError unless each fits its u32 field of BPF_PROG_TEST_RUN: ctypes would
    keep the low 32 bits, and 2**32 + 3 runs would silently be 3."""
    if not 1 <= repeat <= U32_MAX:
        raise UsageError(f"repeat must be 1..{U32_MAX}, not {repeat}")
    for what, size in (("data", data_size), ("ctx", ctx_size)):
        if size is not None and size > U32_MAX:
            raise UsageError(f"test run {what} of {size} bytes: at most {U32_MAX}")


def _load(
    attr: _sys.ProgLoadAttr, log_level: int, log_buf: ctypes.Array[ctypes.c_char] | None = None
) -> int:
    """One BPF_PROG_LOAD attempt; with no log buffer, no log is asked for."""
    attr.log_level = log_level if log_buf is not None else 0
    attr.log_size = len(log_buf) if log_buf is not None else 0
    attr.log_buf = ctypes.addressof(log_buf) if log_buf is not None else 0
    needs = PROG_TYPE_CAPABILITIES.get(attr.prog_type, ("CAP_BPF",))
    return _sys.bpf(_sys.BPF_PROG_LOAD, attr, capabilities=needs)


def _text(log_buf: ctypes.Array[ctypes.c_char] | None) -> str:
    return "" if log_buf is None else log_buf.value.decode(errors="replace")


def _read_info(fd: int) -> ProgramInfo:
    raw = _sys.BpfProgInfo()
    _sys.obj_get_info_by_fd(fd, raw)
    return ProgramInfo(
        id=raw.id,
        type=raw.type,
        name=raw.name.decode(errors="replace"),
        tag=bytes(raw.tag).hex(),
    )


def loaded_program_ids() -> list[int]:
    """Ids of every BPF program loaded in the kernel right now."""
    ids: list[int] = []
    next_id = _sys.get_next_id(_sys.BPF_PROG_GET_NEXT_ID, 0)
    while next_id is not None:
        ids.append(next_id)
        next_id = _sys.get_next_id(_sys.BPF_PROG_GET_NEXT_ID, next_id)
    return ids


def program_name_by_id(prog_id: int) -> str:
    """Name of the loaded program ``prog_id`` (BpfObjectNotFoundError if it is gone)."""
    with Program(_sys.get_fd_by_id(_sys.BPF_PROG_GET_FD_BY_ID, prog_id)) as prog:
        return prog.info.name
