"""One text line per row, assembled from column-wide pieces at the lowest cost.

Arrow's element-wise join costs about the same per piece and row whatever the
piece holds, so the number of pieces decides what a line costs. Pieces whose
strings all have one width in a batch (a padded time, a zero-padded CPU,
sequence numbers of equal length, constants) are laid side by side in one
numpy character block and enter the join as a single piece; only pieces of
varying width are joined by Arrow.

Numbers stay numbers (:class:`Decimal`) until the line is built, so rows whose
numbers have the same count of digits are laid out as one block, and
:func:`spread_lines` builds lines only for the rows that have them (late
markers) and places them with one take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Piece: TypeAlias = str | np.ndarray | pa.Array
"""A constant, a (rows, width) uint8 character block, or a string array (nulls: nothing)."""

_I32_MAX: Final = 2**31 - 1
TEXT_CHUNK_BYTES: Final = 64 << 20
"""Bytes of payloads and strings whose text is built at once (:func:`bounded_ranges`): hex
doubles them, escaping can add more, and a string array holds at most 2 GiB; memory stays
a small multiple of this, whatever the batch."""
_U64_MAX: Final = 2**64 - 1
_PAIRS_WIDTH: Final = 8
"""Up to this many digits, values fit 32 bits and digits come from pair look-ups."""
_MAX_DIGITS: Final = 20
"""Digits of the largest u64."""
_MAX_GROUPS: Final = 8
"""Rows are laid out per count of digits only while the counts take this few values."""
_DIGITS: Final = np.frombuffer(b"0123456789", dtype=np.uint8)
_DIGIT_PAIRS: Final = (
    np.stack([_DIGITS[np.arange(100) // 10], _DIGITS[np.arange(100) % 10]], axis=1)
    .copy()
    .view(np.uint16)
    .reshape(100)
)
"""Entry v holds the two ASCII digits of v (as one uint16: one look-up per two digits)."""


def string_parts(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets of this slice, data bytes) of a string or binary array, without copying."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    large = pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32)
    offsets = offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.zeros(0, np.uint8)
    )
    return offsets, data


def bounded_ranges(batch: pa.RecordBatch, limit: int | None = None) -> list[tuple[int, int]]:
    """Row ranges ``(start, end)`` covering ``batch``, in each of which the string and
    binary values hold at most ``limit`` bytes together (default :data:`TEXT_CHUNK_BYTES`,
    looked up at call time); a row larger alone is a range of its own. One range for most
    batches.

    65,536 events of 16 KiB (``--snaplen 16384``) are 2 GiB of hex as JSON lines: more
    than a string array holds, and several copies of it in memory.
    """
    limit = TEXT_CHUNK_BYTES if limit is None else limit
    rows = batch.num_rows
    if batch.nbytes <= limit:
        return [(0, rows)] if rows else []
    weight = np.zeros(rows, dtype=np.int64)
    for column in batch.columns:
        if is_text(column.type):
            weight += np.diff(string_parts(column)[0])
    before = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(weight, out=before[1:])
    ranges, start = [], 0
    while start < rows:
        end = int(np.searchsorted(before, before[start] + limit, side="right")) - 1
        end = min(max(end, start + 1), rows)
        ranges.append((start, end))
        start = end
    return ranges


def uniform_chars(array: pa.Array) -> np.ndarray | None:
    """A string array as a (rows, width) character block, if every value has one width."""
    rows = len(array)
    if rows == 0 or array.null_count or not is_text(array.type):
        return None
    offsets, data = string_parts(array)
    total = int(offsets[-1] - offsets[0])
    if total % rows or np.any(np.diff(offsets) != total // rows):
        return None
    return data[offsets[0] : offsets[-1]].reshape(rows, total // rows)


def block_strings(chars: np.ndarray) -> pa.Array:
    """Row i of a (rows, width) character block as string i (one copy at most)."""
    rows, width = chars.shape
    data = pa.py_buffer(np.ascontiguousarray(chars))
    if rows * width <= _I32_MAX:
        offsets = np.arange(rows + 1, dtype=np.int32) * np.int32(width)
        return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), data)
    offsets64 = np.arange(rows + 1, dtype=np.int64) * width
    return pa.LargeStringArray.from_buffers(rows, pa.py_buffer(offsets64), data)


@dataclass(frozen=True)
class Decimal:
    """A piece of non-negative integers written in decimal, no padding.

    Kept as numbers until the line is built, so rows whose numbers have the
    same count of digits can be laid out as fixed-width blocks.
    """

    values: np.ndarray


def join_lines(pieces: Sequence[Piece | Decimal], rows: int) -> pa.Array:
    """Row i: every piece's row i, concatenated (a null row of a piece adds nothing)."""
    if any(isinstance(piece, Decimal) for piece in pieces):
        grouped = _join_by_digits(pieces, rows)
        if grouped is not None:
            return grouped
    parts: list[str | pa.Array] = []
    run: list[str | np.ndarray] = []
    for piece in pieces:
        if isinstance(piece, Decimal):
            piece = decimal(piece.values)
        if isinstance(piece, pa.Array):
            if piece.null_count == len(piece):
                continue  # adds nothing
            chars = uniform_chars(piece)
            if chars is None:
                parts += _run_parts(run, rows)
                parts.append(piece)
                run = []
                continue
            piece = chars
        run.append(piece)
    parts += _run_parts(run, rows)
    if len(parts) == 1 and isinstance(parts[0], pa.Array):
        return pc.fill_null(parts[0], "") if parts[0].null_count else parts[0]
    if not any(isinstance(part, pa.Array) for part in parts):
        return pa.array(["".join(str(p) for p in parts)] * rows, pa.string())
    return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")


