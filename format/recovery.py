"""Save what can be saved of a capture that never got its footer, or got damaged.

An Arrow IPC file is the magic ``ARROW1\\0\\0``, an IPC stream (schema,
dictionaries, record batches, end-of-stream marker) and a footer indexing the
batches. A capture that was killed, crashed or ran out of disk has the stream
but no footer: recovery keeps the batches up to the first that is not whole
and valid. When the footer survived, every batch it indexes is judged on its
own and each intact one kept, the damaged ones skipped and listed
(:mod:`ebcap.format.recovery_scan`). The rows go into a new, valid ebcap file.

Recovery never invents events, and never touches its input: the output is
written to a work file of its own (never ``NAME.partial`` when that is the
input) and renamed into place. A file with batches missing says so in its
``ebcap.recovered`` metadata, and its totals are recomputed from its rows.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from ebcap.errors import BadFileError, OutputWriteError, UsageError
from ebcap.format import schema as fs
from ebcap.format.file_checks import ARROW_MAGIC_PADDED, check_input_path, check_magic
from ebcap.format.recovery_scan import FooterScan, SkippedBatch, StreamScan
from ebcap.format.stream_end import REASON_CUT_AT_BOUNDARY, REASON_CUT_IN_EOS, REASON_NO_FOOTER
from ebcap.format.writer import CaptureWriter, free_work_path

__all__ = [
    "REASON_COMPLETE",
    "REASON_CUT_AT_BOUNDARY",
    "REASON_CUT_IN_EOS",
    "REASON_NO_FOOTER",
    "RecoveryReport",
    "SkippedBatch",
    "recover",
]

REASON_COMPLETE: Final = "the file is complete"

_NEVER: Final = 1 << 62
"""Row threshold that never triggers: recovery flushes once per source batch."""


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover` saved, and where and why the source stopped being usable."""

    source: Path
    output: Path
    batches_saved: int
    """Batches of rows saved: the empty batch that only carries the totals is not one
    (``totals_present`` says whether the totals survived)."""
    rows_saved: int
    events_saved: int
    """Sample rows among ``rows_saved`` (the rest are lost-event records)."""
    bytes_used: int
    """Bytes of the source, from its start, that held the saved batches."""
    source_size: int
    damage_offset: int | None
    """Byte offset where the source's stream breaks; None when it was complete."""
    totals_present: bool
    """Whether the source still had the totals written at the end of the capture."""
    reason: str
    source_batches: int | None = None
    """Batches the source's footer indexes; None without a usable footer."""
    skipped: tuple[SkippedBatch, ...] = ()
    """Damaged batches left out, between batches that were saved."""
    totals_recomputed: bool = False
    """Whether the event and lost totals were recounted from the saved rows."""

    @property
    def complete(self) -> bool:
        return self.damage_offset is None and not self.skipped

    @property
    def rows_skipped(self) -> int | None:
        """Rows of the skipped batches; None if any of them is unknown."""
        rows = [s.rows for s in self.skipped]
        return None if None in rows else sum(r for r in rows if r is not None)


@dataclass
class _Plan:
    """Which batches to save, and what to say about the ones that are not."""

    batches: Iterable[pa.RecordBatch]
    count: int
    """Batches of the source to write, empty ones included."""
    with_rows: int
    """Those of them that hold rows: the batches a summary counts."""
    totals: dict[str, Any] | None
    reason: str
    complete: bool
    bytes_used: int
    skipped: tuple[SkippedBatch, ...] = ()


def recover(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, force: bool = False
) -> RecoveryReport:
    """Write the readable part of ``src`` as a valid ebcap file at ``dst``; ``src`` is
    only ever read.

    Raises BadFileError when ``src`` holds no complete batch (nothing to save)
    or is not an ebcap Arrow file at all; OutputExistsError when ``dst`` exists
    and not ``force``; UsageError when ``dst`` is ``src``; OutputWriteError
    (disk full, ...) when the output cannot be written, having removed it.
    """
    source = check_input_path(src)
    output = Path(dst)
    if _same_file(source, output):
        raise UsageError(f"recovering {source} onto itself: pick another output")
    with pa.memory_map(str(source)) as mm:
        size = mm.size()
        check_magic(source, bytes(mm.read_at(min(size, len(ARROW_MAGIC_PADDED)), 0)), size)
        scan = StreamScan(source, mm)
        footer = FooterScan.open(mm, scan.schema, scan.metadata)
        scan.total = None if footer is None else footer.num_record_batches
        for _ in scan:  # first pass: how far the stream is usable, and why it stops
            pass
        plan = _plan(source, mm, scan, footer, size)
        if plan.count == 0:
            raise BadFileError(f"{source} holds no complete batch: nothing to recover")
        damage = None if plan.complete else scan.end
        schema = _saved_schema(scan.schema)
        if not plan.complete:
            schema = _mark_recovered(schema, source, damage, plan, scan.total)
        rows_complete = not plan.skipped and plan.totals is not None
        work = free_work_path(output, "recover")  # never the input, nor anything else
        writer: CaptureWriter | None = None
        try:
            writer = CaptureWriter(output, schema, force=force, flush_rows=_NEVER, work_path=work)
            for batch in plan.batches:
                writer.write(batch)
                writer.flush()
            writer.close(plan.totals if rows_complete else _recounted(plan.totals))
        except OutputWriteError as exc:
            _discard(writer, work, source)
            message = _write_failure(exc, output, source)
            raise OutputWriteError(message, exc.reason, exc.errno) from None
        except BaseException:
            _discard(writer, work, source)  # a half-written copy is worth nothing
            raise
    return RecoveryReport(
        source=source,
        output=output,
        batches_saved=plan.with_rows,
        rows_saved=writer.rows_written,
        events_saved=writer.counts.totals()[fs.TOTAL_EVENTS],
        bytes_used=plan.bytes_used,
        source_size=size,
        damage_offset=damage,
        totals_present=plan.totals is not None,
        reason=plan.reason,
        source_batches=scan.total,
        skipped=plan.skipped,
        totals_recomputed=not rows_complete,
    )


