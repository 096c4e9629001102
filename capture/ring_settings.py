"""How big a recording's rings really are, from the size asked for; and the
defaults of their size and of how often a perf ring wakes the reader.

A perf ring is a power of two of pages per CPU: a size in between is rounded
up, and :attr:`RingSize.note` says so (the file records the size used, not
the size asked for). A BPF ring buffer must be a power of two and a multiple
of the page size as it is: anything else is refused rather than silently
grown, as the kernel would refuse it. Both have a floor (one page) and a
ceiling (what the kernel can allocate), checked here before anything is
created, so ``--buffer-size 3`` or ``64G`` is one clear line rather than a
kernel error midway.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Final

from ebcap.errors import UsageError

DEFAULT_PERF_BUFFER_BYTES: Final = 8 << 20
"""Per CPU."""
DEFAULT_RINGBUF_BYTES: Final = 16 << 20
"""The whole ring, shared by every CPU."""
DEFAULT_WAKEUP_EVENTS: Final = 64
"""A perf ring wakes the reader every 64 events (a wakeup per event caps a producer
near 130k events/s per CPU; every 64 near 2M/s)."""

_MAX_PAGE_ORDER: Final = 10
"""The kernel's largest page allocation is ``PAGE_SIZE << MAX_PAGE_ORDER`` (x86-64)."""
_POINTER_SIZE: Final = 8


def perf_ring_max_pages(page_size: int = mmap.PAGESIZE) -> int:
    """The most data pages one perf ring can have.

    The kernel keeps a perf ring's page pointers in one allocation of at most
    ``PAGE_SIZE << MAX_PAGE_ORDER`` bytes (rb_alloc in kernel/events/
    ring_buffer.c), together with its own header: the largest power of two
    that fits is half of what the pointers alone could fill (1 GiB of 4 KiB
    pages; 2^19 pages fail with ENOMEM).
    """
    return (page_size << _MAX_PAGE_ORDER) // _POINTER_SIZE // 2


def default_buffer_bytes(transport: str) -> int:
    return DEFAULT_RINGBUF_BYTES if transport == "ringbuf" else DEFAULT_PERF_BUFFER_BYTES


@dataclass(frozen=True)
class RingSize:
    """The size asked for and the size the rings will have (per CPU for perf)."""

    transport: str
    requested: int
    bytes: int

    @property
    def pages(self) -> int:
        """Data pages of one ring."""
        return self.bytes // mmap.PAGESIZE

    @property
    def note(self) -> str | None:
        """One line saying the size was rounded, or None when it was not."""
        if self.bytes == self.requested:
            return None
        return f"rounded up to {self.bytes} bytes per CPU (a perf ring is a power of two of pages)"


def ring_size(transport: str, requested: int, page_size: int = mmap.PAGESIZE) -> RingSize:
    """The rings a ``transport`` recording of ``requested`` bytes gets; UsageError
    below one page or above the kernel's ceiling."""
    if transport == "ringbuf":
        from ebcap.bpf.maps import validate_ringbuf_size  # the kernel layer: not for --help

        return RingSize(transport, requested, validate_ringbuf_size(requested, page_size))
    if requested < page_size:
        raise UsageError(
            f"a perf ring of {requested} bytes: each CPU's ring needs at least one page "
            f"({page_size} bytes)"
        )
    max_pages = perf_ring_max_pages(page_size)
    pages = -(-requested // page_size)
    if pages > max_pages:
        raise UsageError(
            f"a perf ring of {requested} bytes: the kernel allocates at most "
            f"{max_pages * page_size} bytes ({max_pages} pages) per CPU"
        )
    return RingSize(transport, requested, (1 << (pages - 1).bit_length()) * page_size)
