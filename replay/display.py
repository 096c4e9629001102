"""Column values as display text, a whole column at a time: replay fields and SQL tables.

Bytes are shown as hex, lists as ``[1,2,3]`` (no spaces, so a ``name=value``
field stays one word), nulls as a chosen placeholder. Strings either keep
their text with control characters replaced (an aligned table), or are
quoted with JSON's escapes (a replay line, where ``comm="a b"`` must read as
one value); the escaping runs once per distinct value that needs it.
"""

from __future__ import annotations

import json
import re
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.replay.hexfmt import hex_or_null

CONTROL_CHARS: Final = r"[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]"
"""C0, DEL, C1 (U+0080-U+009F: xterm acts on U+009B as on ESC [) and the Unicode line
and paragraph separators: none may reach a terminal or split a line."""
_ESCAPED_TOO: Final = re.compile("[\x7f-\x9f\u2028\u2029]")
"""What JSON leaves as is but :data:`CONTROL_CHARS` keeps off the output."""
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")
_DEL: Final = 0x7F
_SPACE: Final = 0x20
_NS_PER_S: Final = 1_000_000_000


def value_strings(column: pa.Array, null: str = "-", *, quote: bool = False) -> pa.Array:
    """Any column as display strings; ``quote``: strings as JSON string literals."""
    column = plain_form(column)
    kind = column.type
    if pa.types.is_binary(kind):
        text = hex_or_null(column)
    elif pa.types.is_string(kind):
        text = quoted(column) if quote else plain_text(column)
    elif pa.types.is_boolean(kind):
        text = pc.if_else(column, "true", "false")
    elif _is_list(kind):
        text = _list_text(column)
    elif pa.types.is_interval(kind):
        text = interval_strings(column)
    else:
        try:
            text = pc.cast(column, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            values = column.to_pylist()
            text = pa.array([None if v is None else _item(v) for v in values], pa.string())
    return pc.fill_null(text, null)


def interval_strings(column: pa.Array) -> pa.Array:
    """Month-day-nanosecond intervals as DuckDB writes them (``1 month 2 days 00:00:01.5``),
    each distinct value once; nulls stay null. Arrow has no cast of intervals to text."""
    encoded = pc.dictionary_encode(column)
    texts = [interval_text(v) for v in encoded.dictionary.to_pylist()]
    return pa.array(texts, pa.string()).take(encoded.indices)


def interval_text(value: pa.MonthDayNano) -> str:
    """``[N years] [N months] [N days] [-]HH:MM:SS[.fraction]``: the parts that are not
    zero, each with its own sign (``00:00:00`` when all are)."""
    months, days, nanos = value.months, value.days, value.nanoseconds
    years = int(months / 12)  # toward zero: -14 months is -1 year -2 months
    parts = [_unit(years, "year"), _unit(months - 12 * years, "month"), _unit(days, "day")]
    words = [p for p in parts if p]
    if nanos or not words:
        seconds, fraction = divmod(abs(nanos), _NS_PER_S)
        minutes, second = divmod(seconds, 60)
        hours, minute = divmod(minutes, 60)
        clock = f"{'-' if nanos < 0 else ''}{hours:02d}:{minute:02d}:{second:02d}"
        if fraction:
            clock += "." + f"{fraction:09d}".rstrip("0")
        words.append(clock)
    return " ".join(words)


def _unit(count: int, name: str) -> str:
    if count == 0:
        return ""
    return f"{count} {name}" if abs(count) == 1 else f"{count} {name}s"


def plain_form(column: pa.Array) -> pa.Array:
    """Dictionary and run-end encoded columns decoded, and strings and bytes in their
    :func:`common_form`: what every text output starts from."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_run_end_encoded(column.type):
        column = pc.run_end_decode(column)
    return common_form(column)


def common_form(column: pa.Array) -> pa.Array:
    """Large, view and fixed-size strings and bytes as plain ``string``/``binary``, the
    forms the escaping and hex code read (files other tools wrote may use the others)."""
    kind = column.type
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.cast(pa.string())
    if (
        pa.types.is_large_binary(kind)
        or pa.types.is_binary_view(kind)
        or pa.types.is_fixed_size_binary(kind)
    ):
        return column.cast(pa.binary())
    return column


def plain_text(column: pa.Array) -> pa.Array:
    """Strings with control characters replaced by ``?`` (a line stays one line)."""
    if not _has_bytes(column, quote_chars=False):
        return column
    return pc.replace_substring_regex(column, pattern=CONTROL_CHARS, replacement="?")


def quoted(column: pa.Array) -> pa.Array:
    """Strings as JSON string literals: ``"a b"``, ``"tab\\there"`` (nulls stay null)."""
    if not needs_escape(column):
        return pc.binary_join_element_wise('"', column, '"', "")
    encoded = pc.dictionary_encode(column)
    literals = [_literal(v) for v in encoded.dictionary.to_pylist()]
    return pa.array(literals, pa.string()).take(encoded.indices)


def _literal(text: str) -> str:
    """``text`` as a JSON string literal with C1, DEL and line separators as ``\\uXXXX``."""
    literal = json.dumps(text, ensure_ascii=False)
    return _ESCAPED_TOO.sub(lambda m: f"\\u{ord(m.group()):04x}", literal)


def needs_escape(column: pa.Array) -> bool:
    """Whether any string holds a control character, a quote or a backslash: a JSON string
    literal of it is more than the text between quotes."""
    return _has_bytes(column, quote_chars=True)


def _has_bytes(column: pa.Array, *, quote_chars: bool) -> bool:
    """Whether any string holds a control character (or a quote or backslash), on the raw
    buffer."""
    if isinstance(column, pa.ChunkedArray):
        return any(_has_bytes(c, quote_chars=quote_chars) for c in column.chunks)
    data = column.buffers()[2]
    if data is None:
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    found = (raw < _SPACE) | (raw == _DEL)
    if quote_chars:
        found |= (raw == _QUOTE) | (raw == _BACKSLASH)
    if bool(np.any(found)):
        return True
    # C1 in UTF-8: C2 80..C2 9F; U+2028/U+2029: E2 80 A8/A9.
    lead, follow = raw[:-1], raw[1:]
    if bool(np.any((lead == 0xC2) & (follow >= 0x80) & (follow <= 0x9F))):
        return True
    third = raw[2:]
    separator = (raw[:-2] == 0xE2) & (raw[1:-1] == 0x80) & ((third == 0xA8) | (third == 0xA9))
    return bool(np.any(separator))


def _is_list(kind: pa.DataType) -> bool:
    return (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _list_text(column: pa.Array) -> pa.Array:
    """``[v,v,...]`` of each list (tracepoint arrays: short and rare, so per value)."""
    return pa.array(
        [None if v is None else "[" + ",".join(map(_item, v)) + "]" for v in column.to_pylist()],
        pa.string(),
    )


def _item(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return _literal(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(map(_item, value)) + "]"
    if isinstance(value, dict):  # a struct or a map's entries
        return "{" + ",".join(f"{_literal(str(k))}:{_item(v)}" for k, v in value.items()) + "}"
    return str(value)


def lines_bytes(lines: pa.Array) -> memoryview:
    """The concatenated text of a string array (its data buffer), without copying."""
    if len(lines) == 0:
        return memoryview(b"")
    width = np.int32 if lines.type == pa.string() else np.int64
    offsets = np.frombuffer(lines.buffers()[1], dtype=width)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return memoryview(lines.buffers()[2])[start:end]
