"""The ebcap file layout, defined once: core columns and metadata keys.

An ebcap file is a plain Arrow IPC *file* with zstd-compressed buffers. Every
file starts with the core columns below; source-specific decoded columns
(pid, comm, syscall, packet fields, ...) follow them. Schema-level metadata
describes the capture (keys under ``ebcap.``); totals known only at the end
are stored as custom metadata on the last record batch under
:data:`TOTALS_KEY`. docs/FORMAT.md documents all of it for readers without ebcap.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from typing import Any, Final

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
KIND_SAMPLE_CODE: Final = KINDS.index(KIND_SAMPLE)
"""The ``kind`` dictionary index of sample rows, in every file."""
KIND_LOST_CODE: Final = KINDS.index(KIND_LOST)
"""The ``kind`` dictionary index of lost rows, in every file."""

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
UNKNOWN_CPU: Final = 0xFFFF
"""``cpu`` of an event whose CPU nothing tells: a pinned ring buffer's record whose
layout names no cpu field, or a cpu field outside 0..65535."""

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

META_RECOVERED: Final = "ebcap.recovered"  # JSON: written by `ebcap recover`, see FORMAT.md
META_CHECKSUM: Final = "ebcap.checksum"  # "crc32": every batch carries CHECKSUMS_KEY

REQUIRED_META: Final = (MAGIC_KEY, VERSION_KEY, META_TRANSPORT, META_SOURCE)

_META_INT: Final = frozenset(
    {VERSION_KEY, META_NCPUS, META_PAGE_SIZE, META_BUFFER_SIZE, META_REALTIME_OFFSET}
)
_META_FLOAT: Final = frozenset({META_FLUSH_INTERVAL})
_META_JSON: Final = frozenset({META_SOURCE_LAYOUT, META_COMMAND, META_CPUS, META_RECOVERED})

TOTALS_KEY: Final = "ebcap.totals"
"""Custom metadata of the last batch: JSON with end_time, events/lost/drops per CPU, ..."""

CHECKSUMS_KEY: Final = "ebcap.checksums"
"""Custom metadata of every batch: JSON with the CRC-32 of the schema, each column, the totals."""

TOTAL_END_TIME: Final = "end_time"  # ISO 8601 UTC, when the capture stopped
TOTAL_DURATION: Final = "duration_s"  # seconds the capture ran
TOTAL_EVENTS: Final = "events"  # sample records written, all CPUs
TOTAL_LOST: Final = "lost"  # events lost: sum of the lost column over lost rows
TOTAL_DROPS: Final = "drops"  # events the BPF program counted as dropped
TOTAL_EVENTS_PER_CPU: Final = "events_per_cpu"  # {cpu: count}, likewise below
TOTAL_LOST_PER_CPU: Final = "lost_per_cpu"
TOTAL_DROPS_PER_CPU: Final = "drops_per_cpu"
TOTAL_UNDECODABLE: Final = "undecodable"  # samples too short for the layout (columns null)
TOTAL_UNCOMPRESSED_BYTES: Final = "uncompressed_bytes"  # Arrow bytes of the rows, uncompressed
TOTAL_LAST_DRAIN_NS: Final = "last_drain_ns"  # CLOCK_MONOTONIC of the last drain with events
TOTAL_RECOVERED: Final = "recovered"  # true when recomputed from the rows by `ebcap recover`
COUNT_TOTALS: Final = (
    TOTAL_EVENTS,
    TOTAL_LOST,
    TOTAL_DROPS,
    TOTAL_UNDECODABLE,
    TOTAL_UNCOMPRESSED_BYTES,
)
PER_CPU_TOTALS: Final = (TOTAL_EVENTS_PER_CPU, TOTAL_LOST_PER_CPU, TOTAL_DROPS_PER_CPU)
ROW_TOTALS: Final = (
    TOTAL_EVENTS,
    TOTAL_LOST,
    TOTAL_EVENTS_PER_CPU,
    TOTAL_LOST_PER_CPU,
    TOTAL_UNDECODABLE,
    TOTAL_UNCOMPRESSED_BYTES,
)
"""Totals that describe the rows: recomputed (or dropped) when recovery loses rows.
The others (end time, duration, drops) describe the capture and stay true."""

RECOVERED_FROM: Final = "from"  # file name of the damaged source
RECOVERED_DAMAGE_OFFSET: Final = "damage_offset"  # byte offset where the source file broke
RECOVERED_REASON: Final = "reason"
RECOVERED_SOURCE_BATCHES: Final = "source_batches"  # batches the source's footer indexes
RECOVERED_SKIPPED: Final = "skipped_batches"  # damaged batches left out: the file has gaps
RECOVERED_EARLIER: Final = "earlier"  # the source's own marker, when it was recovered too
SKIPPED_BATCH: Final = "batch"  # 1-based number of the batch in the source
SKIPPED_ROWS: Final = "rows"  # rows it held, null when its header is unreadable too
SKIPPED_FIRST_SEQ: Final = "first_seq"  # its seq range, when its seq column is intact
SKIPPED_LAST_SEQ: Final = "last_seq"
SKIPPED_REASON: Final = "reason"


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


def encode_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """Schema metadata as Arrow stores it (strings), each key in its documented encoding."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if key in _META_JSON:
            out[key] = json.dumps(value, separators=(",", ":"))
        elif key in _META_INT:
            out[key] = str(int(value))
        elif key in _META_FLOAT:
            out[key] = repr(float(value))
        else:
            out[key] = str(value)
    return out


