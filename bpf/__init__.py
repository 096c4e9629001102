"""ebcap.bpf: the kernel layer, raw ``bpf(2)`` and ``perf_event_open(2)`` through ctypes.

Objects own their fds and close them once (``close()`` or ``with``):
:class:`Map`, :class:`Program`, :class:`Link`. Programs are written with the
assembler in :mod:`ebcap.bpf.asm`; the built-in ones live in
:mod:`ebcap.bpf.programs`. Only :mod:`ebcap.bpf._sys` calls the kernel.
"""

from ebcap.bpf.cpus import online_cpus, parse_cpu_list, possible_cpus
from ebcap.bpf.fs import ensure_bpffs, ensure_tracefs
from ebcap.bpf.links import Link, attach_raw_tracepoint, attach_tracepoint, loaded_link_ids
from ebcap.bpf.maps import Map, MapInfo, validate_ringbuf_size
from ebcap.bpf.prog import (
    Program,
    ProgramInfo,
    TestRunResult,
    loaded_program_ids,
    program_name_by_id,
)

__all__ = [
    "Link",
    "Map",
    "MapInfo",
    "Program",
    "ProgramInfo",
    "TestRunResult",
    "attach_raw_tracepoint",
    "attach_tracepoint",
    "ensure_bpffs",
    "ensure_tracefs",
    "loaded_link_ids",
    "loaded_program_ids",
    "online_cpus",
    "parse_cpu_list",
    "possible_cpus",
    "program_name_by_id",
    "validate_ringbuf_size",
]
