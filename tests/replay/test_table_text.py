"""The aligned table of `ebcap sql`: streamed batch by batch, widths from the first batch."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from ebcap.replay.table_text import table_lines

SCHEMA = pa.schema([("n", pa.int64()), ("name", pa.string()), ("blob", pa.binary())])


def batch(rows: list[tuple]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [dict(zip(SCHEMA.names, row, strict=True)) for row in rows], schema=SCHEMA
    )


def text(chunks: Iterator) -> str:
    return "".join(bytes(chunk).decode() for chunk in chunks)


def test_columns_line_up_numbers_right_text_left() -> None:
    out = text(table_lines(SCHEMA, [batch([(1, "ab", b"\x01"), (123, None, None)])]))
    assert out.splitlines() == [
        "  n  name  blob",
        "---  ----  ----",
        "  1  ab    01",
        "123  NULL  NULL",
    ]


def test_an_empty_result_is_the_header() -> None:
    assert text(table_lines(SCHEMA, [])).splitlines() == ["n  name  blob", "-  ----  ----"]


def test_rows_stream_out_before_later_batches_are_read() -> None:
    """Memory holds one batch: the first lines are out before the second batch is made."""
    made: list[int] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(3):
            made.append(i)
            yield batch([(i, "x" * (1 + 10 * i), b"")])

    lines = table_lines(SCHEMA, batches())
    first = [bytes(next(lines)).decode(), bytes(next(lines)).decode()]
    assert made == [0]
    assert "".join(first).splitlines() == ["n  name  blob", "-  ----  ----", "0  x"]
    rest = text(lines).splitlines()
    # Widths stay those of the first batch: a wider value later is printed whole.
    assert rest == ["1  " + "x" * 11, "2  " + "x" * 21]
    assert made == [0, 1, 2]
