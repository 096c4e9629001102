"""Attaching on the real kernel: a program counts this process's getppid() calls.

The count must equal the number of calls made while attached, and must stop
growing once the link is closed; no program or link may be left loaded.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from ebcap.bpf import _sys
from ebcap.bpf.asm import (
    DW,
    R0,
    R1,
    R6,
    Instruction,
    alu64_imm,
    call,
    exit_,
    jmp_imm,
    label,
    ldx_mem,
    mov64_imm,
    mov64_reg,
    resolve,
)
from ebcap.bpf.fs import ensure_tracefs
from ebcap.bpf.links import (
    attach_raw_tracepoint,
    attach_tracepoint,
    loaded_link_ids,
    perf_links_supported,
)
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program, loaded_program_ids
from ebcap.bpf.programs.common import increment_counter
from ebcap.errors import KernelError, MissingCapabilityError, NotSupportedError, UsageError

pytestmark = pytest.mark.privileged

NR_GETPPID = 110  # x86-64
RAW_TP_ID_OFFSET = 8  # sys_enter raw tracepoint: args[1] is the syscall number


def counting_program(counter_fd: int, *, syscall_nr: int | None) -> list[Instruction]:
    """counter[0] += 1 for each hit from this process (and of ``syscall_nr``, if given)."""
    items = [
        mov64_reg(R6, R1),
        call("BPF_FUNC_get_current_pid_tgid"),
        alu64_imm("rsh", R0, 32),
        jmp_imm("jne", R0, os.getpid(), "out"),
    ]
    if syscall_nr is not None:
        items += [
            ldx_mem(DW, R1, R6, RAW_TP_ID_OFFSET),
            jmp_imm("jne", R1, syscall_nr, "out"),
        ]
    items += [
        *increment_counter(counter_fd, key_slot=-8, field_off=0, skip="out"),
        label("out"),
        mov64_imm(R0, 0),
        exit_(),
    ]
    return resolve(items)


def total(counter: Map) -> int:
    return sum(struct.unpack("<Q", v)[0] for v in counter.lookup_percpu(bytes(4)))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """The kernel frees detached objects after an RCU grace period: poll briefly."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def counter_map() -> Map:
    return Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, name="ebcap_t_count")


def test_raw_tracepoint_counts_exactly_the_calls_made_while_attached() -> None:
    with counter_map() as counter:
        program = counting_program(counter.fd, syscall_nr=NR_GETPPID)
        with Program.load(_sys.BPF_PROG_TYPE_RAW_TRACEPOINT, program, name="ebcap_t_rawtp") as prog:
            prog_id = prog.id
            os.getppid()  # before attaching: not counted
            with attach_raw_tracepoint(prog, "sys_enter") as link:
                assert link.id is not None and link.id in loaded_link_ids()
                link_id = link.id
                for _ in range(37):
                    os.getppid()
            assert link.closed
            for _ in range(5):
                os.getppid()  # after detaching: not counted
            assert total(counter) == 37
    assert wait_until(lambda: link_id not in loaded_link_ids())
    assert wait_until(lambda: prog_id not in loaded_program_ids())


def test_tracepoint_counts_exactly_the_calls_made_while_attached() -> None:
    tracefs = ensure_tracefs()
    assert os.path.isdir(os.path.join(tracefs, "events", "syscalls"))
    with counter_map() as counter:
        program = counting_program(counter.fd, syscall_nr=None)
        with Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, program, name="ebcap_t_tp") as prog:
            prog_id = prog.id
            with attach_tracepoint(prog, "syscalls", "sys_enter_getppid", tracefs) as link:
                link_id = link.id
                assert link_id is not None and link_id in loaded_link_ids()
                for _ in range(23):
                    os.getppid()
            link.close()  # again: nothing happens
            os.getppid()
            assert total(counter) == 23
    assert wait_until(lambda: link_id not in loaded_link_ids())
    assert wait_until(lambda: prog_id not in loaded_program_ids())


def test_unknown_tracepoint_is_not_supported() -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    with (
        Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, [mov64_imm(R0, 0), exit_()]) as prog,
        pytest.raises(NotSupportedError, match="no tracepoint sched:no_such_event"),
    ):
        attach_tracepoint(prog, "sched", "no_such_event")
    assert set(os.listdir("/proc/self/fd")) == fds_before


def test_bad_names_are_usage_errors() -> None:
    with Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, [mov64_imm(R0, 0), exit_()]) as prog:
        with pytest.raises(UsageError):
            attach_tracepoint(prog, "..", "x")
        with pytest.raises(UsageError):
            attach_raw_tracepoint(prog, "sys/enter")


def test_wrong_program_type_for_a_raw_tracepoint_fails_cleanly() -> None:
    before = set(loaded_link_ids())
    fds_before = set(os.listdir("/proc/self/fd"))
    with (
        Program.load(_sys.BPF_PROG_TYPE_SOCKET_FILTER, [mov64_imm(R0, 0), exit_()]) as prog,
        pytest.raises(KernelError, match=r"^bpf\(BPF_RAW_TRACEPOINT_OPEN\): ") as err,
    ):
        attach_raw_tracepoint(prog, "sys_enter")
    assert err.value.errno == errno.EINVAL
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert set(loaded_link_ids()) <= before


@pytest.fixture
def perf_links_probe() -> Iterator[None]:
    """A test that fakes the kernel's answer gets the probe run again, before and after."""
    perf_links_supported.cache_clear()
    yield
    perf_links_supported.cache_clear()


