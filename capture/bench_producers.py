"""The bench's producer threads: one per CPU, pinned there, running the program
through BPF_PROG_TEST_RUN until told to stop; and the consumer kept off their CPUs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

from ebcap.capture.bench_source import TEST_RUN_PACKET, BenchSource

REPEAT_PER_CALL: Final = 4096
"""Runs per BPF_PROG_TEST_RUN call: long enough that the call costs little, short
enough that a stop is seen within milliseconds."""


@dataclass
class ProducerRun:
    """What the producer threads did."""

    started_ns: int = 0
    ended_ns: int = 0
    calls: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return max(self.ended_ns - self.started_ns, 1) / 1e9


class Producers:
    """One pinned thread per CPU, each running the program until told to stop."""

    def __init__(self, source: BenchSource, cpus: list[int], duration_s: float) -> None:
        self.source = source
        self.cpus = cpus
        self.duration_s = duration_s
        self.run = ProducerRun()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.done = threading.Event()

    def start(self) -> None:
        self.run.started_ns = time.monotonic_ns()
        for cpu in self.cpus:
            thread = threading.Thread(target=self._produce, args=(cpu,), daemon=True)
            self._threads.append(thread)
            thread.start()
        threading.Thread(target=self._join_all, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _join_all(self) -> None:
        for thread in self._threads:
            thread.join()
        self.run.ended_ns = time.monotonic_ns()
        self.done.set()

    def _produce(self, cpu: int) -> None:
        program = self.source.program
        try:
            os.sched_setaffinity(0, {cpu})
            deadline = time.monotonic() + self.duration_s
            while not self._stop.is_set() and time.monotonic() < deadline:
                program.test_run(TEST_RUN_PACKET, repeat=REPEAT_PER_CALL)
                with self._lock:
                    self.run.calls += 1
        except Exception as exc:  # reported, not swallowed: the bench fails on it
            with self._lock:
                self.run.errors.append(f"producer on CPU {cpu}: {exc}")


@contextmanager
def consumer_off(producer_cpus: list[int]) -> Iterator[None]:
    """Pin the consumer (this thread) to the CPUs nobody produces on, if any are left,
    and give it its old CPUs back afterwards.

    The anchor harness does the same (consumer on CPU 1, producer on CPU 0).
    Producer threads pin themselves, so they are not affected.
    """
    before = os.sched_getaffinity(0)
    free = set(before) - set(producer_cpus)
    if free:
        os.sched_setaffinity(0, free)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
