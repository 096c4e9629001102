"""``ebcap export``: a capture as Parquet, CSV or JSON lines, with wall-clock time.

The files keep every column (CSV and JSON lines hold bytes as hex; Parquet
keeps them binary and the capture's ``ebcap.*`` metadata) and gain ``time``,
``timestamp[ns, UTC]``: ``ts_ns`` plus the capture's CLOCK_REALTIME -
CLOCK_MONOTONIC offset, so tools without ebcap see real dates. A source
column already named ``time`` (a tracepoint field) keeps its name, and the
wall-clock column becomes ``wall_time``. A capture without the offset (an
optional key) is exported without the column, and the summary says so. A
column Parquet has no type for (an interval or a union, in a file another
tool wrote) is refused before any file is created; CSV and JSON lines hold
it as text. Batches
stream through; nothing holds the whole capture. CSV and JSON lines can go
to stdout (``-``); Parquet cannot (its writer needs a file). What the
ordering met (a CPU's own disorder, a sort that spilled) comes back in the
summary's :class:`~ebcap.replay.order.OrderReport`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from ebcap.errors import UsageError
from ebcap.format import schema as fs
from ebcap.format.reader import CaptureReader
from ebcap.replay.order import OrderReport, in_order
from ebcap.replay.records import CSV, JSONL, encoded, encoder_for
from ebcap.replay.scan import slice_schema
from ebcap.replay.sink import AtomicPath, Output, inner_suffix, is_compressed, to_stdout
from ebcap.replay.text import wall_time

PARQUET: Final = "parquet"
EXPORT_FORMATS: Final = (PARQUET, CSV, JSONL)
SUFFIXES: Final = {".parquet": PARQUET, ".pq": PARQUET, ".csv": CSV, ".jsonl": JSONL}
TIME_FIELD: Final = pa.field("time", pa.timestamp("ns", tz="UTC"))
"""The wall-clock column, under the first of :data:`TIME_NAMES` the capture leaves free;
null where ``ts_ns`` plus the offset passes what the type holds (the year 2262)."""
TIME_NAMES: Final = ("time", "wall_time", "ebcap_wall_time")
PARQUET_COMPRESSION: Final = "zstd"


@dataclass
class ExportSummary:
    path: Path | None
    """None: written to stdout."""
    fmt: str
    rows: int
    order: OrderReport
    wall_clock: str | None = TIME_NAMES[0]
    """The wall-clock column's name; None when the capture lacks its realtime offset."""

    def notes(self) -> list[str]:
        """What the user should know: what the ordering met, a missing wall clock."""
        notes = list(self.order.notes())
        if self.wall_clock is None:
            notes.append(
                f"the capture has no {fs.META_REALTIME_OFFSET}: exported without a "
                "wall-clock column"
            )
        return notes


def export_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The format to write: ``fmt`` if given, else the one the file name says."""
    chosen = fmt.lower() if fmt else SUFFIXES.get(inner_suffix(path))
    if chosen is None:
        raise UsageError(
            f"cannot tell the format of {path} from its name: use .parquet, .csv or .jsonl "
            "(optionally .zst), .pcapng, or --format"
        )
    if chosen not in EXPORT_FORMATS:
        named = ", ".join([*EXPORT_FORMATS, "pcapng"])  # pcapng: packets, ebcap.replay.pcapng
        raise UsageError(f"--format must be one of {named}, not {fmt!r}")
    if chosen == PARQUET and is_compressed(path):
        raise UsageError("Parquet is compressed inside (zstd); drop the .zst suffix")
    if chosen == PARQUET and to_stdout(path):
        raise UsageError(
            "Parquet cannot be written to stdout (its footer points back into the file): "
            "give a file name, or use --format csv or jsonl"
        )
    return chosen


def time_field(schema: pa.Schema) -> pa.Field:
    """The wall-clock column for a capture of ``schema``: ``time`` unless a column has it."""
    free = [name for name in TIME_NAMES if name not in schema.names]
    if not free:
        raise UsageError(f"no name left for the wall-clock column: {', '.join(TIME_NAMES)} exist")
    return TIME_FIELD.with_name(free[0])


def time_schema(schema: pa.Schema, time: pa.Field) -> pa.Schema:
    """The capture's schema with the wall-clock column ``time`` right after ``ts_ns``."""
    return schema.insert(schema.get_field_index("ts_ns") + 1, time)


def check_parquet_types(schema: pa.Schema) -> None:
    """UsageError naming the first column Parquet has no type for (an interval, a union:
    columns of files other tools wrote), before any file is created."""
    if _parquet_takes(schema):
        return
    for field in schema:
        if not _parquet_takes(pa.schema([field])):
            raise UsageError(
                f"column {field.name!r} is {field.type}, which Parquet cannot hold: "
                "export to .csv or .jsonl instead"
            )
    raise UsageError("Parquet cannot hold this capture's columns: export to .csv or .jsonl")


def _parquet_takes(schema: pa.Schema) -> bool:
    """Whether Arrow's Parquet writer maps every column of ``schema`` (tried in memory)."""
    try:
        pq.ParquetWriter(pa.BufferOutputStream(), schema).close()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def with_time(batch: pa.RecordBatch, offset_ns: int, field: pa.Field) -> pa.RecordBatch:
    """The batch with its wall-clock column ``field`` added."""
    time = wall_time(batch.column("ts_ns").to_numpy(), offset_ns).cast(field.type)
    return batch.add_column(batch.schema.get_field_index("ts_ns") + 1, field, time)


def _rows(
    reader: CaptureReader, in_time_order: bool, report: OrderReport
) -> Iterator[pa.RecordBatch]:
    stream = in_order(reader, in_time_order, report)
    with contextlib.closing(stream):
        for ordered in stream:
            yield ordered.rows


def export(
    reader: CaptureReader,
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    force: bool = False,
    in_time_order: bool = False,
) -> ExportSummary:
    """Write the capture to ``path``; the file appears only once complete."""
    chosen = export_format(path, fmt)
    offset = reader.metadata.get(fs.META_REALTIME_OFFSET)  # optional: FORMAT.md
    schema = slice_schema(reader)  # the types the rows come in
    rows = 0
    report = OrderReport()
    batches = _rows(reader, in_time_order, report)
    time: pa.Field | None = None
    if isinstance(offset, int):
        time = time_field(reader.schema)
        schema = time_schema(schema, time)
        batches = (with_time(batch, offset, time) for batch in batches)
    if chosen == PARQUET:
        check_parquet_types(schema)
        with (
            AtomicPath(path, force=force, inputs=[reader.path]) as temp,
            pq.ParquetWriter(temp, schema, compression=PARQUET_COMPRESSION) as writer,
        ):
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
    else:
        with Output(path, force=force, inputs=[reader.path]) as out:
            encoder = encoder_for(chosen, schema)
            out.write(encoder.header())
            for batch in batches:
                for piece in encoded(encoder, batch):
                    out.write(piece)
                rows += batch.num_rows
    where = None if to_stdout(path) else Path(path)
    return ExportSummary(where, chosen, rows, report, None if time is None else time.name)
