"""Event sources: what `ebcap record` loads, attaches and how it decodes events.

A source owns its kernel side (BPF program, transport map, drop counters,
attachment) for the duration of a recording, and knows the layout of its
payloads so the recorder can fill the core columns and add decoded ones.
Every kernel object a source creates is registered on the caller's
``ExitStack``, so it is released on every exit path.
"""

from __future__ import annotations

import fnmatch
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ebcap.bpf import _sys, cpus, fs
from ebcap.bpf.maps import Map, map_type_name
from ebcap.capture.batch import EventBatch
from ebcap.capture.layout import PayloadLayout
from ebcap.errors import BpfObjectNotFoundError, NotSupportedError, UsageError

TRANSPORTS = ("perf", "ringbuf")


@dataclass
class KernelSide:
    """The maps a running source exposes to the recorder."""

    events: Map
    drops: Map | None = None
    """PERCPU_ARRAY[1] of u64: events the BPF program failed to emit, per CPU."""
    drops_field: int = 0
    """Which u64 of the drops map's value counts drops."""
    attach: Callable[[], None] | None = None
    """Starts the events flowing. The recorder calls it once the rings are
    installed: a perf event array without a ring on some CPU makes
    bpf_perf_event_output fail there, which would count as drops."""
    detach: Callable[[], None] | None = None
    """Stops new events (closes the attachment) so a final drain can empty the rings."""


class Source(ABC):
    """A producer of events and the knowledge to decode them."""

    spec: str
    layout: PayloadLayout | None
    variable_payloads: bool = False
    """Whether events can be longer than ``layout`` (packets): readers must keep every byte."""
    drops_are_lost_events: bool = True
    """Whether BPF-counted drops are events missing from the stream (ring buffer)
    rather than a second count of what PERF_RECORD_LOST already reports (perf)."""

    def arrow_fields(self) -> list[pa.Field]:
        return self.layout.arrow_fields() if self.layout else []

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        """Decoded columns for a structured array of this source's payloads."""
        return self.layout.decode(events) if self.layout else {}

    def stored_payloads(self, batch: EventBatch) -> EventBatch:
        """The batch as the file keeps it, before decoding: a source may complete what its
        program could not write (tc puts back the VLAN tags the kernel took out)."""
        return batch

    @abstractmethod
    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        """Create maps, load and attach; register every object on ``stack``."""

    def transport_of(self, requested: str) -> str:
        """The transport this source will use (a pinned map decides for itself)."""
        return requested


def create_events_map(transport: str, buffer_bytes: int, stack: ExitStack) -> Map:
    """The transport map: a PERF_EVENT_ARRAY over possible CPUs, or a RINGBUF."""
    if transport == "perf":
        ncpus = len(cpus.possible_cpus())
        events = Map.create(_sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, ncpus, name="ebcap_events")
    elif transport == "ringbuf":
        events = Map.create(_sys.BPF_MAP_TYPE_RINGBUF, 0, 0, buffer_bytes, name="ebcap_events")
    else:
        raise UsageError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
    stack.callback(events.close)
    return events


def create_counter_map(name: str, value_size: int, stack: ExitStack) -> Map:
    """A one-slot PERCPU_ARRAY: counters (drops, invocations) or per-CPU scratch space."""
    counters = Map.create(_sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, value_size, 1, name=name)
    stack.callback(counters.close)
    return counters


def read_percpu_u64(counters: Map, field: int = 0) -> list[int]:
    """The ``field``-th u64 of slot 0, for every possible CPU."""
    values = counters.lookup_percpu(struct.pack("<I", 0))
    return [struct.unpack_from("<Q", value, 8 * field)[0] for value in values]


