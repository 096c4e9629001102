"""The ebcap file layout, defined once: core columns and metadata keys.

An ebcap file is a plain Arrow IPC *file* with zstd-compressed buffers. Every
file starts with the core columns below; source-specific decoded columns
(pid, comm, syscall, packet fields, ...) follow them. Schema-level metadata
describes the capture (keys under ``ebcap.``); totals known only at the end
are stored as custom metadata on the last record batch under
:data:`TOTALS_KEY`. docs/FORMAT.md documents all of it for readers without ebcap.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

FORMAT_VERSION: Final = 1
"""Bumped on any change an older reader would misread."""

MAGIC_KEY: Final = "ebcap.format"
MAGIC_VALUE: Final = "ebcap"
VERSION_KEY: Final = "ebcap.format_version"

KIND_SAMPLE: Final = "sample"
KIND_LOST: Final = "lost"
KINDS: Final = (KIND_SAMPLE, KIND_LOST)
"""Dictionary of the ``kind`` column; the index of each value is fixed."""

KIND_TYPE: Final = pa.dictionary(pa.int8(), pa.string())

CORE_FIELDS: Final = (
    pa.field("seq", pa.uint64(), nullable=False),
    pa.field("cpu", pa.uint16(), nullable=False),
    pa.field("ts_ns", pa.uint64(), nullable=False),
    pa.field("kind", KIND_TYPE, nullable=False),
    pa.field("lost", pa.uint64(), nullable=False),
    pa.field("round", pa.uint32(), nullable=False),
    pa.field("data", pa.binary(), nullable=False),
)
CORE_COLUMNS: Final = tuple(f.name for f in CORE_FIELDS)

# Schema metadata: written at open, describing the capture.
META_EBCAP_VERSION: Final = "ebcap.version"
META_TRANSPORT: Final = "ebcap.transport"  # "perf" | "ringbuf"
META_SOURCE: Final = "ebcap.source"  # source spec, e.g. "syscalls", "pin:/sys/fs/bpf/x"
META_SOURCE_LAYOUT: Final = "ebcap.source_layout"  # JSON: payload fields, see FORMAT.md
META_COMMAND: Final = "ebcap.command"  # the full command line, JSON list
META_HOSTNAME: Final = "ebcap.hostname"
META_KERNEL: Final = "ebcap.kernel"  # uname release
META_NCPUS: Final = "ebcap.ncpus"
META_PAGE_SIZE: Final = "ebcap.page_size"
META_BUFFER_SIZE: Final = "ebcap.buffer_size"  # bytes: per CPU (perf) or whole ring (ringbuf)
META_WAKEUP: Final = "ebcap.wakeup"  # e.g. "events:64", "watermark:65536", "ringbuf:adaptive"
META_CLOCK: Final = "ebcap.clock"  # "CLOCK_MONOTONIC"
META_REALTIME_OFFSET: Final = "ebcap.realtime_offset_ns"  # CLOCK_REALTIME - CLOCK_MONOTONIC
META_START_TIME: Final = "ebcap.start_time"  # ISO 8601 UTC
META_FLUSH_INTERVAL: Final = "ebcap.flush_interval_s"
META_CPUS: Final = "ebcap.cpus"  # CPUs recorded, JSON list

REQUIRED_META: Final = (MAGIC_KEY, VERSION_KEY, META_TRANSPORT, META_SOURCE)

TOTALS_KEY: Final = "ebcap.totals"
"""Custom metadata of the last batch: JSON with end_time, events/lost/drops per CPU."""


def make_schema(
    extra_fields: list[pa.Field] | tuple[pa.Field, ...] = (),
    metadata: dict[str, str] | None = None,
) -> pa.Schema:
    """The schema of one capture: core columns, then the source's own columns."""
    names = [f.name for f in extra_fields]
    clash = set(names) & set(CORE_COLUMNS)
    if clash or len(set(names)) != len(names):
        raise ValueError(f"source columns clash with core or each other: {sorted(clash) or names}")
    meta = {MAGIC_KEY: MAGIC_VALUE, VERSION_KEY: str(FORMAT_VERSION)}
    meta.update(metadata or {})
    return pa.schema([*CORE_FIELDS, *extra_fields], metadata=meta)
