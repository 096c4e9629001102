"""Finding the usable batches of a damaged capture, trusting nothing in it.

Two ways to find them. The *stream scan* walks the IPC stream from the start
of the file, message by message, as a capture cut short (killed, crashed,
disk full) leaves it, and keeps every batch up to the first that does not
read back whole and valid. The *footer scan*, for a file whose footer
survived, reads every batch the footer indexes and judges each on its own,
so damage in one batch does not cost the batches after it.

Both judge a batch as the reader would (:mod:`ebcap.format.batch_checks`:
structure, kinds, nulls, checksums), refuse what the writer would refuse,
and require ``seq`` to increase across the batches kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ebcap.errors import BadFileError
from ebcap.format import schema as fs
from ebcap.format.batch_checks import BatchCheck, batch_label
from ebcap.format.conform import conform_batch
from ebcap.format.file_checks import ARROW_MAGIC_PADDED, DAMAGE_ERRORS, check_schema, one_line
from ebcap.format.stream_end import (
    EOS_MARKER,
    REASON_CUT_AT_BOUNDARY,
    REASON_NO_FOOTER,
    whole_stream_end,
)

BatchShape = tuple[int | None, int]
"""A batch's first ``seq`` (None when empty) and row count."""


def shape_of(batch: pa.RecordBatch) -> BatchShape:
    return (int(batch.column("seq")[0].as_py()) if batch.num_rows else None, batch.num_rows)


class BatchJudge:
    """Decides whether a batch may be saved, remembering ``seq`` and the totals seen."""

    def __init__(self, schema: pa.Schema, metadata: dict[str, Any]) -> None:
        self.schema = schema
        self._check = BatchCheck(schema, metadata)
        self._last_seq: int | None = None
        self.totals: dict[str, Any] | None = None

    def problem(self, batch: pa.RecordBatch, custom: pa.KeyValueMetadata | None) -> str:
        """Why ``batch`` must not be saved ('' when it may; then it counts as kept)."""
        problem = self._check.problem(batch, custom)
        if problem:
            return problem
        try:
            conform_batch(batch, self.schema)  # what the writer would refuse, refuse here
        except ValueError as exc:
            return str(exc)
        seq = batch.column("seq").to_numpy()
        if len(seq) and self._last_seq is not None and int(seq[0]) <= self._last_seq:
            return "seq does not increase"
        text = (custom or {}).get(fs.TOTALS_KEY.encode())
        totals = None
        if text is not None:
            try:
                totals = fs.decode_totals(text)
            except ValueError as exc:
                return f"its totals are corrupt ({exc})"
        if len(seq):
            self._last_seq = int(seq[-1])
        if totals is not None:
            self.totals = totals
        return ""

    def column_problem(self, batch: pa.RecordBatch, custom: pa.KeyValueMetadata | None) -> str:
        """Why a projection of a batch (some of its columns) is not intact ('' if it is)."""
        return self._check.problem(batch, custom)


class StreamScan:
    """The record batches of the source's IPC stream, up to the first unusable one.

    After iteration, ``end`` is the offset just past the last good batch,
    ``reason`` says why the walk stopped and ``totals`` holds the capture's
    totals if the batch carrying them survived. ``total`` (the footer's batch
    count, set when known) only numbers the batches in messages.
    """

    def __init__(self, source: Path, mm: pa.MemoryMappedFile) -> None:
        self._source = source
        self._mm = mm
        mm.seek(len(ARROW_MAGIC_PADDED))
        try:
            self._stream = pa.ipc.open_stream(mm)
        except DAMAGE_ERRORS:
            raise BadFileError(
                f"{source} is cut before its schema ends: nothing to recover"
            ) from None
        self.schema: pa.Schema = self._stream.schema
        self.metadata = check_schema(source, self.schema)
        self._judge = BatchJudge(self.schema, self.metadata)
        self.total: int | None = None
        self.end = mm.tell()
        self.reason = ""
        self._after_totals = False
        """Whether the last good batch carried the totals (the writer's last batch)."""
        self.batches = 0
        self.shapes: list[BatchShape] = []
        """(first seq, rows) of each good batch, to check a footer against."""

    @property
    def totals(self) -> dict[str, Any] | None:
        return self._judge.totals

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            label = batch_label(self.batches, self.total)
            try:
                batch, custom = self._stream.read_next_batch_with_custom_metadata()
            except StopIteration:
                self.reason = self._whole_end() or REASON_CUT_AT_BOUNDARY
                return
            except DAMAGE_ERRORS as exc:
                cut = f"{label} is cut short or corrupt ({one_line(exc)})"
                self.reason = self._whole_end() or cut
                return
            problem = self._judge.problem(batch, custom)
            if problem:
                self.reason = f"{label} is corrupt ({problem})"
                return
            self.end = self._mm.tell()
            self._after_totals = fs.TOTALS_KEY.encode() in (custom or {})
            self.batches += 1
            self.shapes.append(shape_of(batch))
            yield batch

    def _whole_end(self) -> str | None:
        """Why the stream stopping after the last good batch lost no batch; None if it did."""
        rest = bytes(self._mm.read_at(len(EOS_MARKER), self.end))
        return whole_stream_end(rest, self._after_totals)

    @property
    def reached_eos(self) -> bool:
        """The stream ends with its end-of-stream marker, whole."""
        return self.reason == REASON_NO_FOOTER


