"""The schema metadata of a capture: what, where, when and how it was recorded."""

from __future__ import annotations

import mmap
import os
import socket
import time
from typing import TYPE_CHECKING

from ebcap import __version__
from ebcap.bpf import cpus
from ebcap.capture.readers import ring_bytes_used
from ebcap.format import schema as s
from ebcap.format.writer import utc_now_iso

if TYPE_CHECKING:
    from ebcap.capture.recorder import Recorder, RecordOptions

CLOCK_NAME = "CLOCK_MONOTONIC"


def realtime_offset_ns(samples: int = 16) -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few paired readings.

    Adding it to a ``ts_ns`` gives wall-clock nanoseconds since the epoch.
    """
    readings = []
    for _ in range(max(samples, 1)):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        readings.append((after - before, wall - (before + after) // 2))
    return min(readings)[1]


def wakeup_description(transport: str, wakeup_events: int | None, watermark: int | None) -> str:
    """How the kernel wakes the reader, as stored in ``ebcap.wakeup``."""
    if transport == "ringbuf":
        return "ringbuf:adaptive"
    if watermark:
        return f"watermark:{watermark}"
    return f"events:{wakeup_events or 1}"


def capture_metadata(recorder: Recorder, opts: RecordOptions) -> dict[str, str]:
    """Schema metadata for a recording about to start."""
    source = recorder.source
    layout = source.layout
    meta: dict[str, object] = {
        s.META_EBCAP_VERSION: __version__,
        s.META_TRANSPORT: recorder.transport,
        s.META_SOURCE: source.spec,
        s.META_COMMAND: opts.command,
        s.META_HOSTNAME: socket.gethostname(),
        s.META_KERNEL: os.uname().release,
        s.META_NCPUS: len(cpus.online_cpus()),
        s.META_CPUS: recorder.cpus,
        s.META_PAGE_SIZE: mmap.PAGESIZE,
        s.META_BUFFER_SIZE: ring_bytes_used(recorder.transport, opts.buffer_bytes, source),
        s.META_WAKEUP: wakeup_description(
            recorder.transport, opts.wakeup_events, opts.watermark_bytes
        ),
        s.META_CLOCK: CLOCK_NAME,
        s.META_REALTIME_OFFSET: realtime_offset_ns(),
        s.META_START_TIME: utc_now_iso(),
        s.META_FLUSH_INTERVAL: opts.flush_interval_s,
    }
    if layout is not None:
        meta[s.META_SOURCE_LAYOUT] = layout.description()
    return s.encode_metadata(meta)
