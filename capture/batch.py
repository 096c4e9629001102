"""What a ring reader hands over per drain: columns of events in arrival order.

Readers return numpy columns rather than one Python object per event so that
a drain of a million events costs a handful of array operations. Payloads
are stored back to back in one byte array with an offsets array, which is
exactly Arrow's binary layout: the recorder gets its ``data`` column without
copying payloads one by one.

:class:`BatchBuilder` is how the ring walkers assemble a batch out of runs of
equal records (vectorised) and single records (the slow path);
:func:`fixed_rows` gathers fixed-size payload prefixes out of the values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Self

import numpy as np
import pyarrow as pa

from ebcap.errors import CaptureError
from ebcap.format.schema import KIND_LOST_CODE, KIND_SAMPLE_CODE

_ARROW_BINARY_MAX: Final = 2**31 - 1
"""Largest byte count an Arrow ``binary`` column (int32 offsets) can address."""


@dataclass
class EventBatch:
    """Events of one drain in arrival order, as parallel numpy columns.

    ``offsets`` has one entry more than there are rows: payload ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``. Lost rows have empty payloads.
    """

    cpu: np.ndarray
    """uint16: the CPU the event was produced on (ring buffer: 0 placeholder)."""
    ts_ns: np.ndarray
    """uint64: perf sample TIME (CLOCK_MONOTONIC); 0 where the transport has none."""
    kind: np.ndarray
    """int8: index into ``ebcap.format.schema.KINDS`` (0 sample, 1 lost)."""
    lost: np.ndarray
    """uint64: events the kernel lost (lost rows), 0 on samples."""
    offsets: np.ndarray
    """int64, n + 1 entries."""
    values: np.ndarray
    """uint8: the payloads back to back."""

    @classmethod
    def empty(cls) -> Self:
        """A batch with no rows."""
        return cls(
            cpu=np.zeros(0, dtype=np.uint16),
            ts_ns=np.zeros(0, dtype=np.uint64),
            kind=np.zeros(0, dtype=np.int8),
            lost=np.zeros(0, dtype=np.uint64),
            offsets=np.zeros(1, dtype=np.int64),
            values=np.zeros(0, dtype=np.uint8),
        )

    @classmethod
    def concat(cls, batches: Iterable[EventBatch]) -> EventBatch:
        """The rows of ``batches`` one after the other, in one batch (no copy for one)."""
        parts = [b for b in batches if len(b)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        values = [b.values[b.offsets[0] : b.offsets[-1]] for b in parts]
        starts = np.cumsum([0] + [len(v) for v in values[:-1]])
        offsets = [np.zeros(1, dtype=np.int64)]
        offsets += [
            b.offsets[1:] - b.offsets[0] + start for b, start in zip(parts, starts, strict=True)
        ]
        return cls(
            cpu=np.concatenate([b.cpu for b in parts]).astype(np.uint16, copy=False),
            ts_ns=np.concatenate([b.ts_ns for b in parts]).astype(np.uint64, copy=False),
            kind=np.concatenate([b.kind for b in parts]).astype(np.int8, copy=False),
            lost=np.concatenate([b.lost for b in parts]).astype(np.uint64, copy=False),
            offsets=np.concatenate(offsets).astype(np.int64, copy=False),
            values=np.concatenate(values).astype(np.uint8, copy=False),
        )

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def lengths(self) -> np.ndarray:
        """Payload length of every row (int64)."""
        return np.diff(self.offsets)

    @property
    def num_samples(self) -> int:
        return int(np.count_nonzero(self.kind == KIND_SAMPLE_CODE))

    @property
    def num_lost(self) -> int:
        """Sum of the lost counts: events the kernel reported lost in this batch."""
        return int(self.lost.sum())

    def payload(self, i: int) -> bytes:
        """The payload of row ``i``."""
        return self.values[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def fixed_payloads(self, size: int) -> np.ndarray | None:
        """The first ``size`` bytes of every payload as an (n, size) uint8 view.

        Only when every row's payload has the same length (at least ``size``):
        then this is a strided view of ``values``, no copy. Otherwise None
        (lost rows, whose payloads are empty, make it None too).
        """
        n = len(self)
        if n == 0:
            return np.zeros((0, size), dtype=np.uint8)
        lengths = self.lengths
        stride = int(lengths[0])
        if stride < size or not np.all(lengths == stride):
            return None
        start = int(self.offsets[0])
        rows = self.values[start : start + n * stride]
        if stride == 0:
            return rows.reshape(n, 0)
        return rows.reshape(n, stride)[:, :size]

    def take(self, rows: np.ndarray | Sequence[int]) -> Self:
        """A new batch of the given rows, in the given order."""
        index = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[:-1][index]
        lengths = self.lengths[index]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total and len(index) and np.all(np.diff(index) == 1):
            values = self.values[starts[0] : starts[0] + total].copy()
        else:
            gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
            values = self.values[gather]
        return type(self)(
            cpu=self.cpu[index],
            ts_ns=self.ts_ns[index],
            kind=self.kind[index],
            lost=self.lost[index],
            offsets=offsets,
            values=values,
        )

    def to_arrow_binary(self) -> pa.BinaryArray:
        """The payloads as an Arrow binary array sharing ``values`` (no per-row loop)."""
        start, end = int(self.offsets[0]), int(self.offsets[-1])
        if end - start > _ARROW_BINARY_MAX:
            raise CaptureError(
                f"one drain of {end - start} payload bytes is over the 2 GiB an Arrow "
                "binary column holds: use smaller rings"
            )
        offsets = (self.offsets - start).astype(np.int32)
        values = np.ascontiguousarray(self.values[start:end])
        return pa.Array.from_buffers(
            pa.binary(), len(self), [None, pa.py_buffer(offsets), pa.py_buffer(values)]
        )


class BatchBuilder:
    """Collects runs and single records of one ring walk, then builds the batch once.

    Payloads may be views of ``borrowed`` (a reused span buffer, see
    :class:`~ebcap.capture.ring_walk.SpanBuffer`): the batch never keeps one.
    """

    def __init__(self, borrowed: np.ndarray | None = None) -> None:
        self._borrowed = borrowed
        self._cpu: list[np.ndarray] = []
        self._ts: list[np.ndarray] = []
        self._kind: list[np.ndarray] = []
        self._lost: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def add_run(self, cpu: np.ndarray | int, ts_ns: np.ndarray | int, payloads: np.ndarray) -> None:
        """Samples with equal payload lengths: ``payloads`` is an (n, length) uint8 array."""
        n, length = payloads.shape
        self._cpu.append(np.broadcast_to(np.asarray(cpu, dtype=np.uint16), (n,)))
        self._ts.append(np.broadcast_to(np.asarray(ts_ns, dtype=np.uint64), (n,)))
        self._kind.append(np.full(n, KIND_SAMPLE_CODE, dtype=np.int8))
        self._lost.append(np.zeros(n, dtype=np.uint64))
        self._lengths.append(np.full(n, length, dtype=np.int64))
        self._values.append(payloads.reshape(-1))

    def add_sample(self, cpu: int, ts_ns: int, payload: np.ndarray) -> None:
        """One sample; ``payload`` is a 1-d uint8 array."""
        self.add_run(cpu, ts_ns, payload.reshape(1, -1))

    def add_lost(self, cpu: int, ts_ns: int, lost: int) -> None:
        """One lost row: ``lost`` events the kernel could not deliver."""
        self._cpu.append(np.array([cpu], dtype=np.uint16))
        self._ts.append(np.array([ts_ns], dtype=np.uint64))
        self._kind.append(np.array([KIND_LOST_CODE], dtype=np.int8))
        self._lost.append(np.array([lost], dtype=np.uint64))
        self._lengths.append(np.zeros(1, dtype=np.int64))

    def build(self) -> EventBatch:
        if not self._kind:
            return EventBatch.empty()
        lengths = np.concatenate(self._lengths)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(self._values) == 1:  # the usual drain: one run, already our own memory
            values = self._values[0]
            if self._borrowed is not None and np.may_share_memory(values, self._borrowed):
                values = values.copy()  # a single record: a view of the span buffer
        elif self._values:
            values = np.concatenate(self._values)
        else:
            values = np.zeros(0, dtype=np.uint8)
        return EventBatch(
            cpu=np.concatenate(self._cpu),
            ts_ns=np.concatenate(self._ts),
            kind=np.concatenate(self._kind),
            lost=np.concatenate(self._lost),
            offsets=offsets,
            values=values,
        )


def fixed_rows(values: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` bytes of ``values`` (uint8) at each offset in ``starts``, as an
    (n, size) array of its own; every start must have ``size`` bytes after it.

    Payloads at a constant distance (equal events, with at most empty lost rows
    between them) are one strided copy; any others one row copy each out of a
    window view. Never an index of every byte, which costs 8 bytes of index per
    payload byte (gigabytes for a few million 256-byte events).
    """
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros((0, size), dtype=np.uint8)
    steps = np.diff(starts)
    if len(steps) == 0 or (steps[0] >= size and bool(np.all(steps == steps[0]))):
        stride = int(steps[0]) if len(steps) else size
        view = np.lib.stride_tricks.as_strided(
            values[int(starts[0]) :], shape=(len(starts), size), strides=(stride, 1),
            writeable=False,
        )  # fmt: skip
        return np.ascontiguousarray(view)
    return np.lib.stride_tricks.sliding_window_view(values, size)[starts]