@dataclass(frozen=True)
class SkippedBatch:
    """A damaged batch the footer scan left out, and what is known of what it held."""

    index: int
    """0-based; messages and the ``ebcap.recovered`` metadata count from 1."""
    rows: int | None
    """Rows it held, from its header; None when nothing of it reads back intact."""
    first_seq: int | None
    last_seq: int | None
    """Its ``seq`` range, when its ``seq`` column is intact."""
    reason: str

    def describe(self) -> dict[str, Any]:
        """The entry of ``ebcap.recovered``'s ``skipped_batches`` list."""
        entry: dict[str, Any] = {fs.SKIPPED_BATCH: self.index + 1, fs.SKIPPED_ROWS: self.rows}
        if self.first_seq is not None and self.last_seq is not None:
            entry[fs.SKIPPED_FIRST_SEQ] = self.first_seq
            entry[fs.SKIPPED_LAST_SEQ] = self.last_seq
        entry[fs.SKIPPED_REASON] = self.reason
        return entry


class FooterScan:
    """The batches a valid footer indexes: each intact one kept, each damaged one skipped."""

    def __init__(
        self,
        mm: pa.MemoryMappedFile,
        reader: pa.ipc.RecordBatchFileReader,
        schema: pa.Schema,
        metadata: dict[str, Any],
    ) -> None:
        self._mm = mm
        self._reader = reader
        self.num_batches: int = reader.num_record_batches
        self._judge = BatchJudge(schema, metadata)
        self.kept: list[int] = []
        self.skipped: list[SkippedBatch] = []
        self.shapes: dict[int, BatchShape] = {}
        """(first seq, rows) of each intact batch, by index."""
        for index in range(self.num_batches):
            problem = self._problem(index)
            if problem:
                self.skipped.append(self._what_it_held(index, problem))
            else:
                self.kept.append(index)

    def agrees_with(self, stream: StreamScan) -> bool:
        """Whether the footer indexes the batches the stream scan read, as it read them.

        A footer that parses but points elsewhere (damaged offsets) must not decide
        which rows are saved.
        """
        return all(self.shapes.get(i) == shape for i, shape in enumerate(stream.shapes))

    @classmethod
    def open(
        cls, mm: pa.MemoryMappedFile, schema: pa.Schema, metadata: dict[str, Any]
    ) -> pa.ipc.RecordBatchFileReader | None:
        """The file's footer reader, if the footer reads back and has the stream's schema."""
        try:
            reader = pa.ipc.open_file(mm)
            same = reader.schema.equals(schema, check_metadata=True)
        except DAMAGE_ERRORS:
            return None
        return reader if same else None

    @property
    def totals(self) -> dict[str, Any] | None:
        return self._judge.totals

    def batch(self, index: int) -> pa.RecordBatch:
        """Batch ``index`` again, for writing (it was judged intact)."""
        return self._reader.get_batch(index)

    def _problem(self, index: int) -> str:
        try:
            batch, custom = self._reader.get_batch_with_custom_metadata(index)
        except DAMAGE_ERRORS as exc:
            return f"it does not read back ({one_line(exc)})"
        problem = self._judge.problem(batch, custom)
        if not problem:
            self.shapes[index] = shape_of(batch)
        return problem

    def _what_it_held(self, index: int, problem: str) -> SkippedBatch:
        """Rows (and seq range) of a damaged batch, from the first column that is intact."""
        for column in range(len(self._judge.schema)):
            options = pa.ipc.IpcReadOptions(included_fields=[column])
            try:
                part, custom = pa.ipc.open_file(
                    self._mm, options=options
                ).get_batch_with_custom_metadata(index)
            except DAMAGE_ERRORS:
                continue
            if self._judge.column_problem(part, custom):
                continue
            first = last = None
            if part.schema.names == ["seq"] and part.num_rows:
                seq = part.column(0).to_numpy()
                first, last = int(np.min(seq)), int(np.max(seq))
            return SkippedBatch(index, part.num_rows, first, last, problem)
        return SkippedBatch(index, None, None, None, problem)