def test_tracepoint_falls_back_to_ioctl_without_perf_links(
    monkeypatch: pytest.MonkeyPatch, perf_links_probe: None
) -> None:
    """Kernels before 5.15 refuse BPF_LINK_CREATE for perf events with EINVAL (an unknown
    command or attach type), the probe included: PERF_EVENT_IOC_SET_BPF."""
    real_bpf = _sys.bpf

    def bpf_without_perf_links(cmd: int, attr: object, **kwargs: object) -> int:
        if cmd == _sys.BPF_LINK_CREATE:
            raise KernelError("bpf(BPF_LINK_CREATE): invalid argument", errno.EINVAL)
        return real_bpf(cmd, attr, **kwargs)  # type: ignore[arg-type]

    with counter_map() as counter:
        program = counting_program(counter.fd, syscall_nr=None)
        with Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, program) as prog:
            monkeypatch.setattr(_sys, "bpf", bpf_without_perf_links)
            link = attach_tracepoint(prog, "syscalls", "sys_enter_getppid")
            assert not perf_links_supported()
            monkeypatch.undo()
            with link:
                assert link.id is None
                for _ in range(11):
                    os.getppid()
            os.getppid()
            assert total(counter) == 11


def test_wrong_program_type_for_a_tracepoint_reports_the_link_error(
    monkeypatch: pytest.MonkeyPatch, perf_links_probe: None
) -> None:
    """EINVAL from BPF_LINK_CREATE on a kernel with perf links is the error itself:
    no PERF_EVENT_IOC_SET_BPF after it to hide it, and the perf event is closed."""
    ioctls: list[int] = []
    real_ioctl = _sys.ioctl

    def recording_ioctl(fd: int, request: int, arg: int = 0) -> int:
        ioctls.append(request)
        return real_ioctl(fd, request, arg)

    fds_before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(_sys, "ioctl", recording_ioctl)
    with (
        Program.load(_sys.BPF_PROG_TYPE_SOCKET_FILTER, [mov64_imm(R0, 0), exit_()]) as prog,
        pytest.raises(KernelError, match=r"^bpf\(BPF_LINK_CREATE\): invalid argument") as err,
    ):
        attach_tracepoint(prog, "syscalls", "sys_enter_getppid")
    assert err.value.errno == errno.EINVAL and not isinstance(err.value, NotSupportedError)
    assert _sys.PERF_EVENT_IOC_SET_BPF not in ioctls
    assert perf_links_supported()
    assert set(os.listdir("/proc/self/fd")) == fds_before


def test_tracepoint_that_refuses_sampling_attaches() -> None:
    """irq_vectors:irq_work_exit refuses a sampling perf event (EPERM even to root):
    the tracepoint is opened counting, as libbpf does."""
    with (
        Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, [mov64_imm(R0, 0), exit_()]) as prog,
        attach_tracepoint(prog, "irq_vectors", "irq_work_exit") as link,
    ):
        assert link.id is not None and link.id in loaded_link_ids()


def test_program_on_a_counting_tracepoint_event_runs() -> None:
    """sched:sched_switch with the counting perf event: the program sees this process
    switched out each time it sleeps."""
    sleeps = 20
    with counter_map() as counter:
        program = counting_program(counter.fd, syscall_nr=None)
        with Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, program, name="ebcap_t_tp") as prog:
            with attach_tracepoint(prog, "sched", "sched_switch"):
                for _ in range(sleeps):
                    time.sleep(0.001)
            seen = total(counter)
            time.sleep(0.01)
            assert total(counter) == seen  # detached
    assert seen >= sleeps


SCHED_SWITCH_RECORD = 64  # next_prio, the last field, ends there


@pytest.mark.parametrize("perf_links", [True, False])
def test_a_program_reading_beyond_the_record_is_named_so(
    monkeypatch: pytest.MonkeyPatch, perf_links_probe: None, perf_links: bool
) -> None:
    """The kernel answers EACCES to a TRACEPOINT program whose context reads reach
    beyond the record (here 4000 bytes into sched_switch's 64): with the capabilities
    held, that is what it means, through BPF_LINK_CREATE and PERF_EVENT_IOC_SET_BPF."""
    real_bpf = _sys.bpf

    def bpf_without_perf_links(cmd: int, attr: object, **kwargs: object) -> int:
        if cmd == _sys.BPF_LINK_CREATE:
            raise KernelError("bpf(BPF_LINK_CREATE): invalid argument", errno.EINVAL)
        return real_bpf(cmd, attr, **kwargs)  # type: ignore[arg-type]

    fds_before = set(os.listdir("/proc/self/fd"))
    reads_far = [ldx_mem(DW, R0, R1, 4000), exit_()]
    with Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, reads_far, name="ebcap_t_far") as prog:
        if not perf_links:
            monkeypatch.setattr(_sys, "bpf", bpf_without_perf_links)
        with pytest.raises(KernelError) as err:
            attach_tracepoint(prog, "sched", "sched_switch")
        monkeypatch.undo()
    message = str(err.value)
    assert err.value.errno == errno.EACCES
    assert not isinstance(err.value, MissingCapabilityError)
    assert message == (
        "tracepoint sched:sched_switch: the program reads beyond the tracepoint's record of "
        f"{SCHED_SWITCH_RECORD} bytes, so the kernel refuses to attach it (errno 13)"
    )
    assert set(os.listdir("/proc/self/fd")) == fds_before
