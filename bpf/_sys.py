"""The one place that speaks to the kernel through raw syscalls.

``bpf(2)``, ``perf_event_open(2)``, ``ioctl(2)`` and ``mount(2)`` are called
here through ctypes and nowhere else; uapi constants keep their kernel names
and every attr layout is defined once, with the offsets of ``linux/bpf.h`` and
``linux/perf_event.h``. A failing call raises the matching ``ebcap.errors``
class, with the command named, so callers above speak only in objects.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import platform
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ebcap.bpf._errors import kernel_error
from ebcap.errors import BpfObjectNotFoundError, KernelError, NotSupportedError

# --- bpf(2) commands -------------------------------------------------------
BPF_MAP_CREATE: Final = 0
BPF_MAP_LOOKUP_ELEM: Final = 1
BPF_MAP_UPDATE_ELEM: Final = 2
BPF_MAP_DELETE_ELEM: Final = 3
BPF_PROG_LOAD: Final = 5
BPF_OBJ_PIN: Final = 6
BPF_OBJ_GET: Final = 7
BPF_PROG_TEST_RUN: Final = 10
BPF_PROG_GET_NEXT_ID: Final = 11
BPF_PROG_GET_FD_BY_ID: Final = 13
BPF_MAP_GET_FD_BY_ID: Final = 14
BPF_OBJ_GET_INFO_BY_FD: Final = 15
BPF_RAW_TRACEPOINT_OPEN: Final = 17
BPF_LINK_CREATE: Final = 28
BPF_LINK_GET_FD_BY_ID: Final = 30
BPF_LINK_GET_NEXT_ID: Final = 31
BPF_CMD_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        value: name
        for name, value in globals().items()
        if name.startswith("BPF_") and name != "BPF_CMD_NAMES"
    }
)
"""Command number -> uapi name, for error messages."""

# --- map types, program types, attach types -------------------------------
BPF_MAP_TYPE_HASH: Final = 1
BPF_MAP_TYPE_ARRAY: Final = 2
BPF_MAP_TYPE_PERF_EVENT_ARRAY: Final = 4
BPF_MAP_TYPE_PERCPU_ARRAY: Final = 6
BPF_MAP_TYPE_RINGBUF: Final = 27

BPF_PROG_TYPE_SOCKET_FILTER: Final = 1
BPF_PROG_TYPE_SCHED_CLS: Final = 3
BPF_PROG_TYPE_TRACEPOINT: Final = 5
BPF_PROG_TYPE_XDP: Final = 6
BPF_PROG_TYPE_RAW_TRACEPOINT: Final = 17

BPF_XDP: Final = 37
BPF_PERF_EVENT: Final = 41


# --- flags -----------------------------------------------------------------
BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2
BPF_F_CURRENT_CPU: Final = 0xFFFFFFFF
BPF_OBJ_NAME_LEN: Final = 16

# --- BPF ring buffer ---------------------------------------------------------
BPF_RINGBUF_BUSY_BIT: Final = 1 << 31
BPF_RINGBUF_DISCARD_BIT: Final = 1 << 30
BPF_RINGBUF_HDR_SZ: Final = 8

# --- helper function ids (enum bpf_func_id) ---------------------------------
BPF_FUNC_IDS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "BPF_FUNC_map_lookup_elem": 1,
        "BPF_FUNC_map_update_elem": 2,
        "BPF_FUNC_map_delete_elem": 3,
        "BPF_FUNC_ktime_get_ns": 5,
        "BPF_FUNC_get_smp_processor_id": 8,
        "BPF_FUNC_get_current_pid_tgid": 14,
        "BPF_FUNC_get_current_comm": 16,
        "BPF_FUNC_perf_event_output": 25,
        "BPF_FUNC_skb_load_bytes": 26,
        "BPF_FUNC_probe_read_user": 112,
        "BPF_FUNC_probe_read_kernel": 113,
        "BPF_FUNC_probe_read_user_str": 114,
        "BPF_FUNC_probe_read_kernel_str": 115,
        "BPF_FUNC_ringbuf_output": 130,
        "BPF_FUNC_ringbuf_reserve": 131,
        "BPF_FUNC_ringbuf_submit": 132,
        "BPF_FUNC_ringbuf_discard": 133,
        "BPF_FUNC_xdp_get_buff_len": 188,
        "BPF_FUNC_xdp_load_bytes": 189,
    }
)
"""Helper name (uapi ``enum bpf_func_id``) -> id, used by ``call()``."""

# --- perf_event_open(2) -------------------------------------------------------
PERF_TYPE_SOFTWARE: Final = 1
PERF_TYPE_TRACEPOINT: Final = 2
PERF_COUNT_SW_BPF_OUTPUT: Final = 10

PERF_SAMPLE_TIME: Final = 1 << 2
PERF_SAMPLE_CPU: Final = 1 << 7
PERF_SAMPLE_RAW: Final = 1 << 10

PERF_FLAG_FD_CLOEXEC: Final = 1 << 3
PERF_FORMAT_LOST: Final = 1 << 4
"""read_format: read() gives the samples the event lost, after its value (Linux 6.0)."""

PERF_RECORD_LOST: Final = 2
PERF_RECORD_SAMPLE: Final = 9

PERF_EVENT_IOC_ENABLE: Final = 0x2400
PERF_EVENT_IOC_DISABLE: Final = 0x2401
PERF_EVENT_IOC_SET_BPF: Final = 0x40042408

IOCTL_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        PERF_EVENT_IOC_ENABLE: "PERF_EVENT_IOC_ENABLE",
        PERF_EVENT_IOC_DISABLE: "PERF_EVENT_IOC_DISABLE",
        PERF_EVENT_IOC_SET_BPF: "PERF_EVENT_IOC_SET_BPF",
    }
)

CLOCK_MONOTONIC: Final = 1

# struct perf_event_mmap_page: where the ring's positions live in the meta page.
DATA_HEAD_OFFSET: Final = 1024
DATA_TAIL_OFFSET: Final = 1032
DATA_OFFSET_OFFSET: Final = 1040
DATA_SIZE_OFFSET: Final = 1048

PERF_EVENT_HEADER_SIZE: Final = 8
"""struct perf_event_header {u32 type; u16 misc; u16 size}."""

# --- mount(2) -------------------------------------------------------------------
MS_NOSUID: Final = 1 << 1
MS_NODEV: Final = 1 << 2
MS_NOEXEC: Final = 1 << 3

BPF_ATTR_SIZE: Final = 144
"""sizeof(union bpf_attr) on this kernel; every bpf() call passes this much."""

_SYSCALL_NUMBERS: Final[Mapping[str, Mapping[str, int]]] = MappingProxyType(
    {
        "x86_64": {"bpf": 321, "perf_event_open": 298, "ioctl": 16, "mount": 165},
        "aarch64": {"bpf": 280, "perf_event_open": 241, "ioctl": 29, "mount": 40},
    }
)


# --- attr layouts -----------------------------------------------------------------
class MapCreateAttr(ctypes.Structure):
    """union bpf_attr for BPF_MAP_CREATE."""

    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", ctypes.c_uint32),
    )


class MapElemAttr(ctypes.Structure):
    """union bpf_attr for BPF_MAP_LOOKUP_ELEM / UPDATE_ELEM / DELETE_ELEM."""

    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class ProgLoadAttr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_LOAD."""

    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    )