def _plan(
    source: Path,
    mm: pa.MemoryMappedFile,
    scan: StreamScan,
    footer: pa.ipc.RecordBatchFileReader | None,
    size: int,
) -> _Plan:
    """Save the stream's good prefix, or, when the footer finds more, every intact batch."""

    def prefix(reason: str, complete: bool = False) -> _Plan:
        batches = itertools.islice(StreamScan(source, mm), scan.batches)
        with_rows = sum(1 for _, rows in scan.shapes if rows)
        return _Plan(batches, scan.batches, with_rows, scan.totals, reason, complete, scan.end)

    if footer is None:
        return prefix(scan.reason)
    if scan.reached_eos:
        if footer.num_record_batches == scan.batches:
            return prefix(REASON_COMPLETE, complete=True)
        return prefix(
            f"the stream ends cleanly but the footer indexes "
            f"{footer.num_record_batches} of its {scan.batches} batches"
        )
    indexed = FooterScan(mm, footer, scan.schema, scan.metadata)
    if len(indexed.kept) <= scan.batches or not indexed.agrees_with(scan):
        return prefix(scan.reason)
    kept = indexed.kept
    return _Plan(
        (indexed.batch(i) for i in kept),
        len(kept),
        sum(1 for i in kept if indexed.shapes[i][1]),
        indexed.totals,
        scan.reason,
        False,
        size,
        tuple(indexed.skipped),
    )


def _recounted(totals: dict[str, Any] | None) -> dict[str, Any]:
    """Totals for rows that are not all there: what describes the capture (end time,
    duration, drops) is kept; the counts of rows are left to the writer, which
    recounts the rows it writes."""
    kept = {k: v for k, v in (totals or {}).items() if k not in fs.ROW_TOTALS}
    # end_time None: unknown unless the capture said when it stopped
    return {fs.TOTAL_END_TIME: None, **kept, fs.TOTAL_RECOVERED: True}


def _saved_schema(schema: pa.Schema) -> pa.Schema:
    """The source's schema with the core columns exactly as ebcap writes them, and
    dictionary-encoded source columns as their values (the writer takes those only).

    Another tool may have marked core columns nullable (the rows kept hold no nulls
    there) or coded a column as a dictionary (the rows are decoded as they are written).
    """
    core = len(fs.CORE_FIELDS)
    source = [schema.field(i) for i in range(core, len(schema))]
    fields = [*fs.CORE_FIELDS, *(_plain(field) for field in source)]
    if fields == list(schema):
        return schema
    return pa.schema(fields, metadata=schema.metadata)


def _plain(field: pa.Field) -> pa.Field:
    kind = field.type
    return field.with_type(kind.value_type) if pa.types.is_dictionary(kind) else field


def _mark_recovered(
    schema: pa.Schema, source: Path, damage: int | None, plan: _Plan, total: int | None
) -> pa.Schema:
    """The schema plus :data:`META_RECOVERED` saying where and why the source broke."""
    marker: dict[str, Any] = {
        fs.RECOVERED_FROM: source.name,
        fs.RECOVERED_DAMAGE_OFFSET: damage,
        fs.RECOVERED_REASON: plan.reason,
    }
    if total is not None:
        marker[fs.RECOVERED_SOURCE_BATCHES] = total
    if plan.skipped:
        marker[fs.RECOVERED_SKIPPED] = [s.describe() for s in plan.skipped]
    meta = dict(schema.metadata or {})  # bytes as found: other keys pass through untouched
    earlier = meta.get(fs.META_RECOVERED.encode())
    if earlier is not None:  # its gaps are still in the rows: keep saying where
        marker[fs.RECOVERED_EARLIER] = json.loads(earlier)
    text = fs.encode_metadata({fs.META_RECOVERED: marker})[fs.META_RECOVERED]
    meta[fs.META_RECOVERED.encode()] = text.encode()
    return schema.with_metadata(meta)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # b does not exist (or cannot be looked at): not the same file
        return False


def _discard(writer: CaptureWriter | None, work: Path, source: Path) -> None:
    """Remove the work file the writer created (never the input; and when the
    writer could not start, it created nothing, or removed it itself)."""
    if writer is None:
        return
    writer.abort()
    if not _same_file(source, work):
        work.unlink(missing_ok=True)


def _write_failure(exc: OutputWriteError, output: Path, source: Path) -> str:
    advice = "free some space and run it again" if exc.errno == errno.ENOSPC else "run it again"
    return f"{exc.reason} writing {output}: nothing was saved; {source} is unchanged: {advice}"
