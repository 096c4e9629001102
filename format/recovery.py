"""Save the complete batches of a capture that never got its footer.

An Arrow IPC file is the magic ``ARROW1\\0\\0``, an IPC stream (schema,
dictionaries, record batches, end-of-stream marker) and a footer indexing the
batches. A capture that was killed, crashed or ran out of disk has the stream
but no footer. Recovery walks that stream message by message, keeps every
batch that reads back whole and valid, stops at the first that does not, and
writes those rows into a new, valid ebcap file. It never invents events: the
totals are recomputed from the saved rows and marked as recovered.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ebcap.errors import BadFileError, UsageError
from ebcap.format import schema as fs
from ebcap.format.reader import (
    ARROW_MAGIC_PADDED,
    DAMAGE_ERRORS,
    BatchCheck,
    check_input_path,
    check_magic,
    check_schema,
    one_line,
)
from ebcap.format.writer import CaptureWriter, conform_batch

REASON_COMPLETE = "the file is complete"
REASON_NO_FOOTER = "the stream ends cleanly but the footer is missing"
REASON_CUT_AT_BOUNDARY = "the file ends between two batches"


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover` saved, and where and why the source stopped being usable."""

    source: Path
    output: Path
    batches_saved: int
    rows_saved: int
    events_saved: int
    """Sample rows among ``rows_saved`` (the rest are lost-event records)."""
    bytes_used: int
    """Bytes of the source, from its start, that held the saved batches."""
    source_size: int
    damage_offset: int | None
    """Byte offset where the source breaks; None when it was complete."""
    totals_present: bool
    """Whether the source still had the totals written at the end of the capture."""
    reason: str

    @property
    def complete(self) -> bool:
        return self.damage_offset is None


def recover(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, force: bool = False
) -> RecoveryReport:
    """Write the readable part of ``src`` as a valid ebcap file at ``dst``.

    Raises BadFileError when ``src`` holds no complete batch (nothing to save)
    or is not an ebcap Arrow file at all; OutputExistsError when ``dst`` exists
    and not ``force``.
    """
    source = check_input_path(src)
    output = Path(dst)
    if output.exists() and os.path.samefile(source, output):
        raise UsageError(f"recovering {source} onto itself: pick another output")
    with pa.memory_map(str(source)) as mm:
        size = mm.size()
        check_magic(source, bytes(mm.read_at(min(size, len(ARROW_MAGIC_PADDED)), 0)), size)
        has_footer = _has_valid_footer(mm)
        survey = _StreamWalk(source, mm)
        for _ in survey:  # first pass: how far the stream is usable, and why it stops
            pass
        if survey.batches == 0:
            raise BadFileError(f"{source} holds no complete batch: nothing to recover")
        complete = has_footer and survey.reached_eos
        schema = survey.schema if complete else _mark_recovered(survey, source)
        batches = itertools.islice(_StreamWalk(source, mm), survey.batches)
        writer = CaptureWriter(output, schema, force=force, flush_rows=_NEVER)
        samples = 0
        try:
            for batch in batches:
                writer.write(batch)
                writer.flush()
                samples += _samples(batch)
            totals = survey.totals
            if totals is None:
                totals = {
                    **writer.counts.totals(),
                    fs.TOTAL_END_TIME: None,  # unknown: the capture never said when it stopped
                    fs.TOTAL_RECOVERED: True,
                }
            writer.close(totals)
        except BaseException:
            writer.abort()  # a half-written copy is worth nothing: the source is still there
            writer.partial_path.unlink(missing_ok=True)
            raise
    return RecoveryReport(
        source=source,
        output=output,
        batches_saved=survey.batches,
        rows_saved=writer.rows_written,
        events_saved=samples,
        bytes_used=survey.end,
        source_size=size,
        damage_offset=None if complete else survey.end,
        totals_present=survey.totals is not None,
        reason=REASON_COMPLETE if complete else survey.reason,
    )


_NEVER = 1 << 62
"""Row threshold that never triggers: recovery flushes once per source batch."""

_EOS_MARKER = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The end-of-stream message an IPC file writer puts before the footer."""


class _StreamWalk:
    """The record batches of the source's IPC stream, up to the first unusable one.

    After iteration, ``end`` is the offset just past the last good batch,
    ``reason`` says why the walk stopped and ``totals`` holds the capture's
    totals if the batch carrying them survived.
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
        self._check = BatchCheck(self.schema, self.metadata)
        self.end = mm.tell()
        self.reason = ""
        self.reached_eos = False
        self.totals: dict[str, Any] | None = None
        self.batches = 0
        self._last_seq: int | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch, custom = self._stream.read_next_batch_with_custom_metadata()
            except StopIteration:
                self.reached_eos = (
                    bytes(self._mm.read_at(len(_EOS_MARKER), self.end)) == _EOS_MARKER
                )
                self.reason = REASON_NO_FOOTER if self.reached_eos else REASON_CUT_AT_BOUNDARY
                return
            except DAMAGE_ERRORS as exc:
                self.reason = f"batch {self.batches + 1} is cut short or corrupt ({one_line(exc)})"
                return
            problem = self._problem(batch, custom)
            if problem:
                self.reason = f"batch {self.batches + 1} {problem}"
                return
            self.end = self._mm.tell()
            self.batches += 1
            yield batch

    def _problem(self, batch: pa.RecordBatch, custom: pa.KeyValueMetadata | None) -> str:
        """Why a batch that parsed must still not be trusted ('' when it is fine)."""
        problem = self._check.problem(batch, custom)
        if problem:
            return f"is corrupt ({problem})"
        try:
            conform_batch(batch, self.schema)  # what the writer would refuse, refuse here
        except ValueError as exc:
            return f"is corrupt ({exc})"
        seq = batch.column("seq").to_numpy()
        if len(seq):
            if (self._last_seq is not None and int(seq[0]) <= self._last_seq) or bool(
                np.any(seq[1:] <= seq[:-1])
            ):
                return "is corrupt (seq does not increase)"
            self._last_seq = int(seq[-1])
        text = (custom or {}).get(fs.TOTALS_KEY.encode())
        if text is not None:
            try:
                self.totals = fs.decode_totals(text)
            except ValueError as exc:
                return f"has corrupt totals ({exc})"
        return ""


def _mark_recovered(walk: _StreamWalk, source: Path) -> pa.Schema:
    """The source schema plus :data:`META_RECOVERED` saying where and why it broke."""
    damage = {
        fs.RECOVERED_FROM: source.name,
        fs.RECOVERED_DAMAGE_OFFSET: walk.end,
        fs.RECOVERED_REASON: walk.reason,
    }
    meta = dict(walk.schema.metadata or {})  # bytes as found: other keys pass through untouched
    text = fs.encode_metadata({fs.META_RECOVERED: damage})[fs.META_RECOVERED]
    meta[fs.META_RECOVERED.encode()] = text.encode()
    return walk.schema.with_metadata(meta)


def _has_valid_footer(mm: pa.MemoryMappedFile) -> bool:
    try:
        pa.ipc.open_file(mm)
    except DAMAGE_ERRORS:
        return False
    return True


def _samples(batch: pa.RecordBatch) -> int:
    kind = batch.column("kind").indices.to_numpy()
    return int(np.count_nonzero(kind == fs.KINDS.index(fs.KIND_SAMPLE)))
