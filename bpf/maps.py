"""BPF maps: create, open by pin or id, read and write elements.

A :class:`Map` owns one fd and closes it exactly once (``close()`` or the
``with`` block); there is no finalizer, so a forgotten map is a visible leak
rather than a close at an arbitrary moment.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Self

from ebcap.bpf import _sys, fs
from ebcap.bpf._fd import OwnedFd
from ebcap.bpf.cpus import possible_cpus
from ebcap.errors import KernelError, NotSupportedError, UsageError

_MAP_FD_LINK: Final = "anon_inode:bpf-map"  # what /proc/self/fd/N points to for a map fd
_OBJ_NAME: Final = re.compile(r"[A-Za-z0-9_.]{0,15}")
_U32_MAX: Final = 0xFFFFFFFF

RINGBUF_MAX_BYTES: Final = 1 << 31
"""The largest BPF ring buffer: max_entries is a u32 and a power of two (the kernel
refuses 2^32, which a u32 cannot even hold: it would wrap to 0)."""

MAP_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {v: k for k, v in vars(_sys).items() if k.startswith("BPF_MAP_TYPE_")}
)
"""Map type number -> uapi name, for messages."""

_PROBE_SIZES: Final[Mapping[int, tuple[int, int, int]]] = MappingProxyType(
    {
        _sys.BPF_MAP_TYPE_HASH: (4, 8, 1),
        _sys.BPF_MAP_TYPE_ARRAY: (4, 8, 1),
        _sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY: (4, 4, 1),
        _sys.BPF_MAP_TYPE_PERCPU_ARRAY: (4, 8, 1),
        _sys.BPF_MAP_TYPE_RINGBUF: (0, 0, mmap.PAGESIZE),
    }
)
"""(key size, value size, max_entries) every kernel with the map type accepts:
what tells "no such map type here" from "not with these sizes"."""


def map_type_name(map_type: int) -> str:
    """``BPF_MAP_TYPE_RINGBUF`` for 27; ``map type N`` for a number ebcap does not name."""
    return MAP_TYPE_NAMES.get(map_type, f"map type {map_type}")


def encode_obj_name(name: str) -> bytes:
    """A map or program name as the kernel accepts it: up to 15 of ``[A-Za-z0-9_.]``."""
    if not _OBJ_NAME.fullmatch(name):
        raise UsageError(f"bad BPF object name {name!r}: up to 15 characters of [A-Za-z0-9_.]")
    return name.encode()


def round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def validate_ringbuf_size(n: int, page_size: int) -> int:
    """Return ``n`` if it can be a BPF ring buffer's max_entries, else raise UsageError."""
    if n < page_size:
        raise UsageError(
            f"ring buffer size {n}: below the kernel's minimum of one page ({page_size} bytes)"
        )
    if n > RINGBUF_MAX_BYTES:
        raise UsageError(
            f"ring buffer size {n}: above the kernel's maximum of {RINGBUF_MAX_BYTES} bytes (2 GiB)"
        )
    if n & (n - 1) or n % page_size:
        raise UsageError(
            f"ring buffer size {n} must be a power of two and a multiple of the page size "
            f"({page_size})"
        )
    return n


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports about a map (struct bpf_map_info)."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