class ObjPinAttr(ctypes.Structure):
    """union bpf_attr for BPF_OBJ_PIN / BPF_OBJ_GET."""

    _fields_ = (
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    )


class ProgTestRunAttr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_TEST_RUN (retval, sizes and duration come back)."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class GetIdAttr(ctypes.Structure):
    """union bpf_attr for *_GET_NEXT_ID and *_GET_FD_BY_ID (``id`` is start_id/prog_id/...)."""

    _fields_ = (
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    )


class InfoByFdAttr(ctypes.Structure):
    """union bpf_attr for BPF_OBJ_GET_INFO_BY_FD."""

    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class RawTracepointOpenAttr(ctypes.Structure):
    """union bpf_attr for BPF_RAW_TRACEPOINT_OPEN."""

    _fields_ = (
        ("name", ctypes.c_uint64),
        ("prog_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("cookie", ctypes.c_uint64),
    )


class LinkCreateAttr(ctypes.Structure):
    """union bpf_attr for BPF_LINK_CREATE (``bpf_cookie`` of the perf_event variant)."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bpf_cookie", ctypes.c_uint64),
    )


class BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info (the prefix ebcap reads)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info (the prefix ebcap reads)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info (the common prefix)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
    )


class _Wakeup(ctypes.Union):
    _fields_ = (("wakeup_events", ctypes.c_uint32), ("wakeup_watermark", ctypes.c_uint32))


_PERF_FLAG_BITS: Final = (
    "disabled", "inherit", "pinned", "exclusive", "exclude_user", "exclude_kernel",
    "exclude_hv", "exclude_idle", "mmap", "comm", "freq", "inherit_stat",
    "enable_on_exec", "task", "watermark", "precise_ip", "mmap_data", "sample_id_all",
    "exclude_host", "exclude_guest", "exclude_callchain_kernel", "exclude_callchain_user",
    "mmap2", "comm_exec", "use_clockid", "context_switch", "write_backward",
)  # fmt: skip
"""The bitfield flags of perf_event_attr at offset 40, from bit 0 (precise_ip is 2 bits)."""


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr, 128 bytes (PERF_ATTR_SIZE_VER8).

    With ``watermark`` set, ``wakeup_watermark`` (bytes) replaces ``wakeup_events``.
    """

    _anonymous_ = ("_wakeup",)
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        *((name, ctypes.c_uint64, 2 if name == "precise_ip" else 1) for name in _PERF_FLAG_BITS),
        ("_flags_reserved", ctypes.c_uint64, 64 - len(_PERF_FLAG_BITS) - 1),
        ("_wakeup", _Wakeup),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("_reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("aux_action", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
    )


PERF_ATTR_SIZE: Final = 128


# --- calling the kernel ---------------------------------------------------------------
@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall_number(name: str) -> int:
    machine = platform.machine()
    numbers = _SYSCALL_NUMBERS.get(machine)
    if numbers is None:
        raise NotSupportedError(f"{name}(): no syscall table for {machine}", feature=machine)
    return numbers[name]


def _syscall(name: str, *args: int) -> tuple[int, int]:
    """Call syscall ``name``; returns (result, errno), errno 0 on success."""
    ctypes.set_errno(0)
    ret = _libc().syscall(ctypes.c_long(_syscall_number(name)), *(ctypes.c_long(a) for a in args))
    return ret, (ctypes.get_errno() if ret < 0 else 0)


_LOOKUP_CMDS: Final = frozenset(
    {BPF_OBJ_GET, BPF_PROG_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID, BPF_LINK_GET_FD_BY_ID}
)
_ADMIN_CMDS: Final = frozenset(
    {BPF_PROG_GET_NEXT_ID, BPF_LINK_GET_NEXT_ID, *_LOOKUP_CMDS} - {BPF_OBJ_GET}
)
_PATH_CMDS: Final = frozenset({BPF_OBJ_PIN, BPF_OBJ_GET})


def command_capabilities(cmd: int) -> tuple[str, ...]:
    """What the kernel checks for ``cmd`` by default: ids are CAP_SYS_ADMIN's, pins go
    by file permissions, the rest wants CAP_BPF (program loads more: see prog.py)."""
    if cmd in _ADMIN_CMDS:
        return ("CAP_SYS_ADMIN",)
    return () if cmd in _PATH_CMDS else ("CAP_BPF",)


def bpf(
    cmd: int,
    attr: ctypes.Structure,
    *,
    feature: str | None = None,
    capabilities: tuple[str, ...] | None = None,
) -> int:
    """bpf(cmd, attr): the attr is copied into a zeroed 144-byte union and back.

    Returns the syscall's result (often a new fd, owned by the caller).
    ``capabilities`` (default: :func:`command_capabilities`) are what EPERM means.
    """
    size = ctypes.sizeof(attr)
    buf = (ctypes.c_char * BPF_ATTR_SIZE)()
    ctypes.memmove(buf, ctypes.addressof(attr), size)
    ret, err = _syscall("bpf", cmd, ctypes.addressof(buf), BPF_ATTR_SIZE)
    ctypes.memmove(ctypes.addressof(attr), buf, size)
    if err:
        call = f"bpf({BPF_CMD_NAMES.get(cmd, str(cmd))})"
        if err == _errno.ENOENT and cmd in _LOOKUP_CMDS:
            raise BpfObjectNotFoundError(f"{call}: no such object", err)
        needs = command_capabilities(cmd) if capabilities is None else capabilities
        raise kernel_error(call, err, capabilities=needs, feature=feature)
    return int(ret)


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(2); returns the new perf event fd."""
    if attr.size == 0:
        attr.size = PERF_ATTR_SIZE
    ret, err = _syscall("perf_event_open", ctypes.addressof(attr), pid, cpu, group_fd, flags)
    if err:
        if err == _errno.ENOENT:
            event = f"perf event type {attr.type} config {attr.config}"
            raise NotSupportedError(f"perf_event_open(): no {event} here", event, err)
        raise kernel_error("perf_event_open()", err, capabilities=("CAP_PERFMON",))
    return int(ret)


def ioctl(fd: int, request: int, arg: int = 0) -> int:
    """ioctl(2) with an integer argument (the perf event ioctls)."""
    ret, err = _syscall("ioctl", fd, request, arg)
    if err:
        name = IOCTL_NAMES.get(request, hex(request))
        raise kernel_error(f"ioctl({name})", err, capabilities=("CAP_PERFMON",))
    return int(ret)


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    """mount(2) of a pseudo filesystem (bpf, tracefs) with no data."""
    src, tgt, fs = (ctypes.create_string_buffer(s.encode()) for s in (source, target, fstype))
    _, err = _syscall(
        "mount", ctypes.addressof(src), ctypes.addressof(tgt), ctypes.addressof(fs), flags, 0
    )
    if err:
        call = f"mount({fstype} on {target})"
        if err == _errno.ENODEV:
            raise NotSupportedError(f"{call}: this kernel has no {fstype}", fstype, err)
        raise kernel_error(call, err, capabilities=("CAP_SYS_ADMIN",))


def obj_get_info_by_fd(fd: int, info: ctypes.Structure) -> None:
    """Fill ``info`` (a bpf_*_info prefix) for the map, program or link ``fd``."""
    attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)


def get_next_id(cmd: int, start_id: int) -> int | None:
    """The next object id after ``start_id`` (*_GET_NEXT_ID), or None at the end."""
    attr = GetIdAttr(id=start_id)
    try:
        bpf(cmd, attr)
    except KernelError as exc:
        if exc.errno == _errno.ENOENT:
            return None
        raise
    return int(attr.next_id)


def get_fd_by_id(cmd: int, obj_id: int) -> int:
    """A new fd for the object ``obj_id`` (*_GET_FD_BY_ID)."""
    return bpf(cmd, GetIdAttr(id=obj_id))
