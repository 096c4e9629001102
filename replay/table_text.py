"""Query results as an aligned text table, streamed a batch at a time.

``ebcap sql``'s default output. Column widths come from the header and the
first batch (up to 65,536 rows, fewer when their bytes and strings pass
:data:`~ebcap.replay.lines.TEXT_CHUNK_BYTES`); later batches are padded to those widths,
so memory holds one batch whatever the size of the result, and the first
lines appear at once (``| head``). A later value wider than its column is
printed whole and pushes the rest of its line to the right: nothing is cut.
Numbers are right-aligned, bytes shown as hex, NULL as ``NULL``; ``--format
csv`` (or jsonl) gives the values with no alignment at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from ebcap.replay.display import lines_bytes, value_strings
from ebcap.replay.lines import Piece, bounded_ranges, join_lines

NULL_TEXT: Final = "NULL"
GAP: Final = "  "


def _right_aligned(field: pa.Field) -> bool:
    kind = field.type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def table_lines(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> Iterator[bytes | memoryview]:
    """The header, a rule, then the rows of each batch, as text ending in newlines."""
    right = [_right_aligned(field) for field in schema]
    widths: list[int] | None = None
    for batch in _bounded(batches):
        cells = [value_strings(column, null=NULL_TEXT) for column in batch.columns]
        if widths is None:
            widths = [
                max(len(name), _widest(column))
                for name, column in zip(schema.names, cells, strict=True)
            ]
            yield _header(schema.names, widths, right)
        if batch.num_rows:
            yield lines_bytes(_rows(cells, widths, right, batch.num_rows))
    if widths is None:
        yield _header(schema.names, [len(name) for name in schema.names], right)


def _bounded(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Each batch in row ranges whose text is built at once (large payloads split)."""
    for batch in batches:
        if batch.num_rows == 0:
            yield batch
        for start, end in bounded_ranges(batch):
            yield batch.slice(start, end - start)


def _widest(column: pa.Array) -> int:
    if len(column) == 0:
        return 0
    return int(pc.max(pc.utf8_length(column)).as_py() or 0)


def _header(names: list[str], widths: list[int], right: list[bool]) -> bytes:
    def line(cells: list[str]) -> str:
        padded = (
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        )
        return GAP.join(padded).rstrip()

    return (line(names) + "\n" + line(["-" * w for w in widths]) + "\n").encode()


def _rows(cells: list[pa.Array], widths: list[int], right: list[bool], rows: int) -> pa.Array:
    pieces: list[Piece] = []
    for i, (column, width, numeric) in enumerate(zip(cells, widths, right, strict=True)):
        pad = pc.utf8_lpad if numeric else pc.utf8_rpad
        pieces += [GAP] if i else []
        pieces.append(pad(column, width=width))
    lines = pc.utf8_rtrim_whitespace(join_lines(pieces, rows)) if pieces else pa.array([""] * rows)
    return join_lines([lines, "\n"], rows)
