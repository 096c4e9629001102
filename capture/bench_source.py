"""The built-in benchmark producer's kernel side: events map, stats map, program.

A SOCKET_FILTER program (:mod:`ebcap.bpf.programs.bench`), driven from user
space by BPF_PROG_TEST_RUN with a repeat count, emits one event per run:
``{u64 ts, u32 cpu, u32 seq, u64 pad[]}`` with ``seq`` counting every
invocation on its CPU (drops included) and every pad word ``ts ^ PAD_MAGIC``
(the same event as the C/libbpf anchor harness).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Final

import numpy as np
import pyarrow as pa

from ebcap.bpf import _sys
from ebcap.bpf.maps import Map
from ebcap.bpf.prog import Program
from ebcap.bpf.programs import bench
from ebcap.capture.layout import PayloadLayout
from ebcap.capture.sources import (
    KernelSide,
    Source,
    create_counter_map,
    create_events_map,
    read_percpu_u64,
)

TEST_RUN_PACKET: Final = bytes(64)
"""Input of each test run; a socket filter needs at least an Ethernet header."""


class BenchSource(Source):
    """The producer's kernel side: events map, stats map and the loaded program."""

    drops_are_lost_events = True

    def __init__(self, size: int) -> None:
        self.size = bench.check_size(size)
        self.spec = f"bench:{size}"
        self.layout = PayloadLayout(bench.bench_event_dtype(size), "ts", "cpu")
        self.stats: Map | None = None
        self._program: Program | None = None
        self._final: tuple[list[int], list[int]] | None = None

    def arrow_fields(self) -> list[pa.Field]:
        return [pa.field("ev_seq", pa.uint32())]

    def decode(self, events: np.ndarray) -> dict[str, pa.Array]:
        return {"ev_seq": pa.array(np.ascontiguousarray(events["seq"]))}

    def start(self, transport: str, buffer_bytes: int, stack: ExitStack) -> KernelSide:
        events = create_events_map(transport, buffer_bytes, stack)
        self.stats = create_counter_map("ebcap_bstats", bench.BENCH_STATS.itemsize, stack)
        stack.callback(self._keep_final_counters)  # runs before the map closes
        scratch = None
        if bench.needs_scratch_map(transport, self.size):
            scratch = create_counter_map("ebcap_bscratch", self.size, stack)
        insns = bench.build_bench_program(
            transport,
            self.size,
            events.fd,
            self.stats.fd,
            scratch_map_fd=scratch.fd if scratch is not None else None,
        )
        program = Program.load(_sys.BPF_PROG_TYPE_SOCKET_FILTER, insns, name="ebcap_bench")
        stack.callback(program.close)
        self._program = program
        # Drops are counted in the stats map: no separate drops map.
        return KernelSide(events, self.stats, drops_field=bench.STATS_DROPS)

    @property
    def program(self) -> Program:
        if self._program is None:
            raise RuntimeError("the bench source has not started")
        return self._program

    def counters(self) -> tuple[list[int], list[int]]:
        """Per-CPU (invocations, drops) from the stats map, or as it was when it closed."""
        if self._final is not None:
            return self._final
        if self.stats is None:
            raise RuntimeError("the bench source has not started")
        return (
            read_percpu_u64(self.stats, bench.STATS_INVOCATIONS),
            read_percpu_u64(self.stats, bench.STATS_DROPS),
        )

    def _keep_final_counters(self) -> None:
        self._final = self.counters()