def decode_metadata(raw: Mapping[bytes, bytes] | Mapping[str, str] | None) -> dict[str, Any]:
    """The ``ebcap.*`` keys of a schema, decoded (ints as int, JSON as objects).

    Raises ValueError on a value that does not decode; readers turn it into a
    bad-file error naming the key.
    """
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        text = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        if not key.startswith("ebcap."):
            continue
        try:
            if key in _META_JSON:
                out[key] = json.loads(text)
            elif key in _META_INT:
                out[key] = int(text)
            elif key in _META_FLOAT:
                out[key] = float(text)
            else:
                out[key] = text
        except ValueError:
            raise ValueError(f"metadata {key} has a bad value {text[:40]!r}") from None
        if key in _META_SHAPES and not _META_SHAPES[key][0](out[key]):
            what = _META_SHAPES[key][1]
            raise ValueError(f"metadata {key} is not {what} ({text[:40]!r})")
    return out


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _i64(value: Any) -> bool:
    return -(2**63) <= value < 2**63


_META_SHAPES: Final = {
    META_COMMAND: (_strings, "a list of strings"),
    META_RECOVERED: (_object, "a JSON object"),
    META_REALTIME_OFFSET: (_i64, "a count of nanoseconds within 64 bits"),
}
"""Keys whose decoded value readers use as such: the shape it must have, and its name."""


def encode_totals(totals: Mapping[str, Any]) -> str:
    """Totals as the JSON text stored under :data:`TOTALS_KEY` (per-CPU keys as strings).

    Counts must be non-negative integers (numpy ones welcome); other keys pass
    through as JSON. Keys whose value is None are left out (e.g. no
    ``end_time`` in a recovered file). ValueError on a malformed count.
    """
    out: dict[str, Any] = {}
    for key, value in totals.items():
        if value is None:
            continue
        if key in PER_CPU_TOTALS:
            if not isinstance(value, Mapping):
                raise ValueError(f"totals[{key!r}] must map cpu -> count")
            per_cpu = {_count(key, _cpu(key, c)): _count(key, n) for c, n in value.items()}
            out[key] = {str(c): n for c, n in sorted(per_cpu.items())}
        elif key in COUNT_TOTALS:
            out[key] = _count(key, value)
        else:
            out[key] = value
    try:
        return json.dumps(out, separators=(",", ":"))
    except TypeError as exc:
        raise ValueError(f"totals are not JSON-serialisable: {exc}") from None


def decode_totals(text: str | bytes) -> dict[str, Any]:
    """Totals read back: per-CPU maps get int keys; counts are checked. ValueError if malformed."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("totals are not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("totals are not a JSON object")
    for key in COUNT_TOTALS:
        if key in data:
            data[key] = _count(key, data[key])
    for key in PER_CPU_TOTALS:
        if key in data:
            per_cpu = data[key]
            if not isinstance(per_cpu, dict):
                raise ValueError(f"totals[{key!r}] is not an object")
            data[key] = {_count(key, _cpu(key, c)): _count(key, n) for c, n in per_cpu.items()}
    return data


def _cpu(key: str, cpu: Any) -> Any:
    """A CPU number given as text ("3", the JSON form) becomes an int; others pass to _count."""
    if isinstance(cpu, str):
        if not cpu.isdecimal():
            raise ValueError(f"totals[{key!r}] has a bad cpu {cpu!r}")
        return int(cpu)
    return cpu


def _count(key: str, n: Any) -> int:
    """A count as a plain int (numpy integers welcome, bools and floats not)."""
    try:
        value = -1 if isinstance(n, bool) else operator.index(n)
    except TypeError:
        value = -1
    if value < 0:
        raise ValueError(f"totals[{key!r}] needs non-negative integers, got {n!r}")
    return value