class Map(OwnedFd):
    """One BPF map fd. Build with :meth:`create`, :meth:`open_pinned` or :meth:`from_id`."""

    kind = "map"

    def __init__(self, fd: int) -> None:
        """Take ownership of ``fd``; it is closed if reading its info fails."""
        super().__init__(fd)
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != _MAP_FD_LINK:
                raise UsageError("that BPF object is not a map")
            self._info = _read_info(fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def create(
        cls,
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        *,
        flags: int = 0,
        name: str = "",
    ) -> Self:
        """BPF_MAP_CREATE. EINVAL is this kernel lacking the map type only when the
        type's smallest map fails too; otherwise it is these sizes or flags."""
        if map_type == _sys.BPF_MAP_TYPE_RINGBUF:
            validate_ringbuf_size(max_entries, os.sysconf("SC_PAGE_SIZE"))
        fields = {"key_size": key_size, "value_size": value_size, "max_entries": max_entries}
        for field, value in {**fields, "map_flags": flags}.items():
            if not 0 <= value <= _U32_MAX:
                raise UsageError(f"{map_type_name(map_type)}: {field} {value} is not a u32")
        attr = _sys.MapCreateAttr(
            map_type=map_type, **fields, map_flags=flags, map_name=encode_obj_name(name)
        )
        try:
            fd = _sys.bpf(_sys.BPF_MAP_CREATE, attr)
        except KernelError as exc:
            if exc.errno != errno.EINVAL:
                raise
            what = f"bpf(BPF_MAP_CREATE) of a {map_type_name(map_type)}"
            if not _map_type_exists(map_type):
                feature = map_type_name(map_type)
                raise NotSupportedError(
                    f"{what}: this kernel does not support {feature}", feature, exc.errno
                ) from None
            sizes = ", ".join(f"{k} {v}" for k, v in {**fields, "flags": flags}.items())
            raise KernelError(
                f"{what}: the kernel refused {sizes} (invalid argument)", exc.errno
            ) from None
        return cls(fd)

    @classmethod
    def open_pinned(cls, path: str | os.PathLike[str]) -> Self:
        """BPF_OBJ_GET: open a map pinned on bpffs."""
        raw = ctypes.create_string_buffer(os.fsencode(path))
        attr = _sys.ObjPinAttr(pathname=ctypes.addressof(raw))
        return cls(_sys.bpf(_sys.BPF_OBJ_GET, attr))

    @classmethod
    def from_id(cls, map_id: int) -> Self:
        """BPF_MAP_GET_FD_BY_ID: open a loaded map by its id."""
        return cls(_sys.get_fd_by_id(_sys.BPF_MAP_GET_FD_BY_ID, map_id))

    @property
    def info(self) -> MapInfo:
        return self._info

    def _check_size(self, what: str, data: bytes, size: int) -> None:
        if len(data) != size:
            raise UsageError(
                f"map {self._info.name or self._info.id}: {what} is {len(data)} "
                f"bytes, expected {size}"
            )

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char], flags: int) -> None:
        self._check_size("key", key, self._info.key_size)
        key_buf = ctypes.create_string_buffer(key, len(key))
        attr = _sys.MapElemAttr(
            map_fd=self.fd,
            key=ctypes.addressof(key_buf),
            value=ctypes.addressof(value),
            flags=flags,
        )
        _sys.bpf(cmd, attr)

    def _lookup_raw(self, key: bytes, size: int) -> bytes | None:
        value = ctypes.create_string_buffer(size)
        try:
            self._elem(_sys.BPF_MAP_LOOKUP_ELEM, key, value, 0)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return value.raw

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None when there is none."""
        return self._lookup_raw(key, self._info.value_size)

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """A per-CPU map's values under ``key``, one per possible CPU (index = CPU)."""
        stride = round_up(self._info.value_size, 8)
        ncpus = len(possible_cpus())
        raw = self._lookup_raw(key, stride * ncpus)
        if raw is None:
            return []
        return [raw[i * stride : i * stride + self._info.value_size] for i in range(ncpus)]

    def update(self, key: bytes, value: bytes, flags: int = _sys.BPF_ANY) -> None:
        """BPF_MAP_UPDATE_ELEM (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        self._check_size("value", value, self._info.value_size)
        self._elem(
            _sys.BPF_MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), flags
        )

    def delete(self, key: bytes) -> bool:
        """BPF_MAP_DELETE_ELEM; False when there was nothing under ``key``."""
        self._check_size("key", key, self._info.key_size)
        key_buf = ctypes.create_string_buffer(key, len(key))
        attr = _sys.MapElemAttr(map_fd=self.fd, key=ctypes.addressof(key_buf))
        try:
            _sys.bpf(_sys.BPF_MAP_DELETE_ELEM, attr)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def pin(self, path: str | os.PathLike[str]) -> None:
        """BPF_OBJ_PIN: keep the map alive at ``path`` on a bpf filesystem."""
        parent = os.path.dirname(os.path.abspath(path))
        if fs.filesystem_type(parent) != fs.BPFFS_NAME:
            raise UsageError(
                f"cannot pin at {os.fspath(path)}: {parent} is not on a bpf filesystem"
            )
        raw = ctypes.create_string_buffer(os.fsencode(path))
        _sys.bpf(_sys.BPF_OBJ_PIN, _sys.ObjPinAttr(pathname=ctypes.addressof(raw), bpf_fd=self.fd))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        kind = map_type_name(self._info.type)
        return f"<Map {self._info.name!r} id={self._info.id} {kind} {state}>"


def _map_type_exists(map_type: int) -> bool:
    """Whether this kernel creates the smallest map of ``map_type`` (True when unsure)."""
    sizes = _PROBE_SIZES.get(map_type)
    if sizes is None:
        return True
    key_size, value_size, max_entries = sizes
    attr = _sys.MapCreateAttr(
        map_type=map_type, key_size=key_size, value_size=value_size, max_entries=max_entries
    )
    try:
        os.close(_sys.bpf(_sys.BPF_MAP_CREATE, attr))
    except KernelError as exc:
        return exc.errno != errno.EINVAL
    return True


def _read_info(fd: int) -> MapInfo:
    raw = _sys.BpfMapInfo()
    _sys.obj_get_info_by_fd(fd, raw)
    return MapInfo(
        id=raw.id,
        type=raw.type,
        key_size=raw.key_size,
        value_size=raw.value_size,
        max_entries=raw.max_entries,
        flags=raw.map_flags,
        name=raw.name.decode(errors="replace"),
    )
