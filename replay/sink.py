"""Where replay, export and sql output goes: stdout or a file, optionally zstd.

The rules for files, once for every command: never overwrite an existing
file without ``force``, never write over an input, fail early on a missing
directory, and never leave a half-written file behind: bytes go to a hidden
temporary name next to the target (mode 0600, events can hold secrets) that
is renamed into place only when everything was written. ``NAME.zst`` is
compressed with zstandard while streaming. An existing device, FIFO or socket
(``/dev/null``, a named pipe) is written to directly: renaming a file over it
would replace it, and writing to it clobbers nothing. So is a name of an open
descriptor (``/dev/stdout``, ``/dev/fd/3``, ``/proc/self/fd/1``, or a link to
one): this process's own descriptor is written through a duplicate of it, so
``>> log`` keeps appending where a new opening would truncate.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

import zstandard

from ebcap.errors import ClosedError, OutputExistsError, UsageError
from ebcap.format.file_checks import descriptor_link

ZSTD_SUFFIX: Final = ".zst"
ZSTD_LEVEL: Final = 3
STDOUT_NAMES: Final = (None, "-")


def to_stdout(path: str | os.PathLike[str] | None) -> bool:
    """Whether an output name means stdout (``-``, or none given)."""
    return path is None or str(path) in STDOUT_NAMES


def is_compressed(path: str | os.PathLike[str]) -> bool:
    return str(path).endswith(ZSTD_SUFFIX)


def inner_suffix(path: str | os.PathLike[str]) -> str:
    """The extension that names the format: ``.jsonl`` for both x.jsonl and x.jsonl.zst."""
    p = Path(path)
    if p.suffix == ZSTD_SUFFIX:
        p = p.with_suffix("")
    return p.suffix.lower()


def is_special(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an existing device, FIFO or socket, or names a descriptor
    (``/dev/stdout``): written in place."""
    if descriptor_link(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def own_descriptor(path: str | os.PathLike[str]) -> int | None:
    """The descriptor of this process ``path`` names (``/dev/stdout``: 1), else None."""
    link = descriptor_link(path)
    if link is None or not link.name.isdigit():
        return None
    directory = os.path.realpath(link.parent)
    pid = os.getpid()
    if directory == f"/proc/{pid}/fd" or re.fullmatch(rf"/proc/{pid}/task/\d+/fd", directory):
        return int(link.name)
    return None


def check_output_path(
    path: str | os.PathLike[str], *, force: bool, inputs: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """The output path if it may be written, else the error saying why not."""
    out = Path(path)
    for source in inputs:
        if _same_file(out, Path(source)):
            raise UsageError(f"output {out} is the input file; choose another name")
    if out.is_dir():
        raise UsageError(f"output {out} is a directory")
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"output directory {parent} does not exist")
    # lexists: a symbolic link to nothing is there all the same (the rename replaces it).
    if os.path.lexists(out) and not force and not is_special(out):
        raise OutputExistsError(f"{out} exists; use --force to overwrite it")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def temp_next_to(path: Path) -> tuple[int, Path]:
    """A new private file beside ``path`` (renamed onto it once complete), opened.

    A directory that takes no new files (/proc, /sys, read-only, immutable) is
    a usage error naming the output, in one line.
    """
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    return fd, Path(temp)


class AtomicPath:
    """A temporary path next to ``path`` for writers that need a path (Parquet).

    Leaving the block normally renames it into place; an exception removes it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        force: bool = False,
        inputs: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.path = check_output_path(path, force=force, inputs=inputs)
        self.special = is_special(self.path)
        if self.special:  # a device or FIFO is written in place, never replaced
            self.temp = self.path
            return
        fd, self.temp = temp_next_to(self.path)
        os.close(fd)

    def __enter__(self) -> Path:
        return self.temp

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.special:
            return
        if exc_type is None:
            os.chmod(self.temp, 0o600)
            os.replace(self.temp, self.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.temp.unlink()


def _open_in_place(path: Path) -> BinaryIO:
    """A device, FIFO or socket opened for writing; a descriptor of ours duplicated."""
    descriptor = own_descriptor(path)
    try:
        if descriptor is not None:
            return os.fdopen(os.dup(descriptor), "wb")
        return open(path, "wb")  # closed by commit or abort
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


class Output:
    """A binary sink: stdout, or a file committed by rename on success.

    Use as a context manager: leaving the block normally commits the file,
    leaving it by an exception removes the temporary file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        force: bool = False,
        inputs: Iterable[str | os.PathLike[str]] = (),
        compress: bool | None = None,
    ) -> None:
        self.path: Path | None = None
        self._raw: BinaryIO | None = None
        self._zstd: zstandard.ZstdCompressionWriter | None = None
        self._temp: Path | None = None
        self._special = False
        if path is None or str(path) in ("-", ""):
            self._raw = sys.stdout.buffer
            return
        self.path = check_output_path(path, force=force, inputs=inputs)
        if is_special(self.path):  # a device, FIFO or descriptor is written in place
            self._raw = _open_in_place(self.path)
            self._special = True
        else:
            fd, self._temp = temp_next_to(self.path)
            self._raw = os.fdopen(fd, "wb")
        if is_compressed(self.path) if compress is None else compress:
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            self._zstd = compressor.stream_writer(self._raw, closefd=False)

    @property
    def is_terminal(self) -> bool:
        """True when writing to an interactive terminal (then colour is welcome)."""
        return self.path is None and self._raw is not None and self._raw.isatty()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        sink = self._zstd if self._zstd is not None else self._raw
        if sink is None:
            raise ClosedError("output is closed")
        sink.write(data)

    def flush(self) -> None:
        """Push written bytes out (stdout), e.g. between paced replay lines."""
        if self._zstd is not None:
            self._zstd.flush()
        if self._raw is not None:
            self._raw.flush()

    def commit(self) -> Path | None:
        """Finish: flush stdout, or complete the file and rename it into place."""
        raw, self._raw = self._raw, None
        if raw is None:
            return self.path
        if self._special:
            if self._zstd is not None:
                self._zstd.close()
                self._zstd = None
            raw.close()
            return self.path
        if self._temp is None or self.path is None:
            raw.flush()
            return None
        try:
            if self._zstd is not None:
                self._zstd.close()
                self._zstd = None
            raw.flush()
            os.fsync(raw.fileno())
            raw.close()
            os.replace(self._temp, self.path)
            self._temp = None
        except BaseException:
            self._raw = raw
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop a file being written (stdout is left alone). Idempotent."""
        raw, self._raw = self._raw, None
        zstd, self._zstd = self._zstd, None
        temp, self._temp = self._temp, None
        if self._special and raw is not None:
            with contextlib.suppress(OSError):
                raw.close()
        if temp is None:
            return
        with contextlib.suppress(OSError, zstandard.ZstdError):
            if zstd is not None:
                zstd.close()
        with contextlib.suppress(OSError):
            if raw is not None:
                raw.close()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