class SyscallsSource(Source):
    """Every syscall entry (raw tracepoint ``sys_enter``) with pid, tid, comm and arguments."""

    def __init__(self, *, pid: int = 0, comm: str | None = None, exclude_pid: int | None = None):
        from ebcap.bpf.programs import syscalls

        self._program = syscalls
        self.pid = pid
        self.comm = comm
        self.exclude_pid = os.getpid() if exclude_pid is None else exclude_pid
        self.spec = "syscalls"
        self.layout = PayloadLayout(syscalls.SYSCALL_EVENT, "ts_ns", "cpu")

    def arrow_fields(self) -> list[pa.Field]:
        return [
            pa.field("pid", pa.uint32()),
            pa.field("tid", pa.uint32()),
            pa.field("comm", pa.string()),
            pa.field("syscall_nr", pa.uint32()),
            pa.field("syscall", pa.string()),
            *(pa.field(f"arg{i}", pa.uint64()) for i in range(6)),
        ]

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        from ebcap.capture.layout import strings_from_bytes
        from ebcap.capture.syscall_table import syscall_name

        nrs = events["nr"]
        unique, inverse = np.unique(nrs, return_inverse=True)
        names = pa.array([syscall_name(int(n)) for n in unique], pa.string())
        columns = {
            "pid": pa.array(events["pid"]),
            "tid": pa.array(events["tid"]),
            "comm": strings_from_bytes(events["comm"]),
            "syscall_nr": pa.array(nrs),
            "syscall": names.take(pa.array(inverse.astype(np.int32))),
        }
        args = events["args"]
        for i in range(6):
            columns[f"arg{i}"] = pa.array(np.ascontiguousarray(args[:, i]))
        return columns

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        from ebcap.bpf import links
        from ebcap.bpf.prog import Program

        events = create_events_map(transport, buffer_bytes, stack)
        drops = create_counter_map("ebcap_drops", 8, stack)
        insns = self._program.build_syscalls_program(
            transport,
            events.fd,
            drops.fd,
            exclude_tgid=self.exclude_pid,
            only_tgid=self.pid,
            only_comm=self.comm.encode() if self.comm else b"",
        )
        program = Program.load(_sys.BPF_PROG_TYPE_RAW_TRACEPOINT, insns, name="ebcap_syscalls")
        stack.callback(program.close)
        kernel = KernelSide(events, drops)

        def attach() -> None:
            link = links.attach_raw_tracepoint(program, "sys_enter")
            stack.callback(link.close)
            kernel.detach = link.close

        kernel.attach = attach
        return kernel


class PinnedSource(Source):
    """Someone else's pinned RINGBUF or PERF_EVENT_ARRAY, decoded by a given layout.

    A ring buffer has no lost counter in the kernel: only the producer knows
    how many reserves failed. ``drops`` names where it counts them (a pinned
    PERCPU_ARRAY and which u64 of its value at key 0), so that those losses
    become rows of the file like those of the built-in sources.
    """

    def __init__(
        self, path: str, layout: PayloadLayout | None, drops: tuple[str, int] | None = None
    ):
        self.path = path
        self.layout = layout
        self.drops = drops
        self.spec = f"pin:{path}"
        self._map_type: int | None = None

    def _open(self) -> Map:
        pinned = open_pinned_map("--pin", self.path)
        kind = pinned.info.type
        if kind not in (_sys.BPF_MAP_TYPE_RINGBUF, _sys.BPF_MAP_TYPE_PERF_EVENT_ARRAY):
            pinned.close()
            raise UsageError(
                f"--pin {self.path} is a {map_type_name(kind)} map, "
                "not a ring buffer or perf event array"
            )
        self._map_type = kind
        return pinned

    def transport_of(self, requested: str) -> str:
        if self._map_type is None:
            self._open().close()
        return "ringbuf" if self._map_type == _sys.BPF_MAP_TYPE_RINGBUF else "perf"

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        pinned = self._open()
        stack.callback(pinned.close)
        if self.drops is None:
            return KernelSide(pinned)
        path, field = self.drops
        counters = open_drop_counter(path, field)
        stack.callback(counters.close)
        return KernelSide(pinned, counters, drops_field=field)


def parse_drops(spec: str) -> tuple[str, int]:
    """``PATH`` or ``PATH:N`` (the N-th u64 of the value; default 0)."""
    path, colon, field = spec.rpartition(":")
    if not colon or os.path.lexists(spec):
        return spec, 0
    if not field.isdecimal():
        raise UsageError(f"--drops {spec}: N in PATH:N must be a number 0, 1, ...")
    return path, int(field)


def open_pinned_map(flag: str, path: str) -> Map:
    """The BPF map pinned at ``path``; what else is there is said in one line."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a directory, not a pinned BPF map")
    if os.path.exists(path) and fs.filesystem_type(path) != fs.BPFFS_NAME:
        raise UsageError(f"{flag} {path} is not on a bpf filesystem: no BPF map is pinned there")
    try:
        return Map.open_pinned(path)
    except BpfObjectNotFoundError:
        raise UsageError(f"{flag} {path}: no BPF map is pinned there") from None


def open_drop_counter(path: str, field: int) -> Map:
    """The pinned PERCPU_ARRAY at ``path``, checked to hold a u64 number ``field`` at key 0."""
    counters = open_pinned_map("--drops", path)
    info = counters.info
    problem = ""
    if info.type != _sys.BPF_MAP_TYPE_PERCPU_ARRAY or info.key_size != 4:
        problem = f"a {map_type_name(info.type)} map, not a PERCPU_ARRAY"
    elif info.value_size < 8 * (field + 1):
        problem = f"its {info.value_size}-byte values hold no u64 number {field}"
    if problem:
        counters.close()
        raise UsageError(f"--drops {path}: {problem}")
    return counters


SOURCE_SPECS = ("syscalls", "tracepoint:CAT:NAME", "xdp:IFACE", "tc:IFACE:ingress|egress")


def parse_source(
    spec: str,
    *,
    pin: str | None = None,
    layout: PayloadLayout | None = None,
    drops: str | None = None,
    pid: int = 0,
    comm: str | None = None,
    xdp_mode: str | None = None,
    snaplen: int | None = None,
    replace_xdp: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Source:
    """The source named on the command line."""
    kind, _, rest = spec.partition(":")
    if snaplen is not None and kind not in ("xdp", "tc"):
        raise UsageError("--snaplen applies to xdp: and tc: sources")
    if (xdp_mode is not None or replace_xdp) and kind != "xdp":
        raise UsageError("--xdp-mode and --replace-xdp apply to xdp: sources")
    if (pid or comm is not None) and (spec != "syscalls" or pin is not None):
        raise UsageError("--pid and --comm apply to the syscalls source")
    if pin is not None and spec != "syscalls":
        raise UsageError(f"--pin records a pinned map: --source {spec} does not go with it")
    if pin is not None:
        return PinnedSource(pin, layout, parse_drops(drops) if drops is not None else None)
    if drops is not None:
        raise UsageError("--drops names a pinned map's drop counter: use it with --pin PATH")
    if layout is not None:
        raise UsageError("--layout describes a pinned map's events: use it with --pin PATH")
    if spec == "syscalls":
        return SyscallsSource(pid=pid, comm=comm)
    if kind == "tracepoint":
        from ebcap.bpf.tracefs import split_spec
        from ebcap.capture.tracepoint_source import TracepointSource

        try:
            return TracepointSource(*split_spec(rest))
        except NotSupportedError as exc:
            if exc.feature.startswith("tracepoint "):  # a name this kernel lacks: a bad value
                raise UsageError(str(exc)) from None
            raise
    if kind in ("xdp", "tc"):
        from ebcap.bpf.programs.packet import SNAPLEN_DEFAULT
        from ebcap.capture.packet_source import TcSource, XdpSource

        iface, _, direction = rest.partition(":")
        if not iface or (kind == "xdp" and direction):
            raise UsageError(f"bad source {spec!r}: use xdp:IFACE or tc:IFACE:ingress|egress")
        if kind == "tc" and not direction:
            raise UsageError(
                f"source {spec!r} needs a direction: tc:{iface}:ingress or tc:{iface}:egress"
            )
        chosen = SNAPLEN_DEFAULT if snaplen is None else snaplen
        if kind == "xdp":
            mode = xdp_mode or "native"
            return XdpSource(iface, mode, chosen, replace=replace_xdp, notify=notify)
        return TcSource(iface, direction, chosen, notify=notify)
    raise UsageError(f"unknown source {spec!r}: built-in sources are: {', '.join(SOURCE_SPECS)}")


SOURCE_KINDS = ("syscalls", "tracepoint", "xdp", "tc")


def spec_matches(spec: str, pattern: str) -> bool:
    """Whether source ``spec`` matches a ``--list-sources`` glob.

    A pattern with a colon is matched against the whole spec (``xdp:*``,
    ``tc:eth0:*``, ``tracepoint:sched:*``); one that does not start with a
    source kind also as a tracepoint's ``CAT:NAME`` (``sched:*``). A pattern
    without a colon matches any part of the spec (``eth0``, ``sched_sw*``).
    """
    if ":" not in pattern:
        return any(fnmatch.fnmatchcase(part, pattern) for part in spec.split(":"))
    if fnmatch.fnmatchcase(spec, pattern):
        return True
    kind = pattern.split(":", 1)[0]
    return kind not in SOURCE_KINDS and fnmatch.fnmatchcase(spec, "tracepoint:" + pattern)


def list_sources(pattern: str = "*") -> list[str]:
    """Source specs matching a glob (:func:`spec_matches`): syscalls, tracepoints, and the
    packet hooks of each interface; UsageError when none matches."""
    from ebcap.capture.packet_source import list_packet_sources
    from ebcap.capture.tracepoint_source import list_tracepoint_sources

    specs = ["syscalls", *list_tracepoint_sources(), *list_packet_sources()]
    found = [spec for spec in specs if spec_matches(spec, pattern)]
    if not found:
        raise UsageError(
            f"no source matches {pattern!r} (try a glob such as 'sched:*', 'xdp:*' or '*openat*')"
        )
    return found