def _join_by_digits(pieces: Sequence[Piece | Decimal], rows: int) -> pa.Array | None:
    """Lines of fixed-width pieces and numbers, one block per count of digits, or None.

    None when another piece varies in width or the numbers spread over too
    many widths for this to pay.
    """
    groups = _digit_groups(pieces, rows)
    if groups is None:
        return None
    parts, chosen = groups
    if len(parts) == 1:
        return parts[0]
    inverse = np.empty(rows, dtype=np.int64)
    inverse[np.concatenate(chosen)] = np.arange(rows)
    return pa.concat_arrays(parts).take(pa.array(inverse))


def spread_lines(mask: np.ndarray, pieces: Sequence[Piece | Decimal], other: str) -> pa.Array:
    """The lines of ``pieces`` (a row for each set row of ``mask``) there, ``other`` elsewhere.

    Like ``either(mask, join_lines(pieces, ...), other)``, with one take in all.
    """
    where = np.flatnonzero(mask)
    groups = _digit_groups(pieces, len(where))
    if groups is None:
        return either(mask, join_lines(pieces, len(where)), other)
    parts, chosen = groups
    index = np.zeros(len(mask), dtype=np.int64)  # 0: ``other``, first in the choices
    start = 1
    for rows in chosen:
        index[where[rows]] = np.arange(start, start + len(rows))
        start += len(rows)
    choices = pa.concat_arrays([pa.array([other], parts[0].type), *parts])
    return choices.take(pa.array(index))


def _digit_groups(
    pieces: Sequence[Piece | Decimal], rows: int
) -> tuple[list[pa.Array], list[np.ndarray]] | None:
    """The lines of each group of rows whose numbers have the same widths, and its rows."""
    fixed: list[str | np.ndarray | Decimal] = []
    for piece in pieces:
        if isinstance(piece, pa.Array):
            chars = uniform_chars(piece)
            if chars is None:
                return None
            piece = chars
        fixed.append(piece)
    widths = [digit_counts(p.values) for p in fixed if isinstance(p, Decimal)]
    if len(widths) > 2:
        return None
    key = np.zeros(rows, dtype=np.int64)
    for counts in widths:
        key = key * (_MAX_DIGITS + 1) + counts
    groups = np.flatnonzero(np.bincount(key))
    if len(groups) > _MAX_GROUPS or not rows:
        return None
    if len(groups) == 1:
        return [_fixed_block(fixed, rows, np.arange(rows), widths)], [np.arange(rows)]
    parts, chosen_all = [], []
    for group in groups:
        chosen = np.flatnonzero(key == group)
        parts.append(_fixed_block(fixed, len(chosen), chosen, [w[chosen] for w in widths]))
        chosen_all.append(chosen)
    return parts, chosen_all


def _fixed_block(
    pieces: Sequence[str | np.ndarray | Decimal],
    rows: int,
    chosen: np.ndarray,
    widths: Sequence[np.ndarray],
) -> pa.Array:
    """The lines of rows ``chosen``, whose numbers have the same widths throughout."""
    run: list[str | np.ndarray] = []
    numbers = iter(widths)
    for piece in pieces:
        if isinstance(piece, Decimal):
            counts = next(numbers)
            width = int(counts[0]) if len(counts) else 1
            run.append(padded_digits(piece.values[chosen], width))
        elif isinstance(piece, str):
            run.append(piece)
        else:
            run.append(piece[chosen] if len(chosen) != len(piece) else piece)
    parts = _run_parts(run, rows) or [""]
    return parts[0] if isinstance(parts[0], pa.Array) else pa.array([parts[0]] * rows, pa.string())


