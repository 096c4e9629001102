"""Write a capture as a zstd-compressed Arrow IPC file, crash-safely.

Rows are buffered and flushed as record batches at a row threshold or after
``flush_interval`` seconds, so a crash loses at most one interval and the
batches the writer thread had not finished writing: everything written
before stays in ``NAME.partial``, which ``ebcap recover`` turns into a
valid file. Only :meth:`CaptureWriter.close` writes the footer and renames the
file into place, so an existing output is never clobbered by a failed start.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, NoReturn, Self, TypeAlias, TypeVar

import numpy as np
import pyarrow as pa

from ebcap.errors import (
    CaptureError,
    ClosedError,
    OutputExistsError,
    OutputWriteError,
    UsageError,
)
from ebcap.format import checksum
from ebcap.format import schema as fs
from ebcap.format.conform import Rows, conform_batch, empty_batch
from ebcap.format.counts import CpuCounts
from ebcap.format.file_checks import descriptor_link, recover_command
from ebcap.format.write_behind import WriteBehind

T = TypeVar("T")

COMPRESSION = "zstd"
DEFAULT_ZSTD_LEVEL = 1
"""zstd's fastest positive level: ~15 B per 24-byte event. Negative levels trade size
for speed (-1: ~25 % larger files, ~20 % less compression time)."""

WRITE_BEHIND_BYTES: Final = 256 << 20
"""Batches that may wait for the writer thread: ~0.2 s of 256-byte events at 5 M/s."""

FILE_MODE = 0o600
"""Events can hold secrets (paths, arguments, packet bytes): owner-only."""

PARTIAL_SUFFIX = ".partial"

ABORT_WAIT_S = 0.2
"""How long an abort waits for the batch being written before leaving it to the worker."""

LastMetadata: TypeAlias = Callable[[], dict[str, str]]
"""Makes the custom metadata of the last batch, once the sizes of all batches are known."""


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where a capture into ``path`` lives until it is closed."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def zstd_codec(level: int) -> pa.Codec:
    """The zstd codec at ``level``; UsageError outside what this zstd accepts."""
    low = pa.Codec.minimum_compression_level(COMPRESSION)
    high = pa.Codec.maximum_compression_level(COMPRESSION)
    if not low <= level <= high:
        raise UsageError(f"zstd level must be {low}..{high}, got {level}")
    return pa.Codec(COMPRESSION, compression_level=level)


def utc_now_iso() -> str:
    """The current wall-clock time, ISO 8601 UTC with microseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class CaptureWriter:
    """Append rows to ``path`` (via ``path.partial``); :meth:`close` finishes the file.

    ``clock`` (seconds, monotonic) decides when ``flush_interval`` has passed;
    tests inject a fake one. ``background``: batches are compressed and written
    on a worker thread (:mod:`ebcap.format.write_behind`), so the caller can go
    on draining rings meanwhile; the final batch and the footer are written by
    :meth:`close` once the worker has caught up. ``work_path`` replaces
    ``path.partial`` as the file written until :meth:`close` (recovery names
    its own when ``path.partial`` is its input); it must not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema,
        *,
        force: bool = False,
        flush_interval: float = 1.0,
        flush_rows: int = 65536,
        clock: Callable[[], float] = time.monotonic,
        background: bool = False,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        work_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not flush_interval > 0:
            raise UsageError(f"flush interval must be positive, got {flush_interval}")
        if flush_rows < 1:
            raise UsageError(f"flush rows must be at least 1, got {flush_rows}")
        codec = zstd_codec(zstd_level)
        self.path = Path(path)
        if work_path is None:
            # --force replaces NAME at the end, never a NAME.partial that is there: a
            # crashed capture's, to recover, or a running one's.
            work_path = free_work_path(self.path, "new") if force else partial_path(self.path)
        self.partial_path = Path(work_path)
        _check_schema(schema)
        self.schema = schema.with_metadata(
            {**(schema.metadata or {}), fs.META_CHECKSUM.encode(): checksum.ALGORITHM.encode()}
        )
        self._schema_crc = checksum.schema_crc(self.schema)
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.rows_written = 0
        self.batches_written = 0
        self.counts = CpuCounts()
        self.uncompressed_bytes = 0
        """Arrow bytes of the batches written, before compression (for the totals)."""
        self._force = force
        self._clock = clock
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._oldest: float | None = None
        self._last_seq: int | None = None
        self._state = "open"
        self._failure = ""
        self._behind: WriteBehind | None = None
        self._check_destination()
        self._file = self._create_partial()
        try:
            # One compressing thread: Arrow's pool would add a thread per core, and
            # those preempt the thread that drains the rings (see write_behind.py).
            options = pa.ipc.IpcWriteOptions(compression=codec, use_threads=False)
            self._ipc = pa.ipc.new_file(self._file, self.schema, options=options)
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            self._discard()
            raise
        self._behind = (
            WriteBehind(f"ebcap writer {self.path.name}", max_bytes=WRITE_BEHIND_BYTES)
            if background
            else None
        )

    def _check_destination(self) -> None:
        check_destination(self.path, force=self._force)

    def _create_partial(self) -> BinaryIO:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(self.partial_path, flags, FILE_MODE)
        except FileExistsError:
            raise OutputExistsError(
                f"{self.partial_path} exists (an unfinished capture? "
                f"`ebcap recover` it, remove it, or use --force to write beside it)"
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot create {self.partial_path}: {exc.strerror}") from None
        return os.fdopen(fd, "wb")

    # -- writing ---------------------------------------------------------------

    def write(self, rows: Rows) -> None:
        """Buffer rows (a record batch or a dict of columns); flush when due."""
        self._check_open()
        batch = conform_batch(rows, self.schema)
        if batch.num_rows == 0:
            self.maybe_flush()
            return
        self._check_seq(batch)
        self._buffer.append(batch)
        self._buffered_rows += batch.num_rows
        self._buffered_bytes += batch.nbytes
        self.counts.add(batch)
        if self._oldest is None:
            self._oldest = self._clock()
        if self._buffered_rows >= self.flush_rows:
            self.flush()
        else:
            self.maybe_flush()

    def on_worker(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the thread that writes (this one, without a worker), wait
        and return what it returned."""
        self._check_open()
        if self._behind is None:
            return job()
        result: list[T] = []
        self._behind.submit(lambda: result.append(job()))
        self._behind.wait()
        return result[0]

    def maybe_flush(self) -> bool:
        """Flush if the oldest buffered row has waited ``flush_interval``; True if it did."""
        self._check_open()
        if self._oldest is not None and self._clock() - self._oldest >= self.flush_interval:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Write the buffered rows as record batches now."""
        self._check_open()
        self._write_buffer(last_metadata=None)

    def _write_buffer(self, last_metadata: LastMetadata | None) -> None:
        """Hand the buffered rows to be written (on the worker, if there is one).

        The batch carrying ``last_metadata()`` (the totals) is written here, after
        every batch before it.
        """
        pending, nbytes = self._buffer, self._buffered_bytes
        self._buffer, self._buffered_rows, self._buffered_bytes, self._oldest = [], 0, 0, None
        if not pending and last_metadata is None:
            return
        try:
            if self._behind is not None:
                if last_metadata is None:
                    self._behind.submit(lambda: self._encode(pending, None), nbytes)
                    return
                self._behind.wait()
            self._encode(pending, last_metadata)
        except OSError as exc:
            self._fail(exc)

    def _encode(self, pending: list[pa.RecordBatch], last_metadata: LastMetadata | None) -> None:
        """Write ``pending`` as batches of at most ``flush_rows``; the last carries
        ``last_metadata()``, asked for once the sizes of all of them are counted.

        Every batch carries its checksums; those of the last cover the totals too.
        """
        whole = pa.concat_batches(pending) if pending else empty_batch(self.schema)
        step = self.flush_rows
        pieces = [whole.slice(off, step) for off in range(0, whole.num_rows, step)] or [whole]
        self.uncompressed_bytes += sum(piece.nbytes for piece in pieces)  # as read back
        custom_metadata = last_metadata() if last_metadata is not None else None
        for i, piece in enumerate(pieces):
            meta = dict(custom_metadata or {}) if i == len(pieces) - 1 else {}
            meta[fs.CHECKSUMS_KEY] = checksum.batch_checksums(
                piece, self._schema_crc, meta.get(fs.TOTALS_KEY)
            )
            self._ipc.write_batch(piece, custom_metadata=meta)
            self._file.flush()
            # Counted once in the file, piece by piece: a write that fails on a later
            # piece (disk full) leaves these for recovery, and the message says so.
            self.rows_written += piece.num_rows
            self.batches_written += 1

    def _check_seq(self, batch: pa.RecordBatch) -> None:
        seq = batch.column("seq").to_numpy()
        first = int(seq[0])
        if (self._last_seq is not None and first <= self._last_seq) or (
            len(seq) > 1 and not bool(np.all(seq[1:] > seq[:-1]))
        ):
            raise ValueError("seq must be strictly increasing across all rows written")
        self._last_seq = int(seq[-1])

    # -- finishing -------------------------------------------------------------

    def close(self, totals: Mapping[str, Any] | None = None) -> Path:
        """Write the last batch carrying the totals, the footer; fsync; rename into place.

        ``totals`` gives what only the caller knows (``drops_per_cpu``,
        ``duration_s``, ...); ``events``/``lost`` and their per-CPU maps default
        to the counts of the rows written, ``uncompressed_bytes`` to their
        size, ``end_time`` to now. ValueError on malformed totals. Idempotent:
        returns the final path.
        """
        if self._state == "closed":
            return self.path
        self._check_open()
        merged: dict[str, Any] = {fs.TOTAL_END_TIME: utc_now_iso(), **self.counts.totals()}
        merged.update(totals or {})
        fs.encode_totals(merged)  # malformed totals: ValueError before anything is written

        def with_size() -> dict[str, str]:
            sized = {fs.TOTAL_UNCOMPRESSED_BYTES: self.uncompressed_bytes, **merged}
            return {fs.TOTALS_KEY: fs.encode_totals(sized)}

        self._write_buffer(last_metadata=with_size)
        self._stop_behind()
        try:
            self._ipc.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            self._fail(exc)
        self._state = "finished but not renamed"
        self._publish()
        self._state = "closed"
        return self.path

    def _publish(self) -> None:
        """Move NAME.partial to NAME: never over a file that appeared meanwhile unless forced."""
        try:
            if self._force:
                os.replace(self.partial_path, self.path)
            else:
                try:
                    os.link(self.partial_path, self.path)
                except FileExistsError:
                    raise OutputExistsError(
                        f"{self.path} appeared during the capture; "
                        f"the data is in {self.partial_path}"
                    ) from None
                self.partial_path.unlink()
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise CaptureError(
                f"cannot rename {self.partial_path} to {self.path}: {exc.strerror}"
            ) from None

    def abort(self) -> None:
        """Stop without a footer, promptly: keep NAME.partial for `ebcap recover` if
        anything was written.

        Batches still queued for the worker are dropped, not written (a second
        Ctrl-C must not wait for seconds of compression). A batch being written
        gets :data:`ABORT_WAIT_S` to finish; one that takes longer (a high zstd
        level) finishes on the worker, which then closes the file, while the
        caller goes on. Recovery reads whole batches only, so a batch cut off
        by the process ending is simply not recovered.
        """
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer = []
        if self._behind is not None:
            self._behind.cancel(ABORT_WAIT_S, then=self._close_aborted)
        else:
            self._close_aborted()

    def _close_aborted(self) -> None:
        if self.batches_written:
            # The flushed batches are on disk already; a failing close loses nothing more.
            with contextlib.suppress(OSError):
                self._file.close()
        else:
            self._discard()

    def _stop_behind(self) -> None:
        if self._behind is not None:
            self._behind.stop()

    def _discard(self) -> None:
        self._state = "aborted"
        if self._behind is not None:
            self._behind.cancel()
        with contextlib.suppress(OSError):  # the file is removed next
            self._file.close()
        self.partial_path.unlink(missing_ok=True)

    def _fail(self, exc: OSError) -> NoReturn:
        """Abort on a write error, keeping what was written; OutputWriteError saying so."""
        what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        if self.batches_written:
            kept = (
                f"the {self.rows_written} rows flushed before are recoverable with "
                f"{recover_command(self.partial_path)}"
            )
        else:
            kept = "nothing had been flushed yet"
        self._failure = f"{what} writing {self.partial_path}: {kept}"
        self.abort()
        raise OutputWriteError(self._failure, what, exc.errno or 0) from None

    def _check_open(self) -> None:
        if self._state == "open":
            return
        if self._failure:
            raise CaptureError(self._failure)
        raise ClosedError(f"writer for {self.path} is {self._state}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._state == "open":
            self.close()
        else:
            self.abort()


def free_work_path(output: Path, tag: str) -> Path:
    """Where to write ``output`` until done: OUTPUT.partial, unless that name is taken
    (it is never replaced); then OUTPUT.TAG.partial, OUTPUT.TAG-2.partial, ..."""
    names = [partial_path(output).name, f"{output.name}.{tag}{PARTIAL_SUFFIX}"]
    names += [f"{output.name}.{tag}-{n}{PARTIAL_SUFFIX}" for n in range(2, _WORK_NAMES)]
    for name in names:
        candidate = output.with_name(name)
        if not os.path.lexists(candidate):
            return candidate
    raise UsageError(f"cannot find a free work file name next to {output}")


_WORK_NAMES: Final = 100
"""How many work file names to try before giving up (each one that exists is skipped)."""


def check_destination(path: Path, *, force: bool) -> None:
    """Refuse an output the writer could not create or may not replace (also for callers
    that must know before they change anything else)."""
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"output directory {parent} does not exist")
    if path.is_dir():
        raise UsageError(f"output {path} is a directory")
    what = None
    if descriptor_link(path) is not None:  # /dev/stdout: never renamed over
        what = "names an open descriptor, not a file of its own"
    elif path.exists() and not path.is_file():
        what = "is not a regular file"
    if what is not None:
        raise UsageError(
            f"output {path} {what}: a capture is written as "
            f"{path.name}{PARTIAL_SUFFIX} and then renamed into place"
        )
    # lexists: a symbolic link to nothing is there all the same (the rename replaces it).
    if os.path.lexists(path) and not force:
        raise OutputExistsError(f"{path} exists (use --force to overwrite it)")


def _check_schema(schema: pa.Schema) -> None:
    meta = fs.decode_metadata(schema.metadata)
    if meta.get(fs.MAGIC_KEY) != fs.MAGIC_VALUE or meta.get(fs.VERSION_KEY) != fs.FORMAT_VERSION:
        raise ValueError("schema lacks ebcap's format metadata: build it with make_schema()")
    core = [schema.field(i) for i in range(min(len(fs.CORE_FIELDS), len(schema)))]
    if tuple(f.remove_metadata() for f in core) != fs.CORE_FIELDS:
        raise ValueError("schema must start with the core columns: build it with make_schema()")
    for field in list(schema)[len(fs.CORE_FIELDS) :]:
        if pa.types.is_dictionary(field.type):
            raise ValueError(f"source column {field.name!r}: dictionary types are not supported")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
