"""What both ring walks share: positions read and stored whole, the span between
them copied out, and runs of equal records found.

A ring's positions (perf ``data_head``/``data_tail``, ring buffer
``producer_pos``/``consumer_pos``) are u64 words in memory shared with the
kernel, which reads and writes them while we do. Each must be read and
stored as one aligned 8-byte access: ``struct.pack_into`` first zeroes its
destination and then writes the value, so a kernel producer can see the
consumer position at 0 for an instant. For a perf ring that is the ring
suddenly free modulo its size: the kernel writes over records not yet read
and its head runs up to a second lap ahead of the tail. :class:`RingPosition`
goes through a one-element numpy view, whose element access is a single
aligned load or store. x86-64 keeps those in program order with the data
accesses around them (load head, then copy the data, then store the tail),
as the kernel's ring protocol asks.

No syscalls here: the functions take a buffer, so they run the same on a
real mmap and on a fake ring built in a test.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Final, TypeAlias

import numpy as np

from ebcap.errors import CaptureError

RingData: TypeAlias = bytes | bytearray | memoryview | mmap.mmap | np.ndarray
"""A ring's data area as the walkers accept it: anything with the buffer protocol."""

_FIRST_WINDOW: Final = 32
_POSITION: Final = np.dtype("<u8")


class RingPosition:
    """One free-running u64 ring position at ``offset`` of a shared mapping.

    :meth:`load` and :meth:`store` are single aligned 8-byte accesses, so
    the kernel never sees half a value (nor the 0 that ``struct.pack_into``
    writes first). The view pins the mapping: :meth:`release` it before the
    mapping is closed.
    """

    def __init__(self, area: RingData, offset: int) -> None:
        if offset % _POSITION.itemsize:
            raise ValueError(f"ring position at offset {offset}: not 8-byte aligned")
        self._cell: np.ndarray | None = np.frombuffer(area, _POSITION, count=1, offset=offset)

    def _live(self) -> np.ndarray:
        if self._cell is None:
            raise CaptureError("ring position used after its mapping was released")
        return self._cell

    def load(self) -> int:
        return int(self._live()[0])

    def store(self, value: int) -> None:
        self._live()[0] = value

    def release(self) -> None:
        """Drop the view of the mapping (again does nothing)."""
        self._cell = None


class SpanBuffer:
    """Memory a reader copies its ring spans into, drain after drain.

    A new array per drain is new pages per drain, and on a VM whose host takes
    freed guest memory back each first touch of a page can cost tens of
    microseconds: copying 10 MB out of a ring buffer held the reader up for
    40-70 ms (~1,000 page faults, measured), while a burst filled the rest of
    the ring. This array is touched once when it grows and reused after; what
    a walk keeps is copied out of it (:class:`~ebcap.capture.batch.BatchBuilder`).
    """

    def __init__(self, nbytes: int = 0) -> None:
        self._array = np.zeros(0, dtype=np.uint8)
        self.reserve(nbytes)

    def reserve(self, nbytes: int) -> None:
        """Have at least ``nbytes``, every page of them already in memory."""
        if nbytes > len(self._array):
            array = np.empty(nbytes, dtype=np.uint8)
            array.fill(0)  # fault the pages in now, not in the middle of a drain
            self._array = array

    def take(self, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of the buffer, valid until the next take."""
        self.reserve(nbytes)
        return self._array[:nbytes]


def copy_span(
    data: RingData, data_size: int, start: int, end: int, into: SpanBuffer | None = None
) -> np.ndarray:
    """Bytes ``[start, end)`` of a ring of ``data_size`` bytes, copied out in one piece.

    Positions grow forever and are taken modulo ``data_size`` (a power of two);
    a span that wraps past the ring's end is copied as two slices, so records
    split by the end come out whole. With ``into``, the copy is a view of that
    buffer (overwritten by the next copy); without it, an array of its own.
    """
    if data_size <= 0 or data_size & (data_size - 1):
        raise CaptureError(f"ring data area of {data_size} bytes is not a power of two")
    length = end - start
    if not 0 <= length <= data_size:
        raise CaptureError(
            f"ring positions out of step: {length} bytes between {start} and {end} "
            f"in a {data_size}-byte ring"
        )
    ring = np.frombuffer(data, dtype=np.uint8, count=data_size)
    out = into.take(length) if into is not None else np.empty(length, dtype=np.uint8)
    first = start & (data_size - 1)
    head = min(length, data_size - first)
    out[:head] = ring[first : first + head]
    out[head:] = ring[: length - head]
    del ring  # no view of the caller's buffer may outlive the copy (mmaps close cleanly)
    return out


def run_length(matches: Callable[[int, int], np.ndarray], limit: int) -> int:
    """How many consecutive records from the first match, at most ``limit``.

    ``matches(start, count)`` says, for records ``start .. start + count - 1``,
    which still follow the pattern. Windows double in size, so a run of ``k``
    costs O(k) and a pattern that breaks early costs little.
    """
    done, window = 0, _FIRST_WINDOW
    while done < limit:
        count = min(window, limit - done)
        ok = matches(done, count)
        if not ok.all():
            return done + int(np.argmin(ok))
        done += count
        window *= 2
    return done