def digit_counts(values: np.ndarray) -> np.ndarray:
    """How many decimal digits each non-negative integer has (0 has one)."""
    values = np.asarray(values).astype(np.uint64, copy=False)
    counts = np.ones(len(values), dtype=np.int64)
    top = int(values.max()) if len(values) else 0
    power = 10
    while power <= top:
        counts += values >= np.uint64(power)
        power *= 10
    return counts


def _run_parts(run: list[str | np.ndarray], rows: int) -> list[str | pa.Array]:
    """Neighbouring constants and blocks as one piece (constants alone stay constants)."""
    run = [p for p in run if (len(p) if isinstance(p, str) else p.shape[-1])]  # drop empties
    if not run:
        return []
    if all(isinstance(p, str) for p in run):
        return ["".join(str(p) for p in run)]
    blocks = [np.frombuffer(p.encode(), np.uint8) if isinstance(p, str) else p for p in run]
    widths = [b.shape[-1] for b in blocks]
    starts = np.cumsum([0, *widths[:-1]]).tolist()
    width = sum(widths)
    template = np.zeros(width, dtype=np.uint8)
    for block, start in zip(blocks, starts, strict=True):
        if block.ndim == 1:
            template[start : start + len(block)] = block
    chars = np.empty((rows, width), dtype=np.uint8)
    chars.view(f"V{width}")[:] = template.view(f"V{width}")  # every constant, one copy a row
    variable = [(i, b) for i, b in enumerate(blocks) if b.ndim == 2]
    layout = np.dtype(
        {
            "names": [f"f{i}" for i, _ in variable],
            "formats": [f"V{widths[i]}" for i, _ in variable],
            "offsets": [starts[i] for i, _ in variable],
            "itemsize": width,
        }
    )
    fields = chars.view(layout).reshape(rows)
    for i, block in variable:  # whole values per row: much faster than byte columns
        if block.strides[-1] != 1:
            block = np.ascontiguousarray(block)
        fields[f"f{i}"] = block.view(f"V{widths[i]}").reshape(rows)
    return [block_strings(chars)]


def decimal(values: np.ndarray) -> pa.Array:
    """Integers as decimal strings."""
    return pc.cast(pa.array(values), pa.string())


def padded_digits(values: np.ndarray, width: int) -> np.ndarray:
    """(rows, width) decimal digits with leading zeros; every value must be below 10**width."""
    values = np.asarray(values)
    if width <= _PAIRS_WIDTH:  # a look-up per two digits, in 32 bits: faster than text
        rest = values.astype(np.uint32)
        count = (width + 1) // 2
        pairs = np.empty((len(rest), count), dtype=np.uint16)
        for column in range(count - 1, -1, -1):
            high = rest // np.uint32(100)
            pairs[:, column] = _DIGIT_PAIRS[rest - high * np.uint32(100)]
            rest = high
        return pairs.view(np.uint8).reshape(len(values), 2 * count)[:, 2 * count - width :]
    if 2 * 10**width > _U64_MAX:  # 10**width + v could overflow: pad the text instead
        chars = uniform_chars(pc.utf8_lpad(decimal(values), width=width, padding="0"))
        return chars if chars is not None else np.zeros((0, width), dtype=np.uint8)
    # 10**width + v has width + 1 digits, the first a 1: one width for all, so no offsets.
    text = decimal(values.astype(np.uint64) + np.uint64(10**width))
    offsets, data = string_parts(text)
    return data[offsets[0] : offsets[-1]].reshape(len(values), width + 1)[:, 1:]


def number_text(values: np.ndarray) -> Piece:
    """Non-negative integers in decimal: a character block when all have the same digits."""
    values = np.asarray(values)
    if len(values):
        low, high = int(values.min()), int(values.max())
        width = len(str(high))
        if len(str(low)) == width and width <= _PAIRS_WIDTH:
            return padded_digits(values, width)
    return decimal(values)


def zero_padded(values: np.ndarray, width: int) -> Piece:
    """Non-negative integers as decimal strings of at least ``width`` digits (leading zeros)."""
    if len(values) and int(values.max()) < 10**width:
        return padded_digits(values, width)
    return pc.utf8_lpad(decimal(values), width=width, padding="0")


def either(mask: np.ndarray, values: pa.Array, other: str) -> pa.Array:
    """``values`` spread, in order, over the rows where ``mask`` is set; ``other`` elsewhere."""
    choices = pa.concat_arrays([pa.array([other], values.type), values])
    return choices.take(pa.array(np.cumsum(mask, dtype=np.int64) * mask))


def is_text(kind: pa.DataType) -> bool:
    """String or binary, of either offset width."""
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )
