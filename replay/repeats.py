"""Rows that repeat: find them cheaply, so what they show is formatted once.

A syscall trace is a few threads in loops: the same call, arguments, pid,
tid and comm over and over, and a CPU's ring delivers a thread's events in
runs. :func:`distinct_rows` codes each row's value tuple exactly (value bits
after dictionary coding, nulls apart) so the text or JSON of each distinct
tuple is built once and gathered; rows equal to the row before them are
found first, so only the first row of each run is coded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.replay.lines import is_text

DISTINCT_SAMPLE: Final = 1024
"""Rows looked at to decide whether a batch repeats enough to format each value once."""
DISTINCT_SHARE: Final = 8
"""Formatting once per distinct value pays when the sample repeats each value this often."""
RUN_SHARE: Final = 4
"""Runs of equal rows are used when they are this long on average."""


def repeats_enough(column: pa.Array) -> bool:
    """Whether a sample of ``column`` repeats its values enough to format each once."""
    if len(column) < DISTINCT_SAMPLE:
        return False
    try:
        distinct = len(pc.unique(column.slice(0, DISTINCT_SAMPLE)))
    except pa.ArrowNotImplementedError:
        return False
    return distinct * DISTINCT_SHARE <= DISTINCT_SAMPLE


def distinct_rows(columns: Sequence[pa.Array]) -> tuple[np.ndarray, np.ndarray] | None:
    """(a row holding each distinct value tuple, each row's tuple number), if values repeat.

    None when a sample of the rows shows too few repeats for formatting once
    per tuple to pay. Two rows share a tuple only if every column holds the
    same value (null included), compared by value bits after dictionary coding.
    Rows equal to the row before them (a thread's events as a CPU's ring
    delivers them) are found first and cheaply; only the first row of each
    such run is coded.
    """
    rows = len(columns[0]) if columns else 0
    if rows < DISTINCT_SAMPLE:
        return None
    sample = _tuple_codes([c.slice(0, DISTINCT_SAMPLE) for c in columns])
    if sample is None or len(sample.dictionary) * DISTINCT_SHARE > DISTINCT_SAMPLE:
        return None
    starts = _run_starts(columns)
    if starts is not None and np.count_nonzero(starts) * RUN_SHARE <= rows:
        firsts = np.flatnonzero(starts)
        coded = _tuple_codes([column.take(pa.array(firsts)) for column in columns])
        run = np.cumsum(starts) - 1
    else:
        firsts, run = np.arange(rows), None
        coded = _tuple_codes(columns)
    if coded is None or len(coded.dictionary) * 2 > rows:
        return None
    codes = coded.indices.to_numpy()
    example = np.empty(len(coded.dictionary), dtype=np.int64)
    example[codes] = firsts  # any row of a tuple stands for all
    return example, (codes if run is None else codes[run])


def _run_starts(columns: Sequence[pa.Array]) -> np.ndarray | None:
    """Where a row differs from the row before it (the first row always), or None."""
    rows = len(columns[0])
    same = np.ones(rows - 1, dtype=bool)
    for column in columns:
        equal = _equal_to_previous(column)
        if equal is None:
            return None
        same &= equal
    starts = np.empty(rows, dtype=bool)
    starts[0] = True
    np.logical_not(same, out=starts[1:])
    return starts


def _equal_to_previous(column: pa.Array) -> np.ndarray | None:
    """Whether each row but the first holds exactly the value of the row before it."""
    if pa.types.is_dictionary(column.type):
        column = column.indices  # one dictionary: equal codes, equal values
    rows = len(column)
    if is_text(column.type):
        equal = pc.equal(column.slice(1), column.slice(0, rows - 1))
        if not column.null_count:
            return equal.to_numpy(zero_copy_only=False)
        valid = np.asarray(column.is_valid())
        both_null = ~valid[1:] & ~valid[:-1]
        return np.asarray(pc.fill_null(equal, False)) | both_null
    bits = _value_bits(column)
    if bits is None:
        return None
    equal = bits[1:] == bits[:-1]
    if column.null_count:
        valid = np.asarray(column.is_valid())
        equal &= valid[1:] == valid[:-1]
    return equal


def _tuple_codes(columns: Sequence[pa.Array]) -> pa.DictionaryArray | None:
    """Dictionary coding of the rows' value tuples (None if a column type has no bit view)."""
    rows = len(columns[0])
    words = np.zeros((rows, len(columns) + 1), dtype=np.uint64)
    for i, column in enumerate(columns):
        values = _value_bits(column)
        if values is None:
            return None
        words[:, i] = values
        if column.null_count:  # the last word: one bit per column, set where null
            nulls = np.asarray(column.is_null()).astype(np.uint64)
            words[:, -1] |= nulls << np.uint64(i)
    keys = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(words.shape[1] * 8), rows, [None, pa.py_buffer(words)]
    )
    return pc.dictionary_encode(keys)


def _value_bits(column: pa.Array) -> np.ndarray | None:
    """One fixed-width number per row that equals another row's exactly when the values do."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if is_text(kind):
        codes = pc.dictionary_encode(column, null_encoding="encode").indices
        return codes.to_numpy().view(np.uint32)
    if not (pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return None
    if column.null_count:
        column = pc.fill_null(column, pa.scalar(0).cast(kind))
    values = np.ascontiguousarray(column.to_numpy(zero_copy_only=False))
    return values.view(f"u{values.dtype.itemsize}")
