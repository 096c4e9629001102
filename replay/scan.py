"""Reading a capture in fixed-size slices, whole or a few columns at a time.

Replay and analysis walk a file once or twice. Both walks must cut it into the
same slices (the sorter's first pass describes each slice, its second pass
acts on it), so slicing lives here, once. A first pass usually needs two or
three columns: reading only those decompresses a fraction of the file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.errors import BadFileError
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader

SLICE_ROWS: Final = 65_536
"""Rows per slice: big enough for vectorised work, small enough to bound memory."""

CORE_KEYS: Final = ("seq", "cpu", "ts_ns", "kind")
"""What ordering and lateness need of every row, whatever else is read."""


def slices_of(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    """Zero-copy slices of at most ``rows`` rows (none for an empty batch)."""
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def iter_slices(
    reader: CaptureReader, rows: int | None = None, columns: Sequence[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Every row of the capture in file order, as slices with ``kind`` normalised.

    ``rows``: slice size (default :data:`SLICE_ROWS`, looked up at call time).
    ``columns``: read only those and the ordering keys (see :func:`slice_schema`).
    """
    schema = slice_schema(reader, columns)
    for batch in reader.iter_batches(_read_columns(reader, columns)):
        if batch.schema != schema:
            batch = _as_takeable(batch, schema)
        for piece in slices_of(batch, rows or SLICE_ROWS):
            yield normalise_kind(piece)


def slice_schema(reader: CaptureReader, columns: Sequence[str] | None = None) -> pa.Schema:
    """The schema of the slices :func:`iter_slices` yields for ``columns``: string and
    binary views as their large forms (Arrow cannot take rows out of views, and the
    sort picks rows by position)."""
    names = _read_columns(reader, columns)
    fields = [reader.schema.field(name) for name in (names or reader.schema.names)]
    fields = [field.with_type(takeable(field.type)) for field in fields]
    return pa.schema(fields, metadata=reader.schema.metadata)


def takeable(kind: pa.DataType) -> pa.DataType:
    """``kind`` with every string or binary view in it, nested ones too, as its large form;
    a run-end encoded column as its values."""
    if pa.types.is_run_end_encoded(kind):
        return takeable(kind.value_type)
    if kind == pa.string_view():
        return pa.large_string()
    if kind == pa.binary_view():
        return pa.large_binary()
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(takeable(f.type)) for f in kind.fields])
    if pa.types.is_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(kind.value_field.with_type(takeable(kind.value_type)))
    if pa.types.is_large_list(kind) or pa.types.is_large_list_view(kind):
        return pa.large_list(kind.value_field.with_type(takeable(kind.value_type)))
    if pa.types.is_fixed_size_list(kind):
        field = kind.value_field.with_type(takeable(kind.value_type))
        return pa.list_(field, kind.list_size)
    return kind


def _as_takeable(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` in the types of ``schema`` (:func:`takeable`): run-end encoded columns
    decoded (Arrow casts no such column), the rest cast."""
    columns = [
        pc.run_end_decode(column) if pa.types.is_run_end_encoded(column.type) else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names).cast(schema)


def _read_columns(reader: CaptureReader, columns: Sequence[str] | None) -> list[str] | None:
    """``columns`` and the ordering keys, in file order (None: all)."""
    if columns is None:
        return None
    wanted = {*CORE_KEYS, *columns}
    return [name for name in reader.schema.names if name in wanted]


def scan_columns(
    reader: CaptureReader, names: Sequence[str], rows: int | None = None
) -> Iterator[pa.RecordBatch]:
    """Only the named columns, sliced exactly like :func:`iter_slices`."""
    for batch in reader.iter_batches(names):
        yield from slices_of(batch, rows or SLICE_ROWS)


@functools.cache
def kind_dictionary() -> pa.Array:
    """The dictionary of ``kind`` (sample=0, lost=1), made on first use."""
    return pa.array(list(fs.KINDS), pa.string())


def normalise_kind(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with ``kind`` coded against the fixed dictionary (sample=0, lost=1).

    Files written by ebcap already are; re-coding those written otherwise lets
    batches be concatenated and spilled without dictionary mismatches.
    """
    index = batch.schema.get_field_index("kind")
    kind = batch.column(index)
    if kind.dictionary.equals(kind_dictionary()):
        return batch
    dictionary = kind.dictionary.to_pylist()
    unknown = sorted({str(v) for v in dictionary} - set(fs.KINDS))
    if unknown:
        raise BadFileError(f"unknown kind value(s) {', '.join(unknown)} in the file")
    remap = np.array([fs.KINDS.index(v) for v in dictionary], dtype=np.int8)
    codes = remap[kind.indices.to_numpy(zero_copy_only=False)]
    fixed = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), kind_dictionary())
    return batch.set_column(index, batch.schema.field(index), fixed)


def u64(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A uint64 core column as a numpy array (zero-copy: core columns have no nulls)."""
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
