"""The syscall layer: attr layouts against the uapi offsets, errno -> error mapping."""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import struct

import pytest

from ebcap.bpf import _sys, caps
from ebcap.bpf._errors import kernel_error
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.errors import (
    BpfObjectNotFoundError,
    KernelError,
    MissingCapabilityError,
    NotSupportedError,
)


def _offsets(struct_type: type[ctypes.Structure], names: list[str]) -> list[int]:
    return [getattr(struct_type, name).offset for name in names]


def test_bpf_attr_offsets_match_uapi() -> None:
    assert _offsets(_sys.MapCreateAttr, ["max_entries", "map_flags", "map_name"]) == [12, 16, 28]
    assert _offsets(_sys.MapElemAttr, ["key", "value", "flags"]) == [8, 16, 24]
    assert _offsets(
        _sys.ProgLoadAttr,
        [
            "insns",
            "license",
            "log_level",
            "log_size",
            "log_buf",
            "prog_name",
            "expected_attach_type",
        ],
    ) == [8, 16, 24, 28, 32, 48, 68]
    assert _offsets(
        _sys.ProgTestRunAttr, ["data_in", "repeat", "duration", "ctx_size_in", "flags", "cpu"]
    ) == [16, 32, 36, 40, 64, 68]
    assert _offsets(_sys.ObjPinAttr, ["bpf_fd", "file_flags"]) == [8, 12]
    assert _offsets(_sys.InfoByFdAttr, ["info_len", "info"]) == [4, 8]
    assert _offsets(_sys.RawTracepointOpenAttr, ["prog_fd"]) == [8]
    assert _offsets(_sys.LinkCreateAttr, ["target_fd", "attach_type", "flags"]) == [4, 8, 12]
    assert _offsets(_sys.BpfMapInfo, ["max_entries", "map_flags", "name"]) == [16, 20, 24]
    assert _offsets(_sys.BpfProgInfo, ["tag", "load_time", "name"]) == [8, 40, 64]
    for attr in (_sys.MapCreateAttr, _sys.ProgLoadAttr, _sys.ProgTestRunAttr):
        assert ctypes.sizeof(attr) <= _sys.BPF_ATTR_SIZE


def test_perf_event_attr_layout() -> None:
    attr = _sys.PerfEventAttr(type=1, size=128, config=10, sample_period=1, clockid=1)
    attr.disabled = 1
    attr.watermark = 1
    attr.sample_id_all = 1
    attr.use_clockid = 1
    attr.write_backward = 1
    attr.wakeup_watermark = 65536
    raw = bytes(attr)
    assert len(raw) == _sys.PERF_ATTR_SIZE == 128
    assert struct.unpack_from("<IIQQ", raw, 0) == (1, 128, 10, 1)
    flags = struct.unpack_from("<Q", raw, 40)[0]
    assert flags == (1 << 0) | (1 << 14) | (1 << 18) | (1 << 25) | (1 << 27)
    assert struct.unpack_from("<I", raw, 48)[0] == 65536
    assert attr.wakeup_events == 65536  # the same union
    assert struct.unpack_from("<i", raw, 92)[0] == 1
    assert _offsets(_sys.PerfEventAttr, ["bp_type", "config1", "sig_data"]) == [52, 56, 120]


def test_constants_keep_uapi_values() -> None:
    assert (_sys.BPF_PROG_LOAD, _sys.BPF_LINK_CREATE, _sys.BPF_LINK_GET_NEXT_ID) == (5, 28, 31)
    assert _sys.BPF_CMD_NAMES[_sys.BPF_PROG_GET_FD_BY_ID] == "BPF_PROG_GET_FD_BY_ID"
    assert _sys.BPF_FUNC_IDS["BPF_FUNC_perf_event_output"] == 25
    assert _sys.BPF_FUNC_IDS["BPF_FUNC_probe_read_kernel"] == 113
    assert _sys.BPF_FUNC_IDS["BPF_FUNC_ringbuf_discard"] == 133
    assert _sys.PERF_EVENT_IOC_SET_BPF == 0x40042408
    assert _sys.BPF_RINGBUF_BUSY_BIT == 0x80000000
    assert _sys.BPF_RINGBUF_DISCARD_BIT == 0x40000000
    assert _sys.DATA_HEAD_OFFSET == 1024 and _sys.DATA_SIZE_OFFSET == 1048


NO_CAPABILITIES = 0
ONLY_BPF_AND_PERFMON = (1 << caps.CAP_BPF) | (1 << caps.CAP_PERFMON)


