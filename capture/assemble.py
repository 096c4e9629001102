"""Turn what a reader drained into rows of the ebcap file.

The readers know rings, not sources; the sources know payloads, not files.
This is where the two meet: arrival numbering (``seq``), the drain ``round``,
the payloads as the source completes them, ``ts_ns``/``cpu`` taken from the
payload where the layout carries them, the source's decoded columns, and
``lost`` rows for drops counted inside BPF.
Everything is vectorised over the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ebcap.capture.batch import EventBatch, fixed_rows
from ebcap.capture.sources import Source
from ebcap.format.counts import CpuCounts
from ebcap.format.schema import CORE_COLUMNS, KIND_LOST_CODE, KIND_SAMPLE_CODE, KINDS, UNKNOWN_CPU

_KIND_DICTIONARY = pa.array(KINDS, pa.string())


@dataclass
class RowAssembler:
    """Numbers rows across the whole capture and builds record batches."""

    source: Source
    schema: pa.Schema
    counts: CpuCounts
    """The writer's per-CPU counts of the rows written (the one place they are counted)."""
    next_seq: int = 0
    payload_bytes: int = 0
    payload_bytes_per_cpu: dict[int, int] = field(default_factory=dict)
    """Payload bytes of the rows by the CPU each came from (live progress)."""
    last_drain_ns: int = 0
    """CLOCK_MONOTONIC when the last batch with events was assembled."""
    undecodable: int = 0
    """Samples whose payload is shorter than the layout (kept raw, decoded columns null)."""

    def assemble(self, batch: EventBatch, round_no: int) -> pa.RecordBatch | None:
        """One record batch for one drain round (None when it drained nothing)."""
        n = len(batch)
        if n == 0:
            return None
        batch = self.source.stored_payloads(batch)
        cpu = batch.cpu.astype(np.uint16, copy=True)
        ts = batch.ts_ns.astype(np.uint64, copy=True)
        is_sample = batch.kind == KIND_SAMPLE_CODE
        extra = self._decode(batch, is_sample, cpu, ts)
        seq = np.arange(self.next_seq, self.next_seq + n, dtype=np.uint64)
        self.next_seq += n
        self.payload_bytes += int(batch.offsets[-1] - batch.offsets[0])
        per_cpu = np.bincount(cpu, weights=np.diff(batch.offsets))
        for c in np.flatnonzero(per_cpu).tolist():
            self.payload_bytes_per_cpu[c] = self.payload_bytes_per_cpu.get(c, 0) + int(per_cpu[c])
        if is_sample.any():  # loss rows alone (the final drop counts) are no drain of events
            self.last_drain_ns = time.monotonic_ns()
        columns = {
            "seq": pa.array(seq),
            "cpu": pa.array(cpu),
            "ts_ns": pa.array(ts),
            "kind": pa.DictionaryArray.from_arrays(
                pa.array(batch.kind.astype(np.int8)), _KIND_DICTIONARY
            ),
            "lost": pa.array(batch.lost.astype(np.uint64)),
            "round": pa.array(np.full(n, round_no, dtype=np.uint32)),
            "data": batch.to_arrow_binary(),
        }
        columns.update(extra)
        return pa.RecordBatch.from_arrays(
            [columns[f.name] for f in self.schema], schema=self.schema
        )

    def drop_rows(self, deltas: dict[int, int], ts_ns: int, round_no: int) -> pa.RecordBatch | None:
        """``lost`` rows for events the BPF program counted as dropped since last time."""
        cpus_with_drops = sorted(c for c, d in deltas.items() if d > 0)
        if not cpus_with_drops:
            return None
        n = len(cpus_with_drops)
        lost_batch = EventBatch(
            cpu=np.array(cpus_with_drops, dtype=np.uint16),
            ts_ns=np.full(n, ts_ns, dtype=np.uint64),
            kind=np.full(n, KIND_LOST_CODE, dtype=np.int8),
            lost=np.array([deltas[c] for c in cpus_with_drops], dtype=np.uint64),
            offsets=np.zeros(n + 1, dtype=np.int64),
            values=np.zeros(0, dtype=np.uint8),
        )
        return self.assemble(lost_batch, round_no)

    @property
    def samples_per_cpu(self) -> dict[int, int]:
        return self.counts.events

    @property
    def lost_per_cpu(self) -> dict[int, int]:
        return self.counts.lost

    def _decode(
        self, batch: EventBatch, is_sample: np.ndarray, cpu: np.ndarray, ts: np.ndarray
    ) -> dict[str, pa.Array]:
        """Decoded columns for the batch; fills cpu/ts in place from the payload."""
        layout = self.source.layout
        names = [f.name for f in self.schema][len(CORE_COLUMNS) :]
        if layout is None or (not names and layout.ts_field is None and layout.cpu_field is None):
            return {}
        n = len(batch)
        lengths = np.diff(batch.offsets)
        usable = is_sample & (lengths >= layout.size)
        self.undecodable += int((is_sample & ~usable).sum())
        rows = np.flatnonzero(usable)
        if len(rows) == 0:
            return {name: pa.nulls(n, self.schema.field(name).type) for name in names}
        named = layout.named_dtype
        events = _gather(batch, rows, named.itemsize).view(named).reshape(-1)
        if layout.ts_field:
            ts[rows] = events[layout.ts_field].astype(np.uint64)
        if layout.cpu_field:
            cpu[rows] = _cpu_numbers(events[layout.cpu_field])
        decoded = self.source.decode(events)
        if len(rows) == n:
            return {name: decoded[name] for name in names}
        # Scatter the decoded values back among lost rows and short payloads (null there).
        positions = np.full(n, -1, dtype=np.int64)
        positions[rows] = np.arange(len(rows))
        take = pa.array(positions, mask=positions < 0)
        return {name: decoded[name].take(take) for name in names}


def _cpu_numbers(values: np.ndarray) -> np.ndarray:
    """A layout's cpu field as the uint16 column: a value outside 0..65535 (a field read
    from the wrong bytes) becomes UNKNOWN_CPU, not the number of a real CPU it would
    wrap to."""
    if not len(values) or (int(values.max()) < UNKNOWN_CPU and int(values.min()) >= 0):
        return values.astype(np.uint16)  # the usual case, one pass
    wide = values.astype(np.int64) if values.dtype.kind == "i" else values.astype(np.uint64)
    return np.where((wide >= 0) & (wide < UNKNOWN_CPU), wide, UNKNOWN_CPU).astype(np.uint16)


def _gather(batch: EventBatch, rows: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` bytes of the chosen payloads as a contiguous (n, size) array."""
    fixed = batch.fixed_payloads(size)
    if fixed is not None and len(rows) == len(batch):
        return np.ascontiguousarray(fixed[:, :size])
    return fixed_rows(batch.values, batch.offsets[rows], size)
