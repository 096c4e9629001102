"""Checking a bench recording event by event: every payload as the producer wrote
it, and every CPU's sequence numbers whole, in order and each once.

The producer's event is ground truth by itself: ``seq`` counts every attempt on
its CPU (drops included) and every pad word is ``ts ^ PAD_MAGIC``, so damage
to any byte, a duplicate, a reordering or a gap shows here without another
copy of what was sent. Which ring an event came through is not checked: the
recorder fills the ``cpu`` column from the event's own cpu field (the bench
layout names it), so the file keeps no other CPU to compare with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.bpf.programs.bench import PAD_MAGIC
from ebcap.capture.batch import fixed_rows
from ebcap.capture.sequence_check import CpuSequence
from ebcap.format.schema import KIND_LOST, KIND_SAMPLE


def unwrap32(seq: np.ndarray, last: int) -> np.ndarray:
    """The event's 32-bit ``seq`` as the whole count it stands for, from ``last``, the
    whole number before it (-1: none yet): past 2**32 events on a CPU (~6.5 min at
    11 M/s) the field wraps, and each number is taken nearest to the one before it."""
    if not len(seq):
        return seq.astype(np.int64)
    if last < 0:  # the first number has none before it: it is what it says
        last = int(seq[0]) - 1
    before = np.concatenate(([last & 0xFFFF_FFFF], seq[:-1])).astype(np.int64)
    step = (seq.astype(np.int64) - before + (1 << 31)) % (1 << 32) - (1 << 31)
    return last + np.cumsum(step)


@dataclass
class IntegrityReport:
    """Event-by-event check of a bench recording."""

    received: int = 0
    corrupted: int = 0
    duplicates: int = 0
    received_per_cpu: dict[int, int] = field(default_factory=dict)
    """Distinct sequence numbers received per CPU (by the CPU in the event header)."""
    holes_per_cpu: dict[int, int] = field(default_factory=dict)
    """Sequence numbers missing below the highest one received, per CPU."""
    out_of_order_per_cpu: dict[int, int] = field(default_factory=dict)
    """Events whose sequence number is below the one before, per CPU."""
    lost_per_cpu: dict[int, int] = field(default_factory=dict)
    """Events the recording says were lost (its ``lost`` rows), per CPU."""


def _rows_of_kind(batch: pa.RecordBatch, kind: str) -> pa.RecordBatch:
    return batch.filter(pc.equal(batch["kind"].cast(pa.string()), kind))


def _count_lost(batch: pa.RecordBatch, report: IntegrityReport) -> None:
    if "lost" not in batch.schema.names:
        return
    lost = _rows_of_kind(batch, KIND_LOST)
    for cpu, n in zip(lost["cpu"].to_pylist(), lost["lost"].to_pylist(), strict=True):
        report.lost_per_cpu[cpu] = report.lost_per_cpu.get(cpu, 0) + n


def check_integrity(batches: Iterable[pa.RecordBatch], size: int) -> IntegrityReport:
    """Check every sample's header and padding, and per-CPU sequence continuity.

    One batch at a time: what is kept across batches is, per CPU, the ranges of
    sequence numbers still missing (:mod:`ebcap.capture.sequence_check`).
    """
    report = IntegrityReport()
    seqs: dict[int, CpuSequence] = {}
    for batch in batches:
        _count_lost(batch, report)
        samples = _rows_of_kind(batch, KIND_SAMPLE)
        report.received += samples.num_rows
        if not samples.num_rows:
            continue
        data = samples["data"]
        offsets = np.frombuffer(data.buffers()[1], np.int32, len(data) + 1, data.offset * 4)
        values = np.frombuffer(data.buffers()[2], dtype=np.uint8)
        good_length = np.diff(offsets) >= size
        rows = np.flatnonzero(good_length)
        report.corrupted += int((~good_length).sum())
        words = fixed_rows(values, offsets[rows], size).view("<u8").reshape(len(rows), size // 8)
        ts = words[:, 0]
        header_cpu = (words[:, 1] & 0xFFFFFFFF).astype(np.int64)
        seq = (words[:, 1] >> 32).astype(np.int64)
        bad = np.zeros(len(rows), dtype=bool)
        if size > 16:
            bad |= (words[:, 2:] != (ts ^ np.uint64(PAD_MAGIC))[:, None]).any(axis=1)
        report.corrupted += int(bad.sum())
        for cpu in np.unique(header_cpu[~bad]).tolist():
            numbers = seqs.setdefault(cpu, CpuSequence())
            numbers.add(unwrap32(seq[(header_cpu == cpu) & ~bad], numbers.last))
    for cpu, numbers in seqs.items():
        report.duplicates += numbers.duplicates
        report.out_of_order_per_cpu[cpu] = numbers.out_of_order
        report.received_per_cpu[cpu] = numbers.received
        report.holes_per_cpu[cpu] = numbers.holes
    return report
