"""Machine-readable rows: JSON lines and CSV, every column, bytes as hex.

Timestamps are ISO 8601; one with a time zone is written in UTC with ``Z``.

Both encoders turn a whole record batch into bytes with Arrow compute (the
JSON text of each column is built column-wise, then joined per row), so no
Python code runs per event except for string values, which are escaped once
per distinct value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ebcap.replay.display import (
    interval_strings,
    lines_bytes,
    needs_escape,
    plain_form,
    quoted,
)
from ebcap.replay.hexfmt import bytes_hex, hex_or_null
from ebcap.replay.lines import Piece, bounded_ranges, join_lines
from ebcap.replay.repeats import distinct_rows, repeats_enough

JSONL: Final = "jsonl"
CSV: Final = "csv"


class RowEncoder(Protocol):
    """Turns record batches into output bytes; ``header`` is written once, first."""

    def header(self) -> bytes: ...

    def encode(self, batch: pa.RecordBatch) -> bytes | memoryview: ...


def plain_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionaries and run-end encoded columns decoded, binary columns as hex strings (nulls
    kept): what text formats can hold."""
    arrays, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        column = plain_form(column)
        if pa.types.is_binary(column.type):
            column = hex_or_null(column)
        arrays.append(column)
        fields.append(pa.field(field.name, column.type, field.nullable))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def json_values(column: pa.Array) -> pa.Array:
    """Each value of a plain column (:func:`plain_columns`) as JSON text (``null`` for
    nulls)."""
    kind = column.type
    if pa.types.is_string(kind):
        text = quoted(column)
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        text = pc.cast(column, pa.string())
    elif pa.types.is_floating(kind):
        finite = pc.is_finite(column)
        text = pc.if_else(finite, pc.cast(column, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_timestamp(kind):
        text = _iso_timestamps(column)
    elif pa.types.is_interval(kind):
        text = quoted(interval_strings(column))
    else:
        text = _each_as_text(column, json_text)
    return pc.fill_null(text, "null")


def json_text(value: object) -> str:
    """A Python value of a column as JSON: bytes inside lists and structs as hex, like
    a bytes column; what JSON lacks otherwise (a date) as ``str``."""
    return json.dumps(value, default=_json_default)


def _json_default(value: object) -> str:
    return value.hex() if isinstance(value, bytes | bytearray) else str(value)


def _each_as_text(column: pa.Array, spell: Callable[[Any], str]) -> pa.Array:
    """``spell`` of each value, nulls kept (for types Arrow cannot turn into text itself)."""
    return pa.array([None if v is None else spell(v) for v in column.to_pylist()], pa.string())


def _iso_timestamps(column: pa.Array) -> pa.Array:
    """Timestamps as quoted ISO 8601: a zoned one in UTC with ``Z`` (whatever its zone:
    "Etc/UTC", "Asia/Tokyo"), so no reader takes it for local time; a naive one as is."""
    kind = column.type
    zoned = kind.tz is not None
    if zoned:
        column = column.cast(pa.timestamp(kind.unit, tz="UTC"))  # the values are UTC already
    iso = pc.strftime(column, format="%Y-%m-%dT%H:%M:%S")
    return pc.binary_join_element_wise('"', iso, 'Z"' if zoned else '"', "")


class JsonlEncoder:
    """One JSON object per line, keys in column order.

    Runs of neighbouring columns whose values repeat (CPU, kind, the fields
    of a busy thread) are encoded once per distinct combination.
    """

    def header(self) -> bytes:
        return b""

    def encode(self, batch: pa.RecordBatch) -> bytes | memoryview:
        if batch.num_rows == 0:
            return b""
        pieces: list[Piece] = []
        for positions in _column_runs(batch):
            pieces += _run_pieces(batch.select(positions), first=positions[0] == 0)
        pieces.append("}\n")
        return lines_bytes(join_lines(pieces, batch.num_rows))


def _column_runs(batch: pa.RecordBatch) -> list[list[int]]:
    """The column positions in order, neighbours whose values repeat grouped together.

    Positions, not names: a query's result may name two columns alike (a join).
    """
    runs: list[list[int]] = []
    grouped = False
    for position, column in enumerate(batch.columns):
        repeats = repeats_enough(column)
        if repeats and grouped:
            runs[-1].append(position)
        else:
            runs.append([position])
        grouped = repeats
    return runs


def _run_pieces(run: pa.RecordBatch, *, first: bool) -> list[Piece]:
    """``"name":value`` of each column of ``run``, once per distinct row where they repeat."""
    repeats = distinct_rows(run.columns)
    if repeats is None:
        return _json_pieces(run, first=first)
    example, index = repeats
    chosen = run.take(pa.array(example))
    text = join_lines(_json_pieces(chosen, first=first), chosen.num_rows)
    return [text.take(pa.array(index))]


def _json_pieces(batch: pa.RecordBatch, *, first: bool) -> list[Piece]:
    pieces: list[Piece] = []
    for i, (name, column) in enumerate(zip(batch.schema.names, batch.columns, strict=True)):
        pieces.append(("{" if first and i == 0 else ",") + json.dumps(name) + ":")
        pieces += json_pieces(column)
    return pieces


def json_pieces(column: pa.Array) -> list[Piece]:
    """The JSON text of each value as pieces of a line (quotes apart, so they merge)."""
    column = plain_form(column)
    kind = column.type
    if not column.null_count:
        if pa.types.is_binary(kind):
            return ['"', bytes_hex(column), '"']  # hex needs no escaping
        if pa.types.is_string(kind) and not needs_escape(column):
            return ['"', column, '"']
        if pa.types.is_integer(kind):
            return [pc.cast(column, pa.string())]
    return [json_values(plain_columns(pa.record_batch([column], names=["v"])).column(0))]


def csv_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """:func:`plain_columns`, and nested values (a tracepoint's integer array, a query's
    lists and structs) as JSON text in their cell: CSV has no cells within cells. A union's
    text values stay as they are; intervals (a query's difference of two times) read as
    DuckDB writes them; any other type Arrow's CSV writer does not take is its Python text."""
    batch = plain_columns(batch)
    arrays, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        kind = column.type
        if pa.types.is_interval(kind):
            column = interval_strings(column)
        elif pa.types.is_union(kind):  # one value of several types: text as is, else JSON
            column = _each_as_text(column, lambda v: v if isinstance(v, str) else json_text(v))
        elif pa.types.is_nested(kind):
            column = _each_as_text(column, json_text)
        elif not _csv_writes(kind):
            column = _each_as_text(column, str)
        arrays.append(column)
        fields.append(pa.field(field.name, column.type, field.nullable))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _csv_writes(kind: pa.DataType) -> bool:
    """Whether Arrow's CSV writer takes a (plain, not nested) column of this type."""
    return (
        pa.types.is_null(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_string(kind)
        or (pa.types.is_temporal(kind) and not pa.types.is_interval(kind))
    )


class CsvEncoder:
    """RFC 4180 CSV with a header row (Arrow's CSV writer)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema

    def header(self) -> bytes:
        columns = [pa.nulls(0, field.type) for field in self.schema]  # any type, unions too
        empty = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        return self._csv(csv_columns(empty), header=True)

    def encode(self, batch: pa.RecordBatch) -> bytes | memoryview:
        if batch.num_rows == 0:
            return b""
        return self._csv(csv_columns(batch), header=False)

    @staticmethod
    def _csv(batch: pa.RecordBatch, *, header: bool) -> bytes:
        out = pa.BufferOutputStream()
        pacsv.write_csv(batch, out, write_options=pacsv.WriteOptions(include_header=header))
        return out.getvalue().to_pybytes()


def encoded(encoder: RowEncoder, batch: pa.RecordBatch) -> Iterator[bytes | memoryview]:
    """``encoder.encode`` of ``batch`` a bounded range of rows at a time (see
    :func:`~ebcap.replay.lines.bounded_ranges`): large payloads never make one huge text."""
    for start, end in bounded_ranges(batch):
        yield encoder.encode(batch.slice(start, end - start))


def encoder_for(fmt: str, schema: pa.Schema) -> RowEncoder:
    """The encoder of ``jsonl`` or ``csv``."""
    if fmt == JSONL:
        return JsonlEncoder()
    if fmt == CSV:
        return CsvEncoder(schema)
    raise ValueError(f"no row encoder for {fmt!r}")
