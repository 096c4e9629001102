"""Maps on the real kernel: create, read/write, per-CPU values, pins, ids, info."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebcap.bpf import _sys, maps
from ebcap.bpf.asm import R0, exit_, mov64_imm
from ebcap.bpf.cpus import possible_cpus
from ebcap.bpf.fs import ensure_bpffs
from ebcap.bpf.maps import RINGBUF_MAX_BYTES, Map, map_type_name, validate_ringbuf_size
from ebcap.bpf.prog import Program
from ebcap.errors import ClosedError, KernelError, NotSupportedError, UsageError

pytestmark = pytest.mark.privileged


def key(n: int) -> bytes:
    return struct.pack("<I", n)


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    root = Path(ensure_bpffs()) / f"ebcap-test-{os.getpid()}"
    root.mkdir()
    try:
        yield root
    finally:
        for pin in root.iterdir():
            pin.unlink()
        root.rmdir()


def test_array_update_lookup_and_info() -> None:
    with Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 8, 4, name="ebcap_t_arr") as array:
        info = array.info
        assert (info.type, info.key_size, info.value_size, info.max_entries) == (2, 4, 8, 4)
        assert info.name == "ebcap_t_arr" and info.id > 0 and info.flags == 0
        assert array.lookup(key(2)) == bytes(8)  # arrays start zeroed
        array.update(key(2), struct.pack("<Q", 0xDEADBEEF12345678))
        assert array.lookup(key(2)) == struct.pack("<Q", 0xDEADBEEF12345678)
        assert array.lookup(key(1)) == bytes(8)
        assert array.lookup(key(4)) is None  # past max_entries


def test_hash_missing_key_and_update_flags() -> None:
    with Map.create(_sys.BPF_MAP_TYPE_HASH, 8, 4, 16) as table:
        k = struct.pack("<Q", 42)
        assert table.lookup(k) is None
        table.update(k, b"abcd", _sys.BPF_NOEXIST)
        assert table.lookup(k) == b"abcd"
        with pytest.raises(KernelError, match="BPF_MAP_UPDATE_ELEM") as err:
            table.update(k, b"efgh", _sys.BPF_NOEXIST)
        assert err.value.errno == errno.EEXIST
        assert table.lookup(k) == b"abcd"


def test_percpu_values_one_per_possible_cpu() -> None:
    with Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 12, 1) as percpu:
        values = percpu.lookup_percpu(key(0))
        assert len(values) == len(possible_cpus())
        assert values == [bytes(12)] * len(possible_cpus())
        assert percpu.lookup_percpu(key(1)) == []


def test_wrong_key_or_value_size_is_a_usage_error() -> None:
    with Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1) as array:
        with pytest.raises(UsageError, match="key is 2 bytes, expected 4"):
            array.lookup(b"ab")
        with pytest.raises(UsageError, match="value is 3 bytes, expected 8"):
            array.update(key(0), b"abc")


def test_pin_open_pinned_and_from_id_see_the_same_map(pin_dir: Path) -> None:
    path = pin_dir / "counts"
    with Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 4, 2, name="ebcap_t_pin") as original:
        original.pin(path)
        original.update(key(1), b"\x07\x00\x00\x00")
        with Map.open_pinned(path) as pinned, Map.from_id(original.info.id) as by_id:
            assert pinned.info == original.info == by_id.info
            assert pinned.fd != original.fd != by_id.fd
            assert pinned.lookup(key(1)) == b"\x07\x00\x00\x00"
            by_id.update(key(0), b"\x01\x02\x03\x04")
            assert original.lookup(key(0)) == b"\x01\x02\x03\x04"
    # The pin keeps the map alive after every fd is closed.
    with Map.open_pinned(path) as again:
        assert again.lookup(key(1)) == b"\x07\x00\x00\x00"


def test_pin_outside_bpffs_is_a_usage_error(tmp_path: Path) -> None:
    with (
        Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 4, 1) as array,
        pytest.raises(UsageError, match="not on a bpf filesystem"),
    ):
        array.pin(tmp_path / "x")


def test_close_is_idempotent_and_use_after_close_fails() -> None:
    array = Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    fd = array.fd
    array.close()
    array.close()
    assert array.closed
    with pytest.raises(OSError):
        os.fstat(fd)  # really closed (nothing else opened meanwhile)
    with pytest.raises(ClosedError):
        array.lookup(key(0))


def test_ringbuf_size_rules() -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    assert validate_ringbuf_size(page * 16, page) == page * 16
    assert validate_ringbuf_size(RINGBUF_MAX_BYTES, page) == 1 << 31
    for bad in (page * 3, page * 16 + 8):
        with pytest.raises(UsageError, match="power of two"):
            validate_ringbuf_size(bad, page)
    for small in (0, 3, page // 2):
        with pytest.raises(UsageError, match="below the kernel's minimum of one page"):
            validate_ringbuf_size(small, page)
    for large in (1 << 32, 1 << 33):  # 2^32 as a u32 max_entries would wrap to 0
        with pytest.raises(UsageError, match="above the kernel's maximum"):
            validate_ringbuf_size(large, page)
    with pytest.raises(UsageError):
        Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, page * 3)
    with Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, page * 4) as ring:
        assert (ring.info.type, ring.info.max_entries) == (27, page * 4)


def test_sizes_that_are_no_u32_are_refused_before_the_kernel() -> None:
    with pytest.raises(UsageError, match="BPF_MAP_TYPE_ARRAY: max_entries 4294967296 is not a u32"):
        Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 4, 1 << 32)
    with pytest.raises(UsageError, match="value_size -1 is not a u32"):
        Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, -1, 1)


def test_einval_names_the_map_type_and_blames_the_sizes_not_the_kernel() -> None:
    with pytest.raises(KernelError) as caught:
        Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 0, 1)  # a value of 0 bytes: refused
    assert not isinstance(caught.value, NotSupportedError)
    assert str(caught.value) == (
        "bpf(BPF_MAP_CREATE) of a BPF_MAP_TYPE_ARRAY: the kernel refused key_size 4, "
        "value_size 0, max_entries 1, flags 0 (invalid argument)"
    )


def test_einval_for_a_map_type_the_kernel_lacks_is_not_supported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unknown = 0x7FFF  # no kernel has this many map types
    with pytest.raises(KernelError) as caught:  # ebcap cannot probe a type it does not know
        Map.create(unknown, 4, 4, 1)
    assert not isinstance(caught.value, NotSupportedError)
    assert "of a map type 32767: the kernel refused" in str(caught.value)
    # Were its smallest map known, the kernel refusing that too means it lacks the type.
    monkeypatch.setattr(maps, "_PROBE_SIZES", {**maps._PROBE_SIZES, unknown: (4, 8, 1)})
    with pytest.raises(NotSupportedError) as lacking:
        Map.create(unknown, 4, 4, 1)
    assert lacking.value.feature == "map type 32767"
    assert str(lacking.value) == (
        "bpf(BPF_MAP_CREATE) of a map type 32767: this kernel does not support map type 32767"
    )


def test_map_types_have_their_uapi_names() -> None:
    assert map_type_name(_sys.BPF_MAP_TYPE_RINGBUF) == "BPF_MAP_TYPE_RINGBUF"
    assert map_type_name(_sys.BPF_MAP_TYPE_PERCPU_ARRAY) == "BPF_MAP_TYPE_PERCPU_ARRAY"
    assert map_type_name(99) == "map type 99"


def test_bad_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="bad BPF object name"):
        Map.create(_sys.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="has space")


def test_open_pinned_refuses_a_program_pin_without_leaking(pin_dir: Path) -> None:
    path = pin_dir / "prog"
    with Program.load(_sys.BPF_PROG_TYPE_SOCKET_FILTER, [mov64_imm(R0, 0), exit_()]) as prog:
        raw = ctypes.create_string_buffer(os.fsencode(path))
        _sys.bpf(_sys.BPF_OBJ_PIN, _sys.ObjPinAttr(pathname=ctypes.addressof(raw), bpf_fd=prog.fd))
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(UsageError, match="not a map"):
        Map.open_pinned(path)
    assert set(os.listdir("/proc/self/fd")) == fds_before
