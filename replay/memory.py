"""Which allocator Arrow uses for a long streaming run.

pyarrow's default pool (mimalloc) keeps freed memory for reuse, and with
batches of varying size what it keeps grows over a long replay; jemalloc, as
pyarrow configures it, hands freed pages back so eagerly that they are
faulted in again for the next batch. The C library's allocator does neither:
peak memory then follows the largest batch, not the length of the file.
"""

from __future__ import annotations

import os
from typing import Final

import pyarrow as pa

POOL_ENVIRONMENT: Final = "ARROW_DEFAULT_MEMORY_POOL"
"""Arrow's own setting; when the user sets it, their choice stands."""


def use_streaming_pool() -> str:
    """Make the system allocator Arrow's default pool, unless the user chose one; its name."""
    if not os.environ.get(POOL_ENVIRONMENT):
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name
