"""Which allocator Arrow uses for a long streaming run, and how it gets ready.

pyarrow's default pool (mimalloc) keeps freed memory for reuse, and with
batches of varying size what it keeps grows over a long replay; jemalloc, as
pyarrow configures it, hands freed pages back so eagerly that they are
faulted in again for the next batch. The C library's allocator does neither:
peak memory then follows the largest batch, not the length of the file.

glibc serves a large block by mapping fresh pages and unmaps them when it is
freed, so every batch would fault its buffers in again; freeing one large
mapped block raises that threshold (mallopt(3), "dynamic mmap threshold"),
after which batch-sized buffers are reused from the heap.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Final

import numpy as np
import pyarrow as pa

POOL_ENVIRONMENT: Final = "ARROW_DEFAULT_MEMORY_POOL"
"""Arrow's own setting; when the user sets it, their choice stands."""

PRIME_BYTES: Final = 31 << 20
"""Just below glibc's 32 MiB ceiling for the dynamic mmap threshold."""

WARM_BYTES: Final = 48 << 20
"""Below glibc's trim threshold (twice the mmap threshold, 62 MiB once primed), so the
pages stay with the allocator when freed."""

WARM_PIECE_BYTES: Final = 1 << 20
"""Far below the mmap threshold, so the pieces come from, and go back to, the heap."""

DRAIN_WARM_BYTES: Final = 128 << 20
"""What a recorder's drain thread touches first: its batches live on while they wait
for the writer, so a burst the writer takes a while to write needs this much and more."""

RECORDING_KEEP_BYTES: Final = 512 << 20
"""Freed heap a recording process keeps: twice the batches that may wait for the writer
(:data:`ebcap.format.writer.WRITE_BEHIND_BYTES`), so a burst's pages are faulted in once."""


def use_recording_memory() -> str:
    """The streaming pool, and freed memory kept for the next burst; the pool's name."""
    name = use_streaming_pool()
    keep_freed_memory(RECORDING_KEEP_BYTES)
    return name


def use_streaming_pool() -> str:
    """Make the system allocator Arrow's default pool, unless the user chose one; its name."""
    if not os.environ.get(POOL_ENVIRONMENT):
        pool = pa.system_memory_pool()
        pa.set_memory_pool(pool)
        prime = pa.allocate_buffer(PRIME_BYTES, memory_pool=pool)
        del prime  # mapped, then freed: the threshold rises to its size
    return pa.default_memory_pool().backend_name


M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
"""mallopt(3) parameter numbers (malloc.h)."""


def keep_freed_memory(nbytes: int) -> bool:
    """Have glibc keep up to ``nbytes`` of freed heap for reuse; False where there is no
    glibc ``mallopt``.

    By default glibc hands the top of the heap back to the kernel once more than the
    trim threshold (62 MiB once primed) is free there, and the next burst faults those
    pages in again. A recorder that queued a burst's batches for its writer then pays
    for every page twice, in the thread that drains the rings. Setting the trim
    threshold turns glibc's dynamic mmap threshold off, so the mmap threshold is set
    too, to what :func:`use_streaming_pool` primes (it does not prime when the user
    chose Arrow's pool): left at its 128 KiB start, every batch-sized block would be
    mapped and unmapped again.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library linked in
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = mallopt(M_MMAP_THRESHOLD, PRIME_BYTES)
    return bool(kept and mallopt(M_TRIM_THRESHOLD, min(nbytes, 2**31 - 1)))


def fault_in(nbytes: int = WARM_BYTES) -> None:
    """Touch ``nbytes`` of this thread's heap, then free them.

    Each thread allocates from an arena of its own, whose pages are faulted in
    the first time they are used: a recording's first batches cost ~0.2 us a
    256-byte row more than the later ones (measured), just when the rings are
    filling, and on a VM whose host takes freed guest memory back a page can
    cost tens of microseconds. Done before the producer starts, the batches
    reuse pages already there. The memory is taken in pieces well below the
    mmap threshold: glibc maps a single block this large on its own and unmaps
    it when freed, which would leave nothing behind. numpy allocates from the
    C library too; its heap is touched as well when Arrow's pool is another.
    """
    heaps: list[Callable[[], np.ndarray]] = [
        lambda: np.frombuffer(pa.allocate_buffer(WARM_PIECE_BYTES), dtype=np.uint8)
    ]
    if pa.default_memory_pool().backend_name != "system":
        heaps.append(lambda: np.empty(WARM_PIECE_BYTES, dtype=np.uint8))
    for allocate in heaps:
        pieces = [allocate() for _ in range(nbytes // WARM_PIECE_BYTES)]
        for piece in pieces:  # all of them held at once, so none reuses another's pages
            piece.fill(1)
        del pieces
