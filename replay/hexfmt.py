"""Hexadecimal text for whole columns at once (payload bytes, u64 arguments).

Neither Arrow compute nor numpy formats hex, and a Python loop per event is
what makes a replay slow. These build the characters with table look-ups over
numpy arrays and wrap them as Arrow string arrays without copying per row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.replay.lines import string_parts

_DIGITS: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_BYTE_PAIRS: Final = (
    np.stack([_DIGITS[np.arange(256) >> 4], _DIGITS[np.arange(256) & 15]], axis=1)
    .copy()
    .view(np.uint16)
    .reshape(256)
)
"""Entry b holds the two ASCII hex digits of byte b (as one uint16: a look-up per byte)."""
_POSITIONS: Final = np.arange(16)
REPEAT_SAMPLE: Final = 1024
"""Values looked at to decide whether a column repeats enough for a dictionary."""


def string_array(chars: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A string array whose row i is the next ``lengths[i]`` characters of ``chars``."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = pa.py_buffer(np.ascontiguousarray(chars, dtype=np.uint8))
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(
            len(lengths), pa.py_buffer(offsets.astype(np.int32)), data
        )
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), data)


def bytes_hex(array: pa.Array, limit: int | None = None) -> pa.Array:
    """Each value as lowercase hex (nulls as empty), at most ``limit`` bytes of it."""
    offsets, data = string_parts(array)
    lengths = np.diff(offsets)
    if array.null_count:
        lengths[np.asarray(array.is_null())] = 0
    if limit is not None:
        lengths = np.minimum(lengths, limit)
    total = int(lengths.sum())
    starts = offsets[:-1]
    if limit is None and not array.null_count:
        picked = data[offsets[0] : offsets[-1]]
    else:
        before = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=before[1:])
        picked = data[np.repeat(starts - before, lengths) + np.arange(total, dtype=np.int64)]
    return string_array(hex_chars(picked), lengths * 2)


def hex_or_null(array: pa.Array) -> pa.Array:
    """Each value as lowercase hex, nulls kept null (what a text column of bytes holds)."""
    text = bytes_hex(array)
    if not array.null_count:
        return text
    return pc.if_else(array.is_null(), pa.scalar(None, pa.string()), text)


def hex_chars(data: np.ndarray) -> np.ndarray:
    """The lowercase hex digits of ``data`` (uint8), two per byte."""
    chars = np.empty(2 * len(data), dtype=np.uint8)
    even = len(data) & ~1
    pairs = data[:even].view("<u2")  # bytes b0 b1 -> b0 | b1 << 8 on any machine
    np.take(_two_byte_digits(), pairs, out=chars[: 2 * even].view(np.uint32))
    if even < len(data):
        chars[-2:] = _BYTE_PAIRS[data[-1:]].view(np.uint8)
    return chars


@functools.cache
def _two_byte_digits() -> np.ndarray:
    """Entry b0 | b1 << 8 holds the four hex digits of bytes b0, b1 (one look-up per two
    bytes, twice as fast as per byte); built on first use."""
    value = np.arange(1 << 16)
    digits = np.empty((1 << 16, 4), dtype=np.uint8)
    digits[:, :2] = _BYTE_PAIRS[value & 0xFF].view(np.uint8).reshape(-1, 2)
    digits[:, 2:] = _BYTE_PAIRS[value >> 8].view(np.uint8).reshape(-1, 2)
    return digits.view(np.uint32).reshape(1 << 16)


def payload_lengths(array: pa.Array) -> np.ndarray:
    """Byte length of each binary value (0 for nulls)."""
    offsets, _ = string_parts(array)
    lengths = np.diff(offsets)
    if array.null_count:
        lengths[np.asarray(array.is_null())] = 0
    return lengths


def u64_hex(values: np.ndarray) -> pa.Array:
    """Unsigned integers as ``0x``-prefixed hex without leading zeros (``0x0`` for zero)."""
    return u64_hex_joined([values], "")


def u64_hex_columns(columns: Sequence[pa.Array], sep: str) -> pa.Array:
    """Like :func:`u64_hex_joined` over Arrow columns (nulls as 0), cheaper on repeats.

    Syscall arguments repeat a lot (the same buffers, flags, fds): a column
    whose first values are mostly repeats is formatted once per distinct
    value and gathered, the rest in one block.
    """
    repetitive = [_repetitive(column) for column in columns]
    if not any(repetitive):
        return u64_hex_joined([_u64(column) for column in columns], sep)
    parts = []
    for column, repeats in zip(columns, repetitive, strict=True):
        if repeats:
            coded = pc.dictionary_encode(pc.fill_null(column, 0))
            parts.append(u64_hex(_u64(coded.dictionary)).take(coded.indices))
        else:
            parts.append(u64_hex(_u64(column)))
    return pc.binary_join_element_wise(*parts, sep)


def _u64(column: pa.Array) -> np.ndarray:
    return pc.fill_null(column, 0).to_numpy().astype(np.uint64, copy=False)


def _repetitive(column: pa.Array) -> bool:
    """Whether a sample of the column has few distinct values (a dictionary pays off)."""
    head = column.slice(0, REPEAT_SAMPLE)
    return len(head) >= REPEAT_SAMPLE and len(pc.unique(head)) * 8 <= len(head)


def u64_hex_joined(columns: Sequence[np.ndarray], sep: str) -> pa.Array:
    """Row i: the hex of ``columns[0][i]``, ``columns[1][i]``, ... joined by ``sep``.

    One pass over a (rows, columns, 2 + 16 + len(sep)) character block, then
    one compaction, instead of a string array per column and a join.
    """
    rows, count = len(columns[0]), len(columns)
    big_endian = np.empty((rows, count), dtype=">u8")
    for i, column in enumerate(columns):
        big_endian[:, i] = column
    pairs = _BYTE_PAIRS[big_endian.view(np.uint8).reshape(rows, count, 8)]
    digits = pairs.view(np.uint8).reshape(rows, count, 16)
    significant = digits != ord("0")
    significant[:, :, -1] = True
    first = significant.argmax(axis=2)
    separator = np.frombuffer(sep.encode(), dtype=np.uint8)
    width = 18 + len(separator)
    chars = np.empty((rows, count, width), dtype=np.uint8)
    chars[:, :, 0], chars[:, :, 1] = ord("0"), ord("x")
    chars[:, :, 2:18] = digits
    chars[:, :, 18:] = separator
    keep = np.ones((rows, count, width), dtype=bool)
    keep[:, :, 2:18] = first[:, :, None] <= _POSITIONS
    keep[:, -1, 18:] = False
    lengths = (18 - first).sum(axis=1) + len(separator) * (count - 1)
    return string_array(chars[keep], lengths)
