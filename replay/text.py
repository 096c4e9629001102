"""Human-readable replay lines, built a whole batch at a time with Arrow compute.

One line per row::

    0.000123456 [001] #1234 openat(0xffffff9c, 0x7ffd3c1a, 0x80000, 0x0, 0x0, 0x0) pid=42 comm=bash
    0.000123402 [000] #1235 write(0x1, ...) pid=7 comm=sshd  << 20.4 us late
    0.000124000 [001] #1236 *** CPU 1 lost 37 events ***

Time is relative to the first row of the replay (``--wall`` adds the wall
clock from the capture's realtime offset). Arrival order marks a late event
with its lateness; time order marks the rows the sort moved earlier with the
``seq`` they arrived as and how late they were. Colour (ANSI) is only used when asked to, i.e. when
the output is a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.errors import UsageError
from ebcap.format import schema as fs
from ebcap.replay.hexfmt import bytes_hex, payload_lengths, u64_hex_columns
from ebcap.replay.scan import KIND_LOST_CODE

ARRIVAL: Final = "arrival"
TIME: Final = "time"
ORDERS: Final = (ARRIVAL, TIME)

PAYLOAD_PREVIEW_BYTES: Final = 16
SYSCALL_COLUMN: Final = "syscall"
SYSCALL_NR_COLUMN: Final = "syscall_nr"
SYSCALL_ARGS: Final = tuple(f"arg{i}" for i in range(6))

_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_CYAN: Final = "\x1b[36m"
_BOLD: Final = "\x1b[1m"
_YELLOW: Final = "\x1b[33m"
_MAGENTA: Final = "\x1b[35m"
_RED_BOLD: Final = "\x1b[1;31m"

_NS_PER_S: Final = 1_000_000_000
_CONTROL_CHARS: Final = r"[\x00-\x1f\x7f]"


def _join(*parts: Any, sep: str = "") -> pa.Array:
    """Element-wise concatenation; neighbouring constant strings are merged first.

    Every piece costs a pass over the batch, constants included.
    """
    merged: list[Any] = []
    for part in parts:
        if sep == "" and isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif not (sep == "" and part == ""):
            merged.append(part)
    return pc.binary_join_element_wise(*merged, sep, null_handling="skip")


def _ints(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def relative_seconds(ts: np.ndarray, origin: int) -> pa.Array:
    """``S.nnnnnnnnn`` seconds from ``origin`` (negative for rows before it), right-aligned."""
    rel = ts.astype(np.int64) - np.int64(origin)
    magnitude = np.abs(rel)
    whole = _ints(magnitude // _NS_PER_S)
    sign = pc.if_else(pa.array(rel < 0), "-", "")
    frac = pc.utf8_lpad(_ints(magnitude % _NS_PER_S), width=9, padding="0")
    return pc.utf8_lpad(_join(sign, whole, ".", frac), width=14)


def wall_clock(ts: np.ndarray, realtime_offset_ns: int) -> pa.Array:
    """UTC wall-clock time of each monotonic timestamp, to the nanosecond."""
    wall = pa.array(ts.astype(np.int64) + np.int64(realtime_offset_ns), pa.int64())
    return pc.strftime(wall.cast(pa.timestamp("ns", tz="UTC")), format="%Y-%m-%d %H:%M:%S")


def microseconds(ns: np.ndarray) -> list[Any]:
    """Pieces spelling durations in ns as ``12.3 us`` (one decimal, rounded), for a join."""
    tenths = (ns.astype(np.uint64) + np.uint64(50)) // np.uint64(100)
    return [_ints(tenths // np.uint64(10)), ".", _ints(tenths % np.uint64(10)), " us"]


def value_strings(column: pa.Array, null: str = "-") -> pa.Array:
    """Any column as display strings: hex for bytes, control characters replaced, nulls ``null``."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        text = bytes_hex(column)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = column
        if _has_control_chars(column):
            text = pc.replace_substring_regex(column, pattern=_CONTROL_CHARS, replacement="?")
    else:
        try:
            text = pc.cast(column, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            values = column.to_pylist()
            text = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pc.fill_null(text, null)


def _has_control_chars(column: pa.Array) -> bool:
    """Whether any string holds a byte below 0x20 or 0x7f (checked on the raw buffer)."""
    if isinstance(column, pa.ChunkedArray):
        return any(_has_control_chars(chunk) for chunk in column.chunks)
    data = column.buffers()[2]
    if data is None:
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    return bool(np.any((raw < 0x20) | (raw == 0x7F)))


class TextFormatter:
    """Turns replay batches into text lines; remembers the time origin."""

    def __init__(
        self,
        schema: pa.Schema,
        metadata: dict[str, Any],
        *,
        order: str = ARRIVAL,
        wall: bool = False,
        colour: bool = False,
    ) -> None:
        if order not in ORDERS:
            raise UsageError(f"unknown replay order {order!r}")
        offset = metadata.get(fs.META_REALTIME_OFFSET)
        if wall and not isinstance(offset, int):
            raise UsageError("--wall needs the capture's realtime offset, which this file lacks")
        self.order = order
        self.wall = wall
        self.colour = colour
        self.realtime_offset_ns = int(offset) if isinstance(offset, int) else 0
        self.origin: int | None = None
        extra = [name for name in schema.names if name not in fs.CORE_COLUMNS]
        self.syscall_style = SYSCALL_COLUMN in extra and all(a in extra for a in SYSCALL_ARGS)
        hidden = {SYSCALL_COLUMN, SYSCALL_NR_COLUMN, *SYSCALL_ARGS} if self.syscall_style else set()
        self.field_columns: Sequence[str] = [name for name in extra if name not in hidden]

    def set_origin(self, ts_ns: int) -> None:
        """Times are printed relative to this timestamp (the replay's first row)."""
        self.origin = ts_ns

    def _paint(self, pieces: list[Any], code: str) -> list[Any]:
        """``pieces`` wrapped in an ANSI colour when colour is on."""
        return [code, *pieces, _RESET] if self.colour else pieces

    def format(self, rows: pa.RecordBatch, late_ns: np.ndarray) -> pa.Array:
        """One string per row, each ending in a newline.

        All pieces go into a single element-wise join: each join costs a pass
        over the batch, so nesting them is what would make this slow.
        """
        ts = rows.column("ts_ns").to_numpy()
        if self.origin is None and len(ts):
            self.origin = int(ts[0])
        pieces = self._paint([relative_seconds(ts, self.origin or 0)], _DIM)
        if self.wall:
            pieces += [" ", wall_clock(ts, self.realtime_offset_ns)]
        cpu = _ints(rows.column("cpu").to_numpy())
        pieces += [" ", *self._paint(["[", pc.utf8_lpad(cpu, width=3, padding="0"), "]"], _CYAN)]
        pieces += [" #", _ints(rows.column("seq").to_numpy()), " "]
        lost = rows.column("kind").indices.to_numpy(zero_copy_only=False) == KIND_LOST_CODE
        body = self._sample_body(rows)
        if lost.any():
            count = _ints(rows.column("lost").to_numpy())
            loss = _join(*self._paint(["*** CPU ", cpu, " lost ", count, " events ***"], _RED_BOLD))
            body = [pc.if_else(pa.array(lost), loss, _join(*body))]
        pieces += body
        pieces += [self._markers(rows, late_ns), "\n"]
        return _join(*pieces)

    def _sample_body(self, rows: pa.RecordBatch) -> list[Any]:
        pieces: list[Any] = []
        if self.syscall_style:
            args = u64_hex_columns([rows.column(a) for a in SYSCALL_ARGS], ", ")
            name = pc.fill_null(rows.column(SYSCALL_COLUMN), "?")
            pieces += [*self._paint([name], _BOLD), "(", args, ")"]
        for name in self.field_columns:
            pieces += [" " if pieces else "", f"{name}=", value_strings(rows.column(name))]
        if not pieces:
            data = rows.column("data")
            lengths = payload_lengths(data)
            more = pc.if_else(pa.array(lengths > PAYLOAD_PREVIEW_BYTES), "..", "")
            pieces += [_ints(lengths), "B ", bytes_hex(data, PAYLOAD_PREVIEW_BYTES), more]
        return pieces

    def _markers(self, rows: pa.RecordBatch, late_ns: np.ndarray) -> pa.Array:
        """The late / moved marker of each row, null where there is none."""
        late = late_ns > 0
        if not late.any():
            return pa.nulls(rows.num_rows, pa.string())
        if self.order == ARRIVAL:
            text = self._paint(["  << ", *microseconds(late_ns), " late"], _YELLOW)
        else:
            seq = _ints(rows.column("seq").to_numpy())
            late_us = microseconds(late_ns)
            text = self._paint(["  [moved from seq ", seq, ": ", *late_us, " late]"], _MAGENTA)
        return pc.if_else(pa.array(late), _join(*text), pa.scalar(None, pa.string()))


def lines_bytes(lines: pa.Array) -> memoryview:
    """The concatenated text of a string array (its data buffer), without copying."""
    if len(lines) == 0:
        return memoryview(b"")
    width = np.int32 if lines.type == pa.string() else np.int64
    offsets = np.frombuffer(lines.buffers()[1], dtype=width)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return memoryview(lines.buffers()[2])[start:end]
