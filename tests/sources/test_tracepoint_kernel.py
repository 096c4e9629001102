"""Tracepoint sources on the real kernel: known events, every decoded field checked."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import threading
import time

import pyarrow as pa
import pytest
from kernel_helpers import open_fds, run_pinned
from sources.rings import collect, source_programs, structured

from ebcap.bpf import _sys, tracefs
from ebcap.bpf.cpus import online_cpus
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.bpf.programs import tracepoint as program
from ebcap.capture.tracepoint_source import TracepointSource
from ebcap.errors import EbcapError, VerifierError

pytestmark = pytest.mark.privileged

TRANSPORTS = ["perf", "ringbuf"]
SYS_openat, SYS_getppid = 257, 110  # x86-64
AT_FDCWD = -100
O_RDONLY, O_CLOEXEC = 0, 0o2000000
PR_SET_NAME = 15
NICE_0_PRIO = 120  # the kernel's prio of a SCHED_OTHER task at nice 0
TASK_RUNNING, TASK_INTERRUPTIBLE = 0, 1  # sched_switch prev_state: preempted, or waiting
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _record(source: TracepointSource, transport: str, action) -> dict[str, list]:
    """Decoded columns (as Python lists) of what ``source`` saw while ``action`` ran."""
    before_progs, before_fds = source_programs(), open_fds()
    payloads, drops = collect(source, transport, action)
    assert sum(drops) == 0
    assert source_programs() == before_progs
    assert open_fds() == before_fds
    events = structured(source, payloads)
    decoded = source.decode(events)
    assert pa.schema(source.arrow_fields()) == pa.schema(
        [pa.field(name, array.type) for name, array in decoded.items()]
    )
    columns = {name: array.to_pylist() for name, array in decoded.items()}
    columns["ts_ns"] = events["ts_ns"].tolist()
    columns["cpu"] = events["cpu"].tolist()
    return columns


def _rows(columns: dict[str, list], **match: object) -> list[dict[str, object]]:
    """The events whose fields equal ``match``, as dicts."""
    n = len(columns["ts_ns"])
    out = []
    for i in range(n):
        if all(columns[key][i] == value for key, value in match.items()):
            out.append({key: values[i] for key, values in columns.items()})
    return out


def _set_thread_name(name: str) -> None:
    _libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def _openat(name: ctypes.Array[ctypes.c_char] | None, dfd: object = AT_FDCWD) -> int:
    return _libc.syscall(SYS_openat, dfd, name, O_RDONLY | O_CLOEXEC, 0o640)


DFD_REGISTERS = (ctypes.c_long(AT_FDCWD), ctypes.c_ulong(AT_FDCWD & 0xFFFF_FFFF))
"""AT_FDCWD as an int argument may reach the kernel sign-extended or not (the upper half
of the register is the caller's): both are the int -100."""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openat_path_pointer_and_int_fields(tmp_path, transport: str) -> None:
    """The path a user pointer points to is read; the pointer is kept beside it."""
    path = tmp_path / "ebcap-openat-probe"
    path.write_bytes(b"x")
    name = ctypes.create_string_buffer(os.fsencode(path))
    calls = 7
    tid: list[int] = []

    def action() -> None:
        tid.append(threading.get_native_id())
        for i in range(calls):
            fd = _openat(name, DFD_REGISTERS[i % 2])
            assert fd >= 0, os.strerror(ctypes.get_errno())
            os.close(fd)

    source = TracepointSource("syscalls", "sys_enter_openat")
    columns = _record(source, transport, action)
    mine = _rows(columns, common_pid=tid[0], filename_ptr=ctypes.addressof(name))
    assert len(mine) == calls
    for row in mine:
        assert row["filename"] == str(path)
        assert row["filename_truncated"] is False
        assert row["__syscall_nr"] == SYS_openat
        assert row["dfd"] == AT_FDCWD  # "int dfd; size:8; signed:0": the int's low 4 bytes
        assert row["flags"] == O_RDONLY | O_CLOEXEC
        assert row["mode"] == 0o640
        assert row["cpu"] in online_cpus()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_user_strings_at_the_bound_and_unreadable(transport: str) -> None:
    """Strings of 63 and 64 bytes in a 64-byte slot (63 bytes and a NUL): the first
    whole, the second cut and marked; a NULL pointer gives nulls, not an empty path."""
    bound = 64
    fits, cut = "f" * (bound - 1), "c" * bound
    buffers = [ctypes.create_string_buffer(text.encode()) for text in (fits, cut)]
    tid: list[int] = []

    def action() -> None:
        tid.append(threading.get_native_id())
        for buffer in buffers:
            assert _openat(buffer) < 0  # no such file: the tracepoint fires all the same
        assert _openat(None) < 0 and ctypes.get_errno() == errno.EFAULT

    source = TracepointSource("syscalls", "sys_enter_openat", string_bytes=bound)
    columns = _record(source, transport, action)
    seen = {r["filename_ptr"]: r for r in _rows(columns, common_pid=tid[0])}
    whole, truncated = (seen[ctypes.addressof(b)] for b in buffers)
    assert (whole["filename"], whole["filename_truncated"]) == (fits, False)
    assert (truncated["filename"], truncated["filename_truncated"]) == (cut[:-1], True)
    assert (seen[0]["filename"], seen[0]["filename_truncated"]) == (None, None)


def _slot_tail(source: TracepointSource, payload: bytes, name: str) -> bytes:
    """The bytes of ``name``'s slot after its first NUL, as the program wrote them."""
    (slot,) = [s for s in source.event.slots if s.name == name]
    data = payload[slot.data_offset : slot.data_offset + slot.size]
    return data[data.index(0) :]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_short_string_after_a_long_one_leaves_no_stale_bytes(transport: str) -> None:
    """The scratch value is reused on a CPU: after a long path, an empty and a short
    one read on the same CPU must leave their slot zero past the NUL."""
    long = "/SECRET-" + "x" * 100
    buffers = [ctypes.create_string_buffer(t.encode()) for t in (long, "", "/ab", long, "")]
    tid: list[int] = []

    def action() -> None:
        def calls() -> None:
            tid.append(threading.get_native_id())
            for buffer in buffers:
                assert _openat(buffer) < 0

        run_pinned(online_cpus()[0], calls)

    source = TracepointSource("syscalls", "sys_enter_openat")
    payloads, drops = collect(source, transport, action)
    assert sum(drops) == 0
    columns = source.decode(structured(source, payloads))
    mine = [
        (text, payload)
        for text, pid, payload in zip(
            columns["filename"].to_pylist(),
            columns["common_pid"].to_pylist(),
            payloads,
            strict=True,
        )
        if pid == tid[0]
    ]
    assert [text for text, _ in mine] == [long, "", "/ab", long, ""]
    for _, payload in mine:
        tail = _slot_tail(source, payload, "filename")
        assert tail == bytes(len(tail))
    for payload in payloads:  # everyone's events on every CPU
        tail = _slot_tail(source, payload, "filename")
        assert tail == bytes(len(tail))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_data_loc_string_leaves_no_stale_bytes(tmp_path, transport: str) -> None:
    """sched_process_exec's __data_loc filename: a long path then a short one, both
    run from one CPU (the children inherit its affinity)."""
    true = shutil.which("true")
    assert true is not None
    long, short = tmp_path / ("y" * 150), tmp_path / "t"
    for path in (long, short):
        path.symlink_to(true)
    children: list[int] = []

    def action() -> None:
        def run() -> None:
            for path in (long, short, long, short):
                child = subprocess.Popen([path])
                child.wait()
                children.append(child.pid)

        run_pinned(online_cpus()[0], run)

    source = TracepointSource("sched", "sched_process_exec")
    payloads, drops = collect(source, transport, action)
    assert sum(drops) == 0
    columns = source.decode(structured(source, payloads))
    pids, names = columns["pid"].to_pylist(), columns["filename"].to_pylist()
    assert [n for p, n in zip(pids, names, strict=True) if p in children] == [
        str(long), str(short), str(long), str(short),
    ]  # fmt: skip
    for payload in payloads:
        tail = _slot_tail(source, payload, "filename")
        assert tail == bytes(len(tail))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_full_width_signed_argument_keeps_its_sign(transport: str) -> None:
    """lseek's ``off_t offset; size:8; signed:0``: the kernel calls every argument
    unsigned; the declared type says -5 is -5."""
    fd = os.open(__file__, os.O_RDONLY | os.O_CLOEXEC)
    tid: list[int] = []

    def action() -> None:
        tid.append(threading.get_native_id())
        os.lseek(fd, -5, os.SEEK_END)

    try:
        columns = _record(TracepointSource("syscalls", "sys_enter_lseek"), transport, action)
    finally:
        os.close(fd)
    mine = _rows(columns, common_pid=tid[0], fd=fd)
    assert [(r["offset"], r["whence"]) for r in mine] == [(-5, os.SEEK_END)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_raw_sys_enter_int_array(transport: str) -> None:
    args = [11, 22, 33, 44, 55]  # syscall(3) takes the sixth from its stack: unknown
    calls = 5
    tid: list[int] = []

    def action() -> None:
        tid.append(threading.get_native_id())
        for _ in range(calls):
            _libc.syscall(SYS_getppid, *args)

    columns = _record(TracepointSource("raw_syscalls", "sys_enter"), transport, action)
    mine = [r for r in _rows(columns, common_pid=tid[0], id=SYS_getppid) if r["args"][:5] == args]
    assert len(mine) == calls
    assert all(len(r["args"]) == 6 for r in mine)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fork_and_exec_data_loc_strings(transport: str) -> None:
    """sched_process_fork's two __data_loc comms and sched_process_exec's filename."""
    true = shutil.which("true")
    assert true is not None
    forker = "ebcap-forker"
    children: list[int] = []
    tid: list[int] = []

    def fork_children() -> None:
        _set_thread_name(forker)
        tid.append(threading.get_native_id())
        for _ in range(4):
            child = subprocess.Popen([true])
            child.wait()
            children.append(child.pid)

    def action() -> None:
        thread = threading.Thread(target=fork_children)
        thread.start()
        thread.join()

    fork = TracepointSource("sched", "sched_process_fork")
    columns = _record(fork, transport, action)
    mine = _rows(columns, parent_pid=tid[0])
    assert sorted(r["child_pid"] for r in mine) == sorted(children)
    assert {(r["parent_comm"], r["child_comm"]) for r in mine} == {(forker, forker)}

    children.clear()
    columns = _record(TracepointSource("sched", "sched_process_exec"), transport, action)
    mine = [r for r in _rows(columns, filename=true) if r["pid"] in children]
    assert sorted(r["pid"] for r in mine) == sorted(children)
    assert all(r["old_pid"] == r["pid"] == r["common_pid"] for r in mine)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sched_switch_between_two_pinned_threads(transport: str) -> None:
    """Two named threads pinned to one CPU ping-pong through pipes: every switch
    between them is seen with both comms, pids and the CPU; a window after both
    are named and pinned keeps thread start-up out of it."""
    cpu = online_cpus()[-1]
    rounds = 200
    ping_to_pong, pong_to_ping = os.pipe(), os.pipe()
    ready = threading.Barrier(2)
    tids: dict[str, int] = {}
    window: dict[str, list[int]] = {"start": [], "end": []}

    def player(who: str, first: int, second: int, writes_first: bool) -> None:
        _set_thread_name(f"ebcap-{who}")
        os.sched_setaffinity(0, {cpu})
        tids[who] = threading.get_native_id()
        ready.wait()
        window["start"].append(time.monotonic_ns())
        for _ in range(rounds):
            if writes_first:
                os.write(first, b"x")
                os.read(second, 1)
            else:
                os.read(first, 1)
                os.write(second, b"x")
        window["end"].append(time.monotonic_ns())

    def action() -> None:
        threads = [
            threading.Thread(target=player, args=("ping", ping_to_pong[1], pong_to_ping[0], True)),
            threading.Thread(target=player, args=("pong", ping_to_pong[0], pong_to_ping[1], False)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    try:
        columns = _record(TracepointSource("sched", "sched_switch"), transport, action)
    finally:
        for fd in (*ping_to_pong, *pong_to_ping):
            os.close(fd)
    t0, t1 = max(window["start"]), min(window["end"])
    keep = [t0 <= ts <= t1 for ts in columns["ts_ns"]]
    columns = {
        name: [v for v, k in zip(values, keep, strict=True) if k]
        for name, values in columns.items()
    }
    states: dict[str, set[int]] = {}
    for who in ("ping", "pong"):
        out = _rows(columns, prev_pid=tids[who])
        into = _rows(columns, next_pid=tids[who])
        assert len(out) >= rounds - 2 and abs(len(out) - len(into)) <= 2
        assert {r["prev_comm"] for r in out} == {f"ebcap-{who}"}
        assert {r["next_comm"] for r in into} == {f"ebcap-{who}"}
        assert {r["cpu"] for r in out + into} == {cpu}
        assert {r["common_pid"] for r in out} == {tids[who]}
        assert {r["prev_prio"] for r in out} == {NICE_0_PRIO}
        assert {r["prev_state"] for r in out} <= {TASK_RUNNING, TASK_INTERRUPTIBLE}
        states[who] = {r["prev_state"] for r in out}
    # One of the two waits in read(2) every round (the other may be preempted instead).
    assert TASK_INTERRUPTIBLE in states["ping"] | states["pong"]
    direct = _rows(columns, prev_pid=tids["ping"], next_pid=tids["pong"])
    assert direct and {r["next_comm"] for r in direct} == {"ebcap-pong"}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("category", "name", "fields"),
    [
        ("ipi", "ipi_send_cpumask", ["cpumask"]),
        ("dma", "dma_map_sg", ["phys_addrs", "dma_addrs", "lengths"]),
    ],
)
def test_bytes_data_loc_programs_load_and_attach(
    transport: str, category: str, name: str, fields: list[str]
) -> None:
    """The verifier takes the copy of __data_loc bytes (one slot or several); a 2-CPU
    guest without DMA tracing may not fire these, so what they record is only checked
    for its shape and the CPU mask's bits."""
    source = TracepointSource(category, name, string_bytes=8)
    types = {f.name: f.type for f in source.arrow_fields()}
    for field in fields:
        assert (types[field], types[f"{field}_truncated"]) == (pa.binary(), pa.bool_())
    columns = _record(source, transport, lambda: time.sleep(0.05))
    online = sum(1 << cpu for cpu in online_cpus())
    for mask in columns.get("cpumask", []):
        assert mask is not None and int.from_bytes(mask, "little") & ~online == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("string_bytes", [8, program.STRING_BYTES_MAX])
def test_every_tracepoint_program_loads(transport: str, string_bytes: int) -> None:
    """The verifier takes the program of every tracepoint of this kernel, at the
    smallest and the largest slots (each slot zeroed, then filled)."""
    refused = []
    events_map = (
        (_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, 1 << 16)
        if transport == "ringbuf"
        else (_sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, len(online_cpus()))
    )
    with (
        Map.create(*events_map) as events,
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1) as drops,
    ):
        for spec in tracefs.list_tracepoints():
            fmt = tracefs.read_format(*tracefs.split_spec(spec))
            layout = program.event_layout(fmt, string_bytes)
            with Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, layout.scratch_size, 1) as scratch:
                insns = program.build_tracepoint_program(
                    fmt, layout, transport, events.fd, drops.fd, scratch.fd
                )
                try:
                    Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, insns, name="ebcap_t_tp").close()
                except EbcapError as exc:  # collected: one failure names them all
                    refused.append(f"{spec}: {exc}")
    assert refused == []


def test_a_scratch_value_without_room_for_the_zeros_is_refused() -> None:
    """The zeros are read through a helper the verifier does not bound: a scratch value
    of only the event's size must fail the load, not copy what lies beyond it."""
    fmt = tracefs.read_format("syscalls", "sys_enter_openat")
    layout = program.event_layout(fmt, 64)
    assert layout.scratch_size == layout.size + 64
    with (
        Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, 1 << 16) as events,
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1) as drops,
        Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, layout.size, 1) as scratch,
        pytest.raises(VerifierError),
    ):
        insns = program.build_tracepoint_program(
            fmt, layout, "ringbuf", events.fd, drops.fd, scratch.fd
        )
        Program.load(_sys.BPF_PROG_TYPE_TRACEPOINT, insns, name="ebcap_t_tp").close()
