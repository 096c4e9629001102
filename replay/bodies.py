"""The bodies of sorted text lines: made before the sort, or after it where they are large.

The body of a line (a call, a packet summary, ``name=value`` fields) is what
costs most to carry through the time sort column by column, so a slice is
handed to the sort with its bodies already made: one dictionary code a row
(:data:`BODY_FIELD`). That text exists for a whole slice at once. Fields shown
in full can make it as large as the slice times the text of a row (a
``bytes[16384]`` field is 32 KiB of hex a row, 2 GiB a slice), so a slice
whose shown values pass :data:`~ebcap.replay.lines.TEXT_CHUNK_BYTES` keeps
its columns instead: its bodies are made after the sort, a bounded range of
rows at a time, like every other output.

Both kinds of slice share one schema, since the sort holds and spills them
together: where the bodies were made, the body's columns are null (one
shared array of nulls, which the sort makes again rather than copies);
where they were not, the body is null. A row's body is the same text either
way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ebcap.replay.lines import Piece, bounded_ranges, join_lines
from ebcap.replay.repeats import distinct_rows

BODY_FIELD: Final = pa.field("__ebcap_body", pa.dictionary(pa.int32(), pa.string()))
"""The text of each row's body where it was made before the sort; null where it was not."""

SampleBody = Callable[[pa.RecordBatch], list[Piece]]
"""The pieces of the sample bodies of some rows, for :func:`~ebcap.replay.lines.join_lines`."""


class Bodies:
    """Makes the bodies of lines: in advance for the sort (:meth:`prepare`), or when the
    lines are built (:meth:`text`).

    ``columns``: what the bodies show; ``shown_in_full``: those of them whose values are
    shown whole, so their size decides the size of the text.
    """

    def __init__(
        self, columns: Sequence[str], shown_in_full: Sequence[str], sample_body: SampleBody
    ) -> None:
        self.columns = list(columns)
        self.shown_in_full = list(shown_in_full)
        self.sample_body = sample_body
        self._schemas: dict[pa.Schema, pa.Schema] = {}
        self._nulls: dict[pa.DataType, pa.Array] = {}

    def prepare(self, rows: pa.RecordBatch) -> pa.RecordBatch:
        """``rows`` with :data:`BODY_FIELD` added: the bodies' text, their columns set to
        null; or, where that text would be large, null, their columns kept."""
        schema = self._prepared_schema(rows.schema)
        count = rows.num_rows
        if self._large(rows):
            return pa.RecordBatch.from_arrays(
                [*rows.columns, self._null(BODY_FIELD.type, count)], schema=schema
            )
        dictionary, index = self._made(rows)
        if index is None:
            index = np.arange(count)
        body = pa.DictionaryArray.from_arrays(
            pa.array(index, pa.int32()), dictionary.cast(pa.string())
        )
        shown = set(self.columns)
        columns = [
            self._null(field.type, count) if field.name in shown else column
            for field, column in zip(rows.schema, rows.columns, strict=True)
        ]
        return pa.RecordBatch.from_arrays([*columns, body], schema=schema)

    def text(self, rows: pa.RecordBatch) -> tuple[pa.Array, np.ndarray | None]:
        """The distinct body texts of ``rows`` and each row's index into them (None: one
        text a row); made now for the rows whose body was not made in advance."""
        if BODY_FIELD.name not in rows.schema.names:
            return self._made(rows)
        column = rows.column(BODY_FIELD.name)
        if column.null_count == 0:
            return column.dictionary, column.indices.to_numpy()
        if column.null_count == len(column):
            return self._made(rows)
        late = np.flatnonzero(~np.asarray(column.is_valid()))
        made, index = self._made(rows.take(pa.array(late)))
        codes = pc.fill_null(column.indices, 0).to_numpy().astype(np.int64)
        codes[late] = len(column.dictionary) + (np.arange(len(late)) if index is None else index)
        return pa.concat_arrays([column.dictionary, made.cast(column.dictionary.type)]), codes

    def _made(self, rows: pa.RecordBatch) -> tuple[pa.Array, np.ndarray | None]:
        """Bodies made from their columns, each distinct one once where rows repeat."""
        repeats = distinct_rows([rows.column(name) for name in self.columns])
        if repeats is None:
            return join_lines(self.sample_body(rows), rows.num_rows), None
        example, index = repeats
        chosen = rows.take(pa.array(example))
        return join_lines(self.sample_body(chosen), chosen.num_rows), index

    def _large(self, rows: pa.RecordBatch) -> bool:
        """Whether the values shown in full are more than one piece of text should hold."""
        if not self.shown_in_full or rows.num_rows == 0:
            return False
        return len(bounded_ranges(rows.select(self.shown_in_full))) > 1

    def _prepared_schema(self, schema: pa.Schema) -> pa.Schema:
        """``schema`` with the body's columns nullable and :data:`BODY_FIELD` after them."""
        prepared = self._schemas.get(schema)
        if prepared is None:
            shown = set(self.columns)
            fields = [f.with_nullable(True) if f.name in shown else f for f in schema]
            prepared = pa.schema([*fields, BODY_FIELD], metadata=schema.metadata)
            self._schemas[schema] = prepared
        return prepared

    def _null(self, kind: pa.DataType, count: int) -> pa.Array:
        """``count`` nulls of ``kind``: a slice of one array, made again only to grow."""
        nulls = self._nulls.get(kind)
        if nulls is None or len(nulls) < count:
            nulls = pa.nulls(count, kind)
            self._nulls[kind] = nulls
        return nulls.slice(0, count)