@pytest.mark.parametrize("err", [errno.EPERM, errno.EACCES])
def test_permission_errors_name_exactly_the_missing_capabilities(
    err: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(caps, "effective_capabilities", lambda: ONLY_BPF_AND_PERFMON)
    exc = kernel_error("bpf(BPF_PROG_LOAD)", err, capabilities=("CAP_BPF", "CAP_NET_ADMIN"))
    assert isinstance(exc, MissingCapabilityError)
    assert exc.capability == "CAP_NET_ADMIN"  # it has CAP_BPF: that is not what is missing
    assert exc.errno == err
    assert str(exc) == (
        "bpf(BPF_PROG_LOAD): permission denied: needs CAP_NET_ADMIN (run as root or grant it)"
    )
    monkeypatch.setattr(caps, "effective_capabilities", lambda: NO_CAPABILITIES)
    exc = kernel_error("mmap(x)", err, capabilities=("CAP_PERFMON", "CAP_IPC_LOCK"))
    assert isinstance(exc, MissingCapabilityError)
    assert exc.capability == "CAP_PERFMON + CAP_IPC_LOCK"
    assert str(exc).endswith(": needs CAP_PERFMON + CAP_IPC_LOCK (run as root or grant them)")


def test_sys_admin_passes_for_bpf_and_perfmon_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caps, "effective_capabilities", lambda: 1 << caps.CAP_SYS_ADMIN)
    wanted = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_IPC_LOCK")
    assert caps.missing_capabilities(wanted) == ["CAP_NET_ADMIN", "CAP_IPC_LOCK"]


def test_permission_denied_with_every_capability_is_not_blamed_on_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(caps, "effective_capabilities", lambda: ONLY_BPF_AND_PERFMON)
    exc = kernel_error("bpf(BPF_MAP_CREATE)", errno.EPERM, capabilities=("CAP_BPF",))
    assert type(exc) is KernelError and exc.errno == errno.EPERM
    assert "although this process has CAP_BPF" in str(exc)
    exc = kernel_error("bpf(BPF_OBJ_GET)", errno.EACCES)  # a pin's file permissions
    assert type(exc) is KernelError and "permission denied (file permissions" in str(exc)


def test_commands_name_what_the_kernel_checks() -> None:
    assert _sys.command_capabilities(_sys.BPF_MAP_CREATE) == ("CAP_BPF",)
    assert _sys.command_capabilities(_sys.BPF_PROG_GET_FD_BY_ID) == ("CAP_SYS_ADMIN",)
    assert _sys.command_capabilities(_sys.BPF_PROG_GET_NEXT_ID) == ("CAP_SYS_ADMIN",)
    assert _sys.command_capabilities(_sys.BPF_OBJ_GET) == ()


def test_missing_features_are_not_supported_errors() -> None:
    exc = kernel_error("bpf(BPF_LINK_CREATE)", errno.EINVAL, feature="BPF_LINK_CREATE for perf")
    assert isinstance(exc, NotSupportedError) and exc.feature == "BPF_LINK_CREATE for perf"
    for err in (errno.ENOSYS, errno.EOPNOTSUPP, 524):
        assert isinstance(kernel_error("x()", err), NotSupportedError)


def test_other_errors_are_kernel_errors_with_errno() -> None:
    exc = kernel_error("bpf(BPF_MAP_CREATE)", errno.EINVAL, capabilities=("CAP_BPF",))
    assert type(exc) is KernelError
    assert exc.errno == errno.EINVAL
    assert str(exc) == "bpf(BPF_MAP_CREATE): invalid argument (errno 22)"


@pytest.mark.privileged
def test_missing_object_ids_and_pins() -> None:
    with pytest.raises(BpfObjectNotFoundError, match="BPF_MAP_GET_FD_BY_ID"):
        Map.from_id(0x7FFFFFF0)
    with pytest.raises(BpfObjectNotFoundError, match="BPF_OBJ_GET"):
        Map.open_pinned("/sys/fs/bpf/ebcap-test-no-such-pin")


def _as_nobody(action: str) -> tuple[str, str, str]:
    """Run ``action`` in a forked child running as uid/gid 65534.

    Returns (error class name, capability, message) of what the child met.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                if action == "map":
                    Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1).close()
                elif action == "prog":
                    Program.load(
                        _sys.BPF_PROG_TYPE_SOCKET_FILTER,
                        bytes.fromhex("b700000000000000 9500000000000000"),
                    ).close()
                else:
                    attr = _sys.PerfEventAttr(
                        type=_sys.PERF_TYPE_SOFTWARE, config=_sys.PERF_COUNT_SW_BPF_OUTPUT
                    )
                    os.close(_sys.perf_event_open(attr, -1, 0, -1, _sys.PERF_FLAG_FD_CLOEXEC))
                result = ("no error", "", "")
            except MissingCapabilityError as exc:
                result = (type(exc).__name__, exc.capability, str(exc))
            except Exception as exc:
                result = (type(exc).__name__, "", str(exc))
            os.write(write_fd, pickle.dumps(result))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: tuple[str, str, str] = pickle.loads(data)
    return result


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("action", "capability", "call"),
    [
        ("map", "CAP_BPF", "bpf(BPF_MAP_CREATE)"),
        ("prog", "CAP_BPF", "bpf(BPF_PROG_LOAD)"),
        ("perf", "CAP_PERFMON", "perf_event_open()"),
    ],
)
def test_unprivileged_caller_gets_one_line_naming_the_capability(
    action: str, capability: str, call: str
) -> None:
    kind, cap, message = _as_nobody(action)
    assert (kind, cap) == ("MissingCapabilityError", capability)
    assert message.startswith(call + ": ")
    assert message.endswith(f"needs {capability} (run as root or grant it)")
    assert "\n" not in message
