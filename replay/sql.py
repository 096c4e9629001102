"""SQL over a capture with DuckDB, streaming (the table rendering is :mod:`.table_text`).

DuckDB cannot open Arrow IPC files by path, so the capture is registered as
a pyarrow dataset under the name ``events``: DuckDB then scans it batch by
batch and reads only the columns a query uses. DuckDB trusts the buffers it
scans (a damaged one can crash it), so the session first reads every batch
through the checking reader once. Rows DuckDB spills to disk (queries larger
than its memory) go to a private directory removed at close, not to its
default ``./.tmp``, which other users could read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.dataset as pads

from ebcap.closing import ClosesOnExit
from ebcap.errors import ClosedError, UsageError, require_package
from ebcap.format.reader import CaptureReader

VIEW: Final = "events"
BATCH_ROWS: Final = 65_536


class SqlSession(ClosesOnExit):
    """A DuckDB connection with the capture registered as ``events``."""

    def __init__(self, reader: CaptureReader) -> None:
        require_package("duckdb", "SQL")
        import duckdb

        self._duckdb = duckdb
        for _ in reader.iter_batches():  # DuckDB trusts what it scans: check every batch first
            pass
        self._con: duckdb.DuckDBPyConnection | None = None
        self.spill_directory = Path(tempfile.mkdtemp(prefix="ebcap-sql-"))  # 0700
        try:
            self._con = duckdb.connect(config={"temp_directory": str(self.spill_directory)})
            self._con.register(VIEW, pads.dataset(str(reader.path), format="arrow"))
        except self._duckdb.Error as exc:  # a column type DuckDB lacks (a dense union)
            self.close()
            raise sql_error(exc) from None
        except BaseException:
            self.close()
            raise

    def query(self, sql: str, batch_rows: int = BATCH_ROWS) -> pa.RecordBatchReader | None:
        """The result as a stream of record batches; None for a statement without rows.

        A query DuckDB rejects (syntax, unknown column, ...) is a UsageError
        carrying DuckDB's first line. Columns named alike (``SELECT *`` over a
        join) get ``_1``, ``_2``, ... after the first, so JSON keys stay apart.
        """
        if self._con is None:
            raise ClosedError("SQL session is closed")
        if not sql.strip():
            raise UsageError("SQL: the query is empty")
        try:
            relation = self._con.sql(sql)
            if relation is None:
                return None
            result = relation.to_arrow_reader(batch_rows)
        except self._duckdb.Error as exc:
            raise sql_error(exc) from None
        names = unique_names(result.schema.names)
        schema = pa.schema([f.with_name(n) for f, n in zip(result.schema, names, strict=True)])
        return pa.RecordBatchReader.from_batches(schema, self._batches(result, schema))

    def _batches(self, result: pa.RecordBatchReader, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """The result's batches under ``schema``'s names; DuckDB's errors while it
        streams (an ``error()`` call reached late, a cast failing on row 700,000)
        reach the caller as they do before the first row."""
        try:
            for batch in result:
                yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        except (self._duckdb.Error, OSError) as exc:  # pyarrow re-raises them as OSError
            raise sql_error(exc) from None

    def close(self) -> None:
        """Close the connection and remove what DuckDB spilled. Idempotent."""
        con, self._con = self._con, None
        if con is not None:
            con.close()
        shutil.rmtree(self.spill_directory, ignore_errors=True)


def sql_error(exc: BaseException) -> UsageError:
    """DuckDB's error as one line: its first."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return UsageError(f"SQL: {lines[0] if lines else type(exc).__name__}")


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats numbered (``cpu``, ``cpu_1``), avoiding every given name."""
    given, out = set(names), []
    used: set[str] = set()
    for name in names:
        candidate, number = name, 0
        while candidate in used or (candidate != name and candidate in given):
            number += 1
            candidate = f"{name}_{number}"
        used.add(candidate)
        out.append(candidate)
    return out
