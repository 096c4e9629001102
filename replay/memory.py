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

import os
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


def use_streaming_pool() -> str:
    """Make the system allocator Arrow's default pool, unless the user chose one; its name."""
    if not os.environ.get(POOL_ENVIRONMENT):
        pool = pa.system_memory_pool()
        pa.set_memory_pool(pool)
        prime = pa.allocate_buffer(PRIME_BYTES, memory_pool=pool)
        del prime  # mapped, then freed: the threshold rises to its size
    return pa.default_memory_pool().backend_name


def fault_in(nbytes: int = WARM_BYTES) -> None:
    """Touch ``nbytes`` of Arrow's default pool on this thread, then free them.

    Each thread allocates from an arena of its own, whose pages are faulted in
    the first time they are used: a recording's first batches cost ~0.2 us a
    256-byte row more than the later ones (measured), just when the rings are
    filling. Done before the producer starts, the batches reuse pages already
    there.
    """
    buffer = pa.allocate_buffer(nbytes)
    np.frombuffer(buffer, dtype=np.uint8).fill(1)
    del buffer
