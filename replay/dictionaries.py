"""Dictionary-coded columns through the time sort: gathered without hashing, spilled plain.

A source's dictionary column (the text of a replay line's body, prepared
before the sort) comes with a dictionary per slice, possibly as large as the
slice. Picking rows out of several slices would make Arrow unify those
dictionaries, hashing every value; laying them end to end and shifting the
codes gives the same values without hashing (:func:`gathered_dictionary`).

A spilled run must not carry such a dictionary either: each block of a run
would hold the dictionary of the whole run. Runs store those columns as
plain values (:func:`plain_columns`) and the merge codes each batch it hands
out again (:func:`coded_like`), so the sort's output keeps its schema.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.format import schema as fs


def merged_by_concatenation(field: pa.Field) -> bool:
    """A source's dictionary column: batches bring their own dictionaries, maybe large.

    Only where the codes have room for concatenated dictionaries; ``kind``
    has one small fixed dictionary and its codes mean something.
    """
    kind = field.type
    return (
        pa.types.is_dictionary(kind)
        and kind.index_type in (pa.int32(), pa.int64())
        and field.name not in fs.CORE_COLUMNS
    )


def gathered_dictionary(
    field: pa.Field, columns: list[pa.DictionaryArray], positions: np.ndarray
) -> pa.Array:
    """The values at ``positions`` of the columns laid end to end, dictionaries concatenated."""
    kind = field.type
    if not columns:
        return pa.DictionaryArray.from_arrays(
            pa.array([], kind.index_type), pa.array([], kind.value_type)
        )
    sizes = np.array([len(column.dictionary) for column in columns], dtype=np.int64)
    shifts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    codes = np.concatenate(
        [
            pc.fill_null(c.indices, 0).to_numpy().astype(np.int64) + shift
            for c, shift in zip(columns, shifts, strict=True)
        ]
    )[positions]
    nulls = None
    if any(column.null_count for column in columns):
        valid = np.concatenate([np.asarray(column.is_valid()) for column in columns])
        nulls = ~valid[positions]
    dictionary = pa.concat_arrays([column.dictionary for column in columns])
    indices = pa.array(codes, kind.index_type, mask=nulls)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def used_entries_only(column: pa.DictionaryArray) -> pa.DictionaryArray:
    """``column`` with a dictionary of only the entries its rows use, in the same order.

    A window compacted around a row held back for long would otherwise carry the
    concatenated dictionaries of every batch it ever held, and carry them again
    at the next compaction.
    """
    codes = pc.fill_null(column.indices, 0).to_numpy().astype(np.int64)
    used = np.unique(codes[np.asarray(column.is_valid())])
    if len(used) == len(column.dictionary):
        return column
    indices = pa.array(
        np.searchsorted(used, codes), column.type.index_type, mask=np.asarray(column.is_null())
    )
    return pa.DictionaryArray.from_arrays(indices, column.dictionary.take(pa.array(used)))


def spilled_plain(field: pa.Field) -> bool:
    """Stored as plain values in a spilled run (every dictionary column but ``kind``)."""
    return pa.types.is_dictionary(field.type) and field.name not in fs.CORE_COLUMNS


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the spilled-plain dictionary columns as their value type."""
    fields = [f.with_type(f.type.value_type) if spilled_plain(f) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def plain_columns(table: pa.Table) -> pa.Table:
    """``table`` with its spilled-plain dictionary columns decoded."""
    for index, field in enumerate(table.schema):
        if spilled_plain(field):
            column = table.column(index).cast(field.type.value_type)
            table = table.set_column(index, field.with_type(field.type.value_type), column)
    return table


def coded_like(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` (plain) with the columns ``schema`` codes as dictionaries coded again."""
    for index, field in enumerate(schema):
        if spilled_plain(field) and not pa.types.is_dictionary(table.schema.field(index).type):
            column = pc.dictionary_encode(table.column(index)).cast(field.type)
            table = table.set_column(index, field, column)
    return table
