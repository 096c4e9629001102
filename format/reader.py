"""Open an ebcap file: check it is one, then hand out its batches, metadata and totals.

Every way a file can be wrong (missing, empty, not Arrow, not ebcap, too new,
cut short, damaged) becomes one :class:`~ebcap.errors.BadFileError` with a
one-line message; no pyarrow exception escapes to the caller. What is
checked lives in :mod:`ebcap.format.file_checks` (before reading) and
:mod:`ebcap.format.batch_checks` (every batch read).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ebcap.closing import ClosesOnExit
from ebcap.errors import BadFileError, ClosedError, TruncatedFileError
from ebcap.format import schema as fs
from ebcap.format.batch_checks import BatchCheck, batch_label
from ebcap.format.file_checks import (
    ARROW_MAGIC,
    ARROW_MAGIC_PADDED,
    DAMAGE_ERRORS,
    FOOTER_LENGTH_SIZE,
    check_input_path,
    check_magic,
    check_message_layout,
    check_schema,
    one_line,
    recover_command,
    recover_hint,
)
from ebcap.format.stream_end import footerless_end

if TYPE_CHECKING:
    import pandas as pd


class CaptureReader(ClosesOnExit):
    """A capture file opened for reading (memory-mapped; :meth:`close` releases it).

    Pages of the mapping are given back after every batch read, so memory
    follows the batch being read, not the length of the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = check_input_path(path)
        self._map: mmap.mmap | None = None
        self._source: pa.BufferReader | None = None
        self._ipc: pa.ipc.RecordBatchFileReader | None = None
        self._projections: dict[tuple[int, ...], pa.ipc.RecordBatchFileReader] = {}
        self._totals: dict[str, Any] | None = None
        self._totals_read = False
        try:
            with open(self.path, "rb") as file:
                self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            self._source = pa.BufferReader(pa.py_buffer(self._map))
            self._open()
        except OSError as exc:
            self.close()
            raise BadFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        source = self._source
        if source is None:
            raise ClosedError(f"reader for {self.path} is closed")
        size = source.size()
        head = bytes(source.read_at(min(size, len(ARROW_MAGIC_PADDED)), 0))
        check_magic(self.path, head, size)
        tail = bytes(source.read_at(len(ARROW_MAGIC), max(0, size - len(ARROW_MAGIC))))
        min_size = len(ARROW_MAGIC_PADDED) + FOOTER_LENGTH_SIZE + len(ARROW_MAGIC)
        if size < min_size or tail != ARROW_MAGIC:
            raise self._truncated()
        try:
            ipc = pa.ipc.open_file(source)
            file_schema = ipc.schema
        except DAMAGE_ERRORS as exc:
            raise TruncatedFileError(
                f"{self.path} has a damaged Arrow footer ({one_line(exc)}): "
                f"{recover_hint(self.path)}"
            ) from None
        self.metadata: dict[str, Any] = check_schema(self.path, file_schema)
        self.schema: pa.Schema = file_schema
        self._check = BatchCheck(file_schema, self.metadata, trust_checksums=True)
        self.num_batches: int = ipc.num_record_batches
        if self._map is not None:
            try:
                check_message_layout(self.path, pa.py_buffer(self._map), self.num_batches)
            finally:
                self._release_pages()
        if self.num_batches == 0 and self._check.required:
            raise self._lost_totals()
        self._ipc = ipc
        self.format_version: int = self.metadata[fs.VERSION_KEY]
        self.source_columns: list[str] = [
            name for name in file_schema.names if name not in fs.CORE_COLUMNS
        ]

    def _require(self) -> pa.ipc.RecordBatchFileReader:
        if self._map is None or self._ipc is None:
            raise ClosedError(f"reader for {self.path} is closed")
        return self._ipc

    def _label(self, index: int) -> str:
        """How messages name batch ``index``: "batch 6 of 15" (counting from 1)."""
        return batch_label(index, self.num_batches)

    def _damaged(self, what: str, problem: BaseException | str) -> BadFileError:
        """``what`` is damaged, and how; and what saves the intact batches."""
        how = one_line(problem) if isinstance(problem, BaseException) else problem
        return BadFileError(
            f"{self.path}: {what} is damaged ({how}); "
            f"{recover_command(self.path)} saves the intact batches"
        )

    def _truncated(self) -> TruncatedFileError:
        """No footer: where the stream ends says whether any batch was cut."""
        end = None
        if self._map is not None:
            try:
                end = footerless_end(self.path, pa.py_buffer(self._map))
            finally:
                self._release_pages()
        how = (
            "no Arrow footer; the capture did not finish"
            if end is None
            else f"{end}; no batch is cut short"
        )
        return TruncatedFileError(f"{self.path} is truncated ({how}): {recover_hint(self.path)}")

    def _lost_totals(self) -> BadFileError:
        """ebcap ends every file with the batch carrying the totals; a footer without it is
        damaged (its batch count or offsets changed)."""
        return BadFileError(
            f"{self.path} has a damaged footer (it does not index the last batch, which "
            f"carries the totals): {recover_hint(self.path)}"
        )

    @property
    def file_size(self) -> int:
        self._require()
        return self.path.stat().st_size

    @property
    def num_rows(self) -> int:
        """Rows in the file, counted from batch headers (no decompression)."""
        ipc = self._require()
        try:
            return int(ipc.count_rows())
        except DAMAGE_ERRORS as exc:
            raise self._damaged("a batch header", exc) from None

    @property
    def totals(self) -> dict[str, Any] | None:
        """The end-of-capture totals (per-CPU maps keyed by int CPU), or None if absent."""
        self._require()
        if not self._totals_read:
            self._totals = self._read_totals()
            self._totals_read = True
        return self._totals

    def _read_totals(self) -> dict[str, Any] | None:
        if self.num_batches == 0:
            return None
        index = self.num_batches - 1
        try:
            # The totals have a checksum of their own: one small column is enough to read.
            last, custom = self._projection(["seq"]).get_batch_with_custom_metadata(index)
        except DAMAGE_ERRORS as exc:
            raise self._damaged(f"the last batch ({self._label(index)})", exc) from None
        finally:
            self._release_pages()
        problem = self._check.checksum_problem(last, custom)
        if problem:
            raise self._damaged(self._label(index), problem)
        text = (custom or {}).get(fs.TOTALS_KEY.encode())
        if text is None:
            if self._check.required:
                raise self._lost_totals()
            return None
        try:
            return fs.decode_totals(text)
        except ValueError as exc:
            raise BadFileError(f"{self.path}: bad totals: {exc}") from None

    def batch(self, index: int, columns: Sequence[str] | None = None) -> pa.RecordBatch:
        """One record batch, checked so damaged buffers cannot reach the caller.

        ``columns`` decodes only those (in file order), which saves most of a read.
        """
        return self._checked_batch(index, columns)[0]

    def _checked_batch(
        self, index: int, columns: Sequence[str] | None = None
    ) -> tuple[pa.RecordBatch, pa.KeyValueMetadata | None]:
        ipc = self._require() if columns is None else self._projection(columns)
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        try:
            batch, custom = ipc.get_batch_with_custom_metadata(index)
        except DAMAGE_ERRORS as exc:
            raise self._damaged(self._label(index), exc) from None
        finally:
            self._release_pages()
        self.check_batch(batch, custom, index)
        return batch, custom

    def _projection(self, columns: Sequence[str]) -> pa.ipc.RecordBatchFileReader:
        """A reader of the file that decodes only ``columns`` (file order kept)."""
        self._require()
        indices = [self.schema.get_field_index(name) for name in columns]
        missing = [name for name, i in zip(columns, indices, strict=True) if i < 0]
        if missing:
            raise BadFileError(f"{self.path} lacks the column(s) {', '.join(missing)}")
        key = tuple(sorted(set(indices)))
        if key not in self._projections:
            options = pa.ipc.IpcReadOptions(included_fields=list(key))
            try:
                self._projections[key] = pa.ipc.open_file(self._source, options=options)
            except DAMAGE_ERRORS as exc:
                raise self._damaged("the footer", exc) from None
        return self._projections[key]

    def _release_pages(self) -> None:
        """Drop the file pages mapped so far from this process (the page cache keeps them)."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def check_batch(
        self, batch: pa.RecordBatch, custom_metadata: pa.KeyValueMetadata | None, index: int
    ) -> None:
        """Raise BadFileError unless batch ``index`` (or a projection of it) is intact."""
        self._require()
        problem = self._check.problem(batch, custom_metadata)
        if problem:
            raise self._damaged(self._label(index), problem)

    def iter_batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The record batches in file (= arrival) order, ``seq`` increasing across them.

        ``columns``: decode only those, as :meth:`batch` does.
        """
        last_seq: int | None = None
        custom: pa.KeyValueMetadata | None = None
        for index in range(self.num_batches):
            batch, custom = self._checked_batch(index, columns)
            if batch.num_rows and "seq" in batch.schema.names:
                first = batch.column("seq")[0].as_py()
                if last_seq is not None and first <= last_seq:
                    raise self._damaged(self._label(index), "seq does not increase")
                last_seq = batch.column("seq")[-1].as_py()
            yield batch
        if self._check.required and fs.TOTALS_KEY.encode() not in (custom or {}):
            raise self._lost_totals()

    def to_table(self) -> pa.Table:
        """The whole capture in memory, with the file's schema and metadata."""
        return pa.Table.from_batches(list(self.iter_batches()), schema=self.schema)

    def to_pandas(self) -> pd.DataFrame:
        return self.to_table().to_pandas()

    def close(self) -> None:
        """Release the memory map. Idempotent.

        Batches still held that share the mapping's memory keep it until they go.
        """
        self._ipc = None
        self._projections = {}
        self._source = None
        mapping, self._map = self._map, None
        if mapping is not None:
            with contextlib.suppress(BufferError):  # still shared: unmapped when released
                mapping.close()

    def __repr__(self) -> str:
        state = "closed" if self._map is None else f"{self.num_batches} batches"
        return f"<CaptureReader {str(self.path)!r} {state}>"


def open_capture(path: str | os.PathLike[str]) -> CaptureReader:
    """Open an ebcap file for reading (what ``ebcap.open`` calls)."""
    return CaptureReader(path)
