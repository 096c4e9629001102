"""Human-readable replay lines, built a whole batch at a time with Arrow compute.

One line per row::

    0.000123456 [001] #1234 openat(0xffffff9c, 0x7ffd3c1a, 0x80000, 0x0, 0x0, 0x0) pid=42
    0.000123402 [000] #1235 write(0x1, ...) pid=7 comm="sshd"  << 20.4 us late
    0.000124000 [001] #1236 *** CPU 1 lost 37 events ***
    0.000130000 [000] #1240 IPv4 198.51.100.1.443 > 198.51.100.2.5123: TCP [P.], frame 98 ifindex=3
    0.000131000 [001] #1237 prev_comm="bash" prev_pid=42  [moved ahead of 3 events, 12.0 us late]

The body is a syscall with its arguments (a text ``syscall`` column and
integer ``arg0``..``arg5``), a packet summary
(:mod:`~ebcap.replay.packets`), or the source's columns as ``name=value``
(strings quoted with JSON's escapes, bytes as hex, arrays as ``[1,2]``);
``name=value`` fields follow the call or the summary for the columns they
do not show. A capture without source columns shows its payload's first bytes.

Time is relative to the first row of the replay (``--wall`` adds the wall
clock from the capture's realtime offset). Arrival order marks a late row
(sample or loss, see :mod:`~ebcap.replay.lateness`) with its lateness; time
order marks every row the sort moved ahead of rows delivered before it
(late, a tie broken by CPU, a loss record) with how many and, if it was
late, by how much. Colour (ANSI) is only used when asked to, i.e. when the
output is a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.errors import UsageError
from ebcap.format import schema as fs
from ebcap.format.schema import KIND_LOST_CODE
from ebcap.replay.bodies import Bodies
from ebcap.replay.display import common_form, value_strings
from ebcap.replay.hexfmt import bytes_hex, payload_lengths, u64_hex_columns
from ebcap.replay.lines import (
    Decimal,
    Piece,
    decimal,
    either,
    join_lines,
    number_text,
    padded_digits,
    spread_lines,
    zero_padded,
)
from ebcap.replay.packets import SUMMARISED, PacketSummaries, is_packet_capture

ARRIVAL: Final = "arrival"
TIME: Final = "time"
ORDERS: Final = (ARRIVAL, TIME)

PAYLOAD_PREVIEW_BYTES: Final = 16
SYSCALL_COLUMN: Final = "syscall"
SYSCALL_NR_COLUMN: Final = "syscall_nr"
SYSCALL_ARGS: Final = tuple(f"arg{i}" for i in range(6))

_LINE_COLUMNS: Final = frozenset({"seq", "cpu", "ts_ns", "kind", "lost"})
"""What every line shows before its body (the time, CPU and seq) or instead of it (loss)."""

_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_CYAN: Final = "\x1b[36m"
_BOLD: Final = "\x1b[1m"
_YELLOW: Final = "\x1b[33m"
_MAGENTA: Final = "\x1b[35m"
_RED_BOLD: Final = "\x1b[1;31m"

_NS_PER_S: Final = 1_000_000_000
_TIME_WIDTH: Final = 14
"""Seconds are right-aligned to this width: 4 digits (or a sign and 3), a dot, 9 digits."""
_WHOLE_WIDTH: Final = _TIME_WIDTH - 10
_CPU_WIDTH: Final = 3


def relative_seconds(ts: np.ndarray, origin: int) -> list[Piece]:
    """``S.nnnnnnnnn`` seconds from ``origin`` (negative for rows before it), right-aligned."""
    ts = ts.astype(np.uint64, copy=False)
    start = np.uint64(origin)
    negative = ts < start
    # Unsigned both ways: a garbage timestamp near 2**64 must not wrap to a negative one.
    magnitude = np.where(negative, start - ts, ts - start)
    room = _WHOLE_WIDTH - int(negative.any())
    if len(ts) and int(magnitude.max()) < 10**room * _NS_PER_S:
        return _short_seconds(magnitude, negative)
    sign = pc.if_else(pa.array(negative), "-", "")
    whole = decimal(magnitude // np.uint64(_NS_PER_S))
    frac = zero_padded(magnitude % np.uint64(_NS_PER_S), 9)
    return [pc.utf8_lpad(join_lines([sign, whole, ".", frac], len(ts)), width=_TIME_WIDTH)]


def _short_seconds(magnitude: np.ndarray, negative: np.ndarray) -> list[Piece]:
    """Seconds that all fit the width, as character blocks: one decimal conversion."""
    digits = padded_digits(magnitude, _WHOLE_WIDTH + 9)
    whole = digits[:, :_WHOLE_WIDTH].copy()
    lead = np.zeros(len(magnitude), dtype=np.int64)
    for column in range(_WHOLE_WIDTH - 1):  # leading zeros become spaces
        short = magnitude < 10 ** (_WHOLE_WIDTH - 1 - column) * _NS_PER_S
        np.copyto(whole[:, column], ord(" "), where=short)
        lead += short
    if negative.any():
        rows = np.flatnonzero(negative)
        whole[rows, lead[rows] - 1] = ord("-")  # a short value leaves room
    return [whole, ".", digits[:, _WHOLE_WIDTH:]]


def wall_clock(ts: np.ndarray, realtime_offset_ns: int) -> pa.Array:
    """UTC wall-clock time of each monotonic timestamp, to the nanosecond (``?`` where
    the time is past what a nanosecond timestamp holds, the year 2262)."""
    text = pc.strftime(wall_time(ts, realtime_offset_ns), format="%Y-%m-%d %H:%M:%S")
    return pc.fill_null(text, _NO_WALL_TIME)


_NO_WALL_TIME: Final = "????-??-?? ??:??:??.?????????"


def wall_time(ts: np.ndarray, realtime_offset_ns: int) -> pa.Array:
    """Each monotonic timestamp as a UTC timestamp; null where that would pass 2**63 ns."""
    ts = ts.astype(np.uint64, copy=False)
    wall = ts.astype(np.int64) + np.int64(realtime_offset_ns)
    fits = ts <= np.uint64(_I64_MAX - max(realtime_offset_ns, 0))
    values = pa.array(wall, pa.int64(), mask=~fits if not fits.all() else None)
    return values.cast(pa.timestamp("ns", tz="UTC"))


_I64_MAX: Final = 2**63 - 1


_POINT_DIGITS: Final = pa.array([f".{digit}" for digit in range(10)])


def microseconds(ns: np.ndarray, unit: str = " us") -> list[Piece | Decimal]:
    """Pieces spelling durations in ns as ``12.3 us`` (one decimal, rounded), for a join.

    Three pieces (each costs the join a pass over its rows): the whole
    microseconds, the point and tenth, and ``unit`` with what follows it."""
    tenths = (ns.astype(np.uint64) + np.uint64(50)) // np.uint64(100)
    point_tenth = _POINT_DIGITS.take(pa.array(tenths % np.uint64(10)))
    return [Decimal(tenths // np.uint64(10)), point_tenth, unit]


def _has_syscall_columns(schema: pa.Schema) -> bool:
    """Whether rows read as calls: a text ``syscall`` and integer ``arg0``..``arg5``.

    Other writers (a ``--layout`` with ``syscall:u32``) may use the names for
    other types; such rows show their columns as ``name=value`` instead.
    """
    names = schema.names
    if SYSCALL_COLUMN not in names or not all(a in names for a in SYSCALL_ARGS):
        return False
    name = schema.field(SYSCALL_COLUMN).type
    text = pa.types.is_string(name) or pa.types.is_large_string(name)
    text = text or pa.types.is_string_view(name)
    return text and all(pa.types.is_integer(schema.field(a).type) for a in SYSCALL_ARGS)


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
        self.syscall_style = _has_syscall_columns(schema)
        self.packets = (
            PacketSummaries(metadata)
            if not self.syscall_style and is_packet_capture(schema, metadata)
            else None
        )
        hidden: set[str] = set()
        if self.syscall_style:
            hidden = {SYSCALL_COLUMN, SYSCALL_NR_COLUMN, *SYSCALL_ARGS}
        elif self.packets is not None:
            hidden = set(SUMMARISED)
        self.field_columns: Sequence[str] = [name for name in extra if name not in hidden]
        shown = [name for name in self.columns if name not in _LINE_COLUMNS]
        self.bodies = Bodies(shown, self.field_columns, self._sample_body)

    def set_origin(self, ts_ns: int) -> None:
        """Times are printed relative to this timestamp (the replay's first row)."""
        self.origin = ts_ns

    def _paint(self, pieces: list[Piece | Decimal], code: str) -> list[Piece | Decimal]:
        """``pieces`` wrapped in an ANSI colour when colour is on."""
        return [code, *pieces, _RESET] if self.colour else pieces

    @property
    def columns(self) -> list[str]:
        """The columns :meth:`format` reads (the payload only when nothing else describes it)."""
        names = ["seq", "cpu", "ts_ns", "kind", "lost"]
        if self.syscall_style:
            names += [SYSCALL_COLUMN, *SYSCALL_ARGS]
        if self.packets is not None:
            names += PacketSummaries.columns
        names += self.field_columns
        if "data" not in names and not self.syscall_style and not self.field_columns:
            names.append("data")
        return names

    def format(
        self, rows: pa.RecordBatch, late_ns: np.ndarray, moved: np.ndarray | None = None
    ) -> pa.Array:
        """One string per row, each ending in a newline.

        ``late_ns``: each row's lateness; ``moved`` (time order): how many rows
        delivered before it the sort put after it. The body of a row (call,
        arguments, fields) is formatted once per distinct body when a batch
        repeats them; loss lines and markers only for the rows that have them.
        """
        count = rows.num_rows
        ts = rows.column("ts_ns").to_numpy()
        if self.origin is None and len(ts):
            self.origin = int(ts[0])
        pieces = self._paint(relative_seconds(ts, self.origin or 0), _DIM)
        if self.wall:
            pieces += [" ", wall_clock(ts, self.realtime_offset_ns)]
        cpu = rows.column("cpu").to_numpy()
        pieces += [" ", *self._paint(["[", zero_padded(cpu, _CPU_WIDTH), "]"], _CYAN)]
        seq = number_text(rows.column("seq").to_numpy())
        pieces += [" #", seq, " "]
        lost = rows.column("kind").indices.to_numpy(zero_copy_only=False) == KIND_LOST_CODE
        pieces += [self._bodies(rows, lost), self._line_ends(late_ns, moved)]
        return join_lines(pieces, count)

    def prepare(self, rows: pa.RecordBatch) -> pa.RecordBatch:
        """``rows`` with their bodies made in advance, where that keeps the text bounded.

        Applied before the time sort: the sort then moves one small index per
        row instead of every column the body shows (:mod:`~ebcap.replay.bodies`).
        """
        return self.bodies.prepare(rows)

    def _bodies(self, rows: pa.RecordBatch, lost: np.ndarray) -> pa.Array:
        """What follows the seq: the sample body (formatted once per distinct one where they
        repeat) or, on ``lost`` rows, the loss line."""
        bodies, index = self.bodies.text(rows)
        if lost.any():  # loss lines join the bodies: one take places all
            loss = self._loss_lines(rows.filter(pa.array(lost)))
            start = np.arange(rows.num_rows) if index is None else index
            index = np.where(lost, len(bodies) + np.cumsum(lost) - 1, start)
            bodies = pa.concat_arrays([bodies, loss.cast(bodies.type)])
        return bodies if index is None else bodies.take(pa.array(index))

    def _loss_lines(self, rows: pa.RecordBatch) -> pa.Array:
        cpu, count = Decimal(rows.column("cpu").to_numpy()), Decimal(rows.column("lost").to_numpy())
        pieces = self._paint(["*** CPU ", cpu, " lost ", count, " events ***"], _RED_BOLD)
        return join_lines(pieces, rows.num_rows)

    def _sample_body(self, rows: pa.RecordBatch) -> list[Piece]:
        pieces: list[Piece] = []
        if self.syscall_style:
            args = u64_hex_columns([rows.column(a) for a in SYSCALL_ARGS], ", ")
            name = pc.fill_null(common_form(rows.column(SYSCALL_COLUMN)), "?")
            pieces += [*self._paint([name], _BOLD), "(", args, ")"]
        if self.packets is not None:
            pieces.append(self.packets.summaries(rows))
        for name in self.field_columns:
            column = value_strings(rows.column(name), quote=True)
            pieces += [" " if pieces else "", f"{name}=", column]
        if not pieces:
            data = rows.column("data")
            lengths = payload_lengths(data)
            more = pc.if_else(pa.array(lengths > PAYLOAD_PREVIEW_BYTES), "..", "")
            pieces += [decimal(lengths), "B ", bytes_hex(data, PAYLOAD_PREVIEW_BYTES), more]
        return pieces

    def _line_ends(self, late_ns: np.ndarray, moved: np.ndarray | None) -> Piece:
        """What ends each line: its late / moved marker, if any, and the newline."""
        if self.order == ARRIVAL:
            late = late_ns > 0
            if not late.any():
                return "\n"
            text = self._paint(["  << ", *microseconds(late_ns[late], " us late")], _YELLOW)
            return spread_lines(late, [*text, "\n"], "\n")
        if moved is None:
            raise UsageError("time order needs how far the sort moved each row")
        marked = moved > 0
        if not marked.any():
            return "\n"
        count, late_ns = moved[marked], late_ns[marked]
        late = late_ns > 0
        # Each piece costs a pass over every marked row: the common case (every moved
        # row was late) joins its pieces directly.
        if late.all():
            events = pc.if_else(pa.array(count != 1), " events, ", " event, ")
            tail: list[Piece] = [events, *microseconds(late_ns, " us late]")]
        else:
            events = pc.if_else(pa.array(count != 1), " events", " event")
            spelled = microseconds(late_ns[late], " us late]")
            late_text = join_lines([", ", *spelled], int(late.sum()))
            tail = [events, either(late, late_text, "]")]
        pieces = ["  [moved ahead of ", Decimal(count), *tail]
        return spread_lines(marked, [*self._paint(pieces, _MAGENTA), "\n"], "\n")
