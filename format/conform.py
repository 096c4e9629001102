"""Rows as the writer takes them, turned into record batches of exactly the file's schema.

Callers hand the writer Arrow arrays, numpy arrays or plain lists; ``kind``
may come as strings, integer codes or a dictionary array. Everything is cast
to the schema's types here, once, with a ValueError naming the column that
does not fit, so a bad row never reaches the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.format import schema as fs
from ebcap.format.file_checks import one_line

ColumnValues: TypeAlias = pa.Array | pa.ChunkedArray | np.ndarray | Sequence[Any]
Rows: TypeAlias = pa.RecordBatch | Mapping[str, ColumnValues]

KINDS_ARRAY = pa.array(fs.KINDS, pa.string())
"""The dictionary of every ``kind`` column."""


def conform_batch(rows: Rows, schema: pa.Schema) -> pa.RecordBatch:
    """``rows`` as a record batch of exactly ``schema``; ValueError naming what does not fit.

    Columns may come as Arrow arrays or numpy arrays of a castable type; ``kind``
    may be strings, integer codes (index into :data:`KINDS`) or a dictionary array.
    """
    if isinstance(rows, pa.RecordBatch):
        columns: Mapping[str, Any] = {name: rows.column(name) for name in rows.schema.names}
    elif isinstance(rows, Mapping):
        columns = rows
    else:
        raise TypeError(f"rows must be a RecordBatch or a mapping of columns, not {type(rows)}")
    missing = [name for name in schema.names if name not in columns]
    extra = [name for name in columns if schema.get_field_index(name) < 0]
    if missing or extra:
        raise ValueError(f"columns do not match the schema: missing {missing}, unexpected {extra}")
    arrays = [_conform_column(columns[field.name], field) for field in schema]
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    """No rows, but the same ``kind`` dictionary: an IPC file cannot replace dictionaries."""
    return conform_batch({f.name: pa.nulls(0, f.type) for f in schema}, schema)  # unions too


def _conform_column(values: Any, field: pa.Field) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    try:
        if field.name == "kind":
            array = _kind_array(values)
        elif isinstance(values, pa.Array):
            array = values if values.type == field.type else values.cast(field.type)
        else:
            if pa.types.is_integer(field.type) and _has_fraction(values):
                raise ValueError("a value with a fraction")  # pa.array would truncate it
            array = pa.array(values, type=field.type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"column {field.name!r} does not fit {field.type}: {one_line(exc)}"
        ) from None
    if not field.nullable and array.null_count:
        raise ValueError(f"column {field.name!r} has nulls")
    return array


def _has_fraction(values: Any) -> bool:
    """Whether a sequence of Python values holds a float that is not a whole number."""
    if isinstance(values, np.ndarray):
        return False  # from an array, pa.array refuses a truncating cast itself
    return any(isinstance(v, float) and not v.is_integer() for v in values)


def _kind_array(values: Any) -> pa.DictionaryArray:
    """The ``kind`` column on the fixed dictionary, whatever form it came in."""
    array = values if isinstance(values, pa.Array) else pa.array(values)
    if pa.types.is_dictionary(array.type):
        if array.dictionary.equals(KINDS_ARRAY) or len(array) == 0:
            return pa.DictionaryArray.from_arrays(array.indices.cast(pa.int8()), KINDS_ARRAY)
        array = array.dictionary_decode()
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        codes = pc.index_in(array, value_set=KINDS_ARRAY)
        if codes.null_count > array.null_count:
            raise ValueError(f"kind must be one of {list(fs.KINDS)}")
    elif pa.types.is_null(array.type) and len(array) == 0:
        codes = pa.array([], pa.int8())  # an empty list carries no type
    elif pa.types.is_integer(array.type):
        codes = array
        low, high = pc.min_max(codes).values()
        if len(codes) and (low.as_py() < 0 or high.as_py() >= len(fs.KINDS)):
            raise ValueError(f"kind codes must be 0..{len(fs.KINDS) - 1}")
    else:
        raise ValueError(f"kind must be strings or integer codes, not {array.type}")
    return pa.DictionaryArray.from_arrays(codes.cast(pa.int8()), KINDS_ARRAY)
